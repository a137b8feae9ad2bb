import Foundation
import TOMLKit

/// hsmd's configuration, read from TOML. Unknown keys and bad values are refused with a
/// message naming the key, so a typo never silently falls back to a default.
public struct Config: Equatable, Sendable {
    public struct Store: Equatable, Sendable {
        public var name: String
        public var type: String
        /// The posix store's directory ("" for an s3 store).
        public var path: String
        /// The s3 store's settings (nil for a posix store).
        public var s3: S3Settings? = nil
    }

    public struct Filesystem: Equatable, Sendable {
        public var path: String
        public var store: String
        /// Space watermarks (Watermarks.swift); nil: hsmd frees no space here on its own.
        public var watermarks: Watermarks? = nil
    }

    public var socket: String = "/run/hsmd/hsmd.sock"
    public var stateDir: String = "/var/lib/hsmd"
    public var logLevel: String = "info"
    /// Threads that copy data back from stores.
    public var recallThreads: Int = 4
    /// A recall not finished by then fails the program's access with EIO.
    public var recallTimeoutSeconds: Int64 = 120
    /// Largest read-ahead window a sequential reader grows to.
    public var readaheadMaxBytes: Int64 = 64 << 20
    /// Programs that get a released file's whole data back when they open it: they probe
    /// holes with lseek(SEEK_DATA) (which raises no event), read through a loop device
    /// (which raises none either) or compare ctime before and after reading, and would
    /// otherwise copy zeros or warn. Names or prefix patterns (FullRecallPrograms).
    public var fullRecallPrograms: [String] = FullRecallPrograms.defaults
    /// The change journal (a second fanotify group recording changed directories per epoch).
    public var journal: Bool = true
    /// How many resident files per filesystem hsmd ignore-marks in a background walk at
    /// start, so their first access costs no round trip to hsmd; 0: no walk.
    public var premarkFiles: Int = 200_000
    /// "host:port" on which hsmd serves GET /metrics over HTTP; nil: no listener
    /// (hsmctl metrics always works).
    public var metricsListen: String? = nil
    public var stores: [Store] = []
    public var filesystems: [Filesystem] = []
    /// Named migration policies ([[policy]]), for watermarks and `hsmctl migrate --policy`.
    public var policies: [NamedPolicy] = []
    /// How often hsmd looks at the space used on filesystems with watermarks.
    public var watermarkIntervalSeconds: Int64 = 30

    public init() {}

    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public let message: String
        public var description: String { message }
        init(_ m: String) { message = m }
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    public static func load(path: String) throws(Error) -> Config {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Error("cannot read config file \(path): \(FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw Error("\(path): not UTF-8 text") }
        do { return try parse(text) } catch { throw Error("\(path): \(error.message)") }
    }

    public static func parse(_ text: String) throws(Error) -> Config {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw Error("TOML syntax error at line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)")
        } catch {
            throw Error("TOML syntax error: \(error)")
        }
        var c = Config()
        for (key, value) in table {
            switch key {
            case "socket": c.socket = try absolutePath(value, key)
            case "state_dir": c.stateDir = try absolutePath(value, key)
            case "log_level":
                let l = try string(value, key)
                guard logLevels.contains(l) else { throw Error("log_level: \"\(l)\" is not one of \(logLevels.joined(separator: ", "))") }
                c.logLevel = l
            case "recall_threads":
                let n = try int(value, key)
                guard (1...256).contains(n) else { throw Error("recall_threads: \(n) is out of range (1...256)") }
                c.recallThreads = n
            case "recall_timeout":
                c.recallTimeoutSeconds = try duration(value, key)
                guard (1...86400).contains(c.recallTimeoutSeconds) else {
                    throw Error("recall_timeout: \(c.recallTimeoutSeconds) s is out of range (1 s to 1 day)")
                }
            case "readahead_max":
                let s = try string(value, key)
                guard let n = Units.parseSize(s), n >= 1 << 20 else { throw Error("readahead_max: \"\(s)\" is not a size of at least 1M (e.g. \"64M\")") }
                c.readaheadMaxBytes = n
            case "full_recall_programs":
                guard let a = value.array else {
                    throw Error("full_recall_programs: expected an array of program names (e.g. [\"cp\", \"qemu-system-*\"]), found \(value.type)")
                }
                var names: [String] = []
                for (i, v) in a.enumerated() {
                    guard let n = v.string else {
                        throw Error("full_recall_programs[\(i)]: expected a program name as a string, found \(v.type)")
                    }
                    if let problem = FullRecallPrograms.problem(with: n) {
                        throw Error("full_recall_programs[\(i)]: \(problem)")
                    }
                    names.append(n)
                }
                c.fullRecallPrograms = names
            case "journal":
                guard let b = value.bool else { throw Error("journal: expected true or false, found \(value.type)") }
                c.journal = b
            case "premark_files":
                let n = try int(value, key)
                guard (0...1_000_000_000).contains(n) else { throw Error("premark_files: \(n) is out of range (0 turns the walk off; at most 1000000000)") }
                c.premarkFiles = n
            case "metrics_listen":
                let v = try string(value, key)
                if let problem = MetricsListen.problem(v) { throw Error("metrics_listen: \(problem)") }
                c.metricsListen = v
            case "store":
                for (i, entry) in try arrayOfTables(value, key).enumerated() {
                    c.stores.append(try parseStore(entry, "store[\(i)]"))
                }
            case "filesystem":
                for (i, entry) in try arrayOfTables(value, key).enumerated() {
                    c.filesystems.append(try parseFilesystem(entry, "filesystem[\(i)]"))
                }
            case "policy":
                for (i, entry) in try arrayOfTables(value, key).enumerated() {
                    c.policies.append(try parsePolicy(entry, "policy[\(i)]"))
                }
            case "watermark_interval":
                c.watermarkIntervalSeconds = try duration(value, key)
                guard (1...3600).contains(c.watermarkIntervalSeconds) else {
                    throw Error("watermark_interval: \(c.watermarkIntervalSeconds) s is out of range (1 s to 1 hour)")
                }
            default:
                throw Error("unknown key \"\(key)\" (known: socket, state_dir, log_level, recall_threads, recall_timeout, readahead_max, full_recall_programs, journal, premark_files, metrics_listen, watermark_interval, [[store]], [[filesystem]], [[policy]])")
            }
        }
        try c.validate()
        return c
    }

    public func validate() throws(Error) {
        var names = Set<String>()
        for s in stores {
            guard names.insert(s.name).inserted else { throw Error("store \"\(s.name)\" is defined twice") }
        }
        var paths = Set<String>()
        for (i, f) in filesystems.enumerated() {
            guard names.contains(f.store) else {
                throw Error("filesystem[\(i)].store: no [[store]] is named \"\(f.store)\" (defined: \(names.sorted().joined(separator: ", ")))")
            }
            guard paths.insert(f.path).inserted else { throw Error("filesystem[\(i)].path: \(f.path) is listed twice") }
        }
        for (i, s) in stores.enumerated() {
            for f in filesystems where s.path == f.path || s.path.hasPrefix(f.path == "/" ? "/" : f.path + "/") {
                throw Error("store[\(i)].path: \(s.path) lies inside managed filesystem \(f.path); the tier must be elsewhere")
            }
        }
        try validatePolicies()
    }

    public func store(named name: String) -> Store? { stores.first { $0.name == name } }

    // MARK: Typed accessors that name the key on failure

    private static func parseStore(_ t: TOMLTable, _ ctx: String) throws(Error) -> Store {
        var name: String?, type: String?, path: String?
        var s3Keys: [(String, TOMLValueConvertible)] = []
        for (key, value) in t {
            switch key {
            case "name": name = try string(value, "\(ctx).name")
            case "type": type = try string(value, "\(ctx).type")
            case "path": path = try absolutePath(value, "\(ctx).path")
            case _ where s3KeyNames.contains(key): s3Keys.append((key, value))
            default: throw Error("unknown key \"\(ctx).\(key)\" (known: name, type, path for posix; \(s3KeyNames.joined(separator: ", ")) for s3)")
            }
        }
        guard let name, !name.isEmpty else { throw Error("\(ctx).name is required") }
        guard let type else { throw Error("\(ctx).type is required (\"posix\" or \"s3\")") }
        switch type {
        case "posix":
            if let (key, _) = s3Keys.first { throw Error("\(ctx).\(key): only an s3 store has it (this store is posix)") }
            guard let path else { throw Error("\(ctx).path is required") }
            return Store(name: name, type: type, path: path)
        case "s3":
            if path != nil { throw Error("\(ctx).path: an s3 store has no path (give endpoint and bucket)") }
            return Store(name: name, type: type, path: "", s3: try parseS3(s3Keys, ctx))
        default:
            throw Error("\(ctx).type: \"\(type)\" is not supported (supported: \"posix\", \"s3\")")
        }
    }

    static let s3KeyNames = ["endpoint", "bucket", "region", "prefix", "access_key_id", "secret_access_key", "credentials_file",
                             "part_size", "connections", "timeout", "tls_ca_file"]

    private static func parseS3(_ keys: [(String, TOMLValueConvertible)], _ ctx: String) throws(Error) -> S3Settings {
        var endpoint: String?, bucket: String?
        var s = S3Settings(endpoint: "", bucket: "")
        for (key, value) in keys {
            let k = "\(ctx).\(key)"
            switch key {
            case "endpoint":
                let e = try string(value, k)
                guard (e.hasPrefix("http://") && e.count > 7) || (e.hasPrefix("https://") && e.count > 8) else {
                    throw Error("\(k): \"\(e)\" must be a URL such as \"http://127.0.0.1:7480\" or \"https://s3.example.com\"")
                }
                endpoint = e
            case "bucket":
                let b = try string(value, k)
                if let problem = S3Settings.bucketProblem(b) { throw Error("\(k): \(problem)") }
                bucket = b
            case "region":
                let r = try string(value, k)
                guard !r.isEmpty, r.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }) else {
                    throw Error("\(k): \"\(r)\" is not a region name (such as \"us-east-1\")")
                }
                s.region = r
            case "prefix":
                let p = try string(value, k)
                guard p.isEmpty || (p.hasSuffix("/") && !p.hasPrefix("/") && !p.contains("//")), p.utf8.count <= 512 else {
                    throw Error("\(k): \"\(p)\" must be empty or a path ending in \"/\" (such as \"hsm/\")")
                }
                s.prefix = p
            case "access_key_id":
                let a = try string(value, k)
                guard !a.isEmpty else { throw Error("\(k) is empty") }
                s.accessKeyID = a
            case "secret_access_key":
                guard let v = value.string, !v.isEmpty else { throw Error("\(k): expected a non-empty string") }
                s.secretAccessKey = Secret(v)
            case "credentials_file": s.credentialsFile = try absolutePath(value, k)
            case "tls_ca_file": s.tlsCAFile = try absolutePath(value, k)
            case "part_size":
                let text = try string(value, k)
                guard let n = Units.parseSize(text), (S3Settings.minPartSize...S3Settings.maxPartSize).contains(n) else {
                    throw Error("\(k): \"\(text)\" is not a size between 5M and 5G (S3's part limits)")
                }
                s.partSize = n
            case "connections":
                let n = try int(value, k)
                guard (1...256).contains(n) else { throw Error("\(k): \(n) is out of range (1...256)") }
                s.connections = n
            case "timeout":
                let d = try duration(value, k)
                guard (1...3600).contains(d) else { throw Error("\(k): \(d) s is out of range (1 s to 1 hour)") }
                s.timeoutSeconds = d
            default: break
            }
        }
        guard let endpoint else { throw Error("\(ctx).endpoint is required for an s3 store (such as \"http://127.0.0.1:7480\")") }
        guard let bucket else { throw Error("\(ctx).bucket is required for an s3 store") }
        s.endpoint = endpoint
        s.bucket = bucket
        if (s.accessKeyID == nil) != (s.secretAccessKey == nil) {
            throw Error("\(ctx): access_key_id and secret_access_key go together; give both or neither")
        }
        if s.tlsCAFile != nil && !endpoint.hasPrefix("https://") {
            throw Error("\(ctx).tls_ca_file is for https endpoints; \(endpoint) is http (use https:// or remove tls_ca_file)")
        }
        if s.accessKeyID != nil && s.credentialsFile != nil {
            throw Error("\(ctx): give the keys or credentials_file, not both")
        }
        return s
    }

    private static func parseFilesystem(_ t: TOMLTable, _ ctx: String) throws(Error) -> Filesystem {
        var path: String?, store: String?
        var watermarkKeys: [(String, TOMLValueConvertible)] = []
        for (key, value) in t {
            switch key {
            case "path": path = try absolutePath(value, "\(ctx).path")
            case "store": store = try string(value, "\(ctx).store")
            case _ where Watermarks.keyNames.contains(key): watermarkKeys.append((key, value))
            default: throw Error("unknown key \"\(ctx).\(key)\" (known: path, store, \(Watermarks.keyNames.joined(separator: ", ")))")
            }
        }
        guard let path else { throw Error("\(ctx).path is required (the mount point to manage)") }
        guard let store else { throw Error("\(ctx).store is required (the name of a [[store]])") }
        return Filesystem(path: path, store: store, watermarks: try parseWatermarks(watermarkKeys, ctx))
    }

    static func string(_ v: TOMLValueConvertible, _ key: String) throws(Error) -> String {
        guard let s = v.string else { throw Error("\(key): expected a string, found \(v.type)") }
        return s
    }

    static func int(_ v: TOMLValueConvertible, _ key: String) throws(Error) -> Int {
        guard let n = v.int else { throw Error("\(key): expected an integer, found \(v.type)") }
        return n
    }

    static func absolutePath(_ v: TOMLValueConvertible, _ key: String) throws(Error) -> String {
        let s = try string(v, key)
        guard s.hasPrefix("/") else { throw Error("\(key): \"\(s)\" must be an absolute path") }
        var p = (s as NSString).standardizingPath
        if p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return p
    }

    static func duration(_ v: TOMLValueConvertible, _ key: String) throws(Error) -> Int64 {
        if let n = v.int { return Int64(n) }
        guard let s = v.string, let d = Units.parseDuration(s) else {
            throw Error("\(key): expected seconds or a duration such as \"90s\" or \"5m\"")
        }
        return d
    }

    static func arrayOfTables(_ v: TOMLValueConvertible, _ key: String) throws(Error) -> [TOMLTable] {
        guard let a = v.array else { throw Error("\(key): expected [[\(key)]] tables") }
        var out: [TOMLTable] = []
        for (i, e) in a.enumerated() {
            guard let t = e.table else { throw Error("\(key)[\(i)]: expected a table") }
            out.append(t)
        }
        return out
    }
}
