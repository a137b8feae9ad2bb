/// The one way hsmd reads a control request: strict JSON, every field's type checked,
/// every number range-checked before anything does arithmetic with it. A request that
/// decodes here can be served without further checks; one that does not gets an error
/// naming the field (its JSON name, as hsmctl sends it) and what is wrong.
public struct ControlRequestError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
    init(_ message: String) { self.message = message }
}

public enum ControlRequestLimits {
    /// The longest request line hsmd reads (16 MiB).
    public static let maxLineBytes = 16 << 20
    /// Paths per request: each becomes a result row held in memory until the reply.
    public static let maxPaths = 100_000
    /// Globs per migrate request: every file walked is matched against each.
    public static let maxExcludes = 10_000
    /// A path or glob longer than PATH_MAX (4096 bytes with its NUL) names nothing.
    public static let maxPathBytes = 4095
    /// Worker threads a migrate or archive may ask for.
    public static let jobs = 1...64
}

extension ControlRequest {
    /// Decodes and validates one request line (without its newline).
    public static func decode(line: [UInt8]) throws(ControlRequestError) -> ControlRequest {
        if line.isEmpty { throw ControlRequestError("empty request line: send one JSON object per line") }
        let root: JSONValue
        do { root = try StrictJSON.parse(line) } catch {
            throw ControlRequestError("malformed request: not JSON: \(error)")
        }
        guard case .object(let o) = root else {
            throw ControlRequestError("malformed request: expected a JSON object, found \(root.kind)")
        }
        let f = Fields(o)
        let opName = try f.string("op")
        guard let op = Operation(rawValue: opName) else {
            let known = Operation.allCases.map(\.rawValue)
            throw ControlRequestError("op: \"\(opName)\" is not an operation (known: \(known.joined(separator: ", ")))")
        }
        var r = ControlRequest(op: op)
        r.paths = try f.strings("paths", limit: ControlRequestLimits.maxPaths) ?? []
        r.range = try f.integers("range")
        r.olderThanSeconds = try f.optionalInteger("older_than_seconds")
        r.minSize = try f.optionalInteger("min_size")
        r.exclude = try f.strings("exclude", limit: ControlRequestLimits.maxExcludes) ?? []
        r.dryRun = try f.bool("dry_run") ?? false
        r.jobs = Int(try f.optionalInteger("jobs") ?? 1)
        r.progress = try f.bool("progress") ?? false
        r.since = try f.optionalInteger("since")
        r.incremental = try f.bool("incremental")
        r.recall = try f.bool("recall")
        r.graceSeconds = try f.optionalInteger("grace_seconds")
        r.store = try f.optionalString("store")
        r.into = try f.optionalString("into")
        r.policy = try f.optionalString("policy")
        r.id = try f.optionalInteger("id")
        r.scrub = try f.bool("scrub")
        r.repair = try f.bool("repair")
        r.rate = try f.optionalInteger("rate")
        try r.validate()
        return r
    }

    /// Range checks, also for requests built in code.
    public func validate() throws(ControlRequestError) {
        for (name, list, limit) in [("paths", paths, ControlRequestLimits.maxPaths), ("exclude", exclude, ControlRequestLimits.maxExcludes)]
        where list.count > limit {
            throw ControlRequestError("\(name): \(list.count) entries, at most \(limit) per request; split the list into several requests")
        }
        for (i, p) in paths.enumerated() {
            try Self.checkText(p, "paths[\(i)]", what: "path")
            guard p.hasPrefix("/") else { throw ControlRequestError("paths[\(i)]: \(p) is not absolute; hsmd needs absolute paths") }
        }
        for (i, g) in exclude.enumerated() { try Self.checkText(g, "exclude[\(i)]", what: "glob") }
        if let policy { try Self.checkText(policy, "policy", what: "policy name") }
        if let range {
            guard range.count == 2 else {
                throw ControlRequestError("range: expected [offset, length] (2 integers), found \(range.count)")
            }
            let (offset, length) = (range[0], range[1])
            guard offset >= 0 else { throw ControlRequestError("range: offset \(offset) is negative") }
            guard length > 0 else { throw ControlRequestError("range: length \(length) must be greater than 0") }
            guard !offset.addingReportingOverflow(length).overflow else {
                throw ControlRequestError("range: offset \(offset) + length \(length) ends past the largest file offset (\(Int64.max))")
            }
        }
        if let s = olderThanSeconds, !(0...Units.maxDuration).contains(s) {
            throw ControlRequestError("older_than_seconds: \(s) is out of range (0 to \(Units.maxDuration), 100 years)")
        }
        if let m = minSize, m < 0 { throw ControlRequestError("min_size: \(m) is negative") }
        guard ControlRequestLimits.jobs.contains(jobs) else {
            throw ControlRequestError("jobs: \(jobs) is out of range (\(ControlRequestLimits.jobs.lowerBound) to \(ControlRequestLimits.jobs.upperBound))")
        }
        if op == .cancel {
            guard let id else { throw ControlRequestError("cancel: id is missing (hsmctl queue lists the jobs' ids)") }
            guard id > 0 else { throw ControlRequestError("cancel: id \(id) is not a job id (ids count from 1)") }
        }
        if let r = rate, r <= 0 { throw ControlRequestError("rate: \(r) must be a positive number of bytes per second") }
        if let s = since, s < 0 { throw ControlRequestError("since: \(s) is not an epoch number (epochs count from 1)") }
        if let g = graceSeconds, !(0...Units.maxDuration).contains(g) {
            throw ControlRequestError("grace_seconds: \(g) is out of range (0 to \(Units.maxDuration), 100 years)")
        }
        if let store { try Self.checkText(store, "store", what: "store name") }
        if let into {
            try Self.checkText(into, "into", what: "path")
            guard into.hasPrefix("/") else { throw ControlRequestError("into: \(into) is not absolute; hsmd needs absolute paths") }
        }
        if op == .importStore && (store ?? "").isEmpty { throw ControlRequestError("store: import needs the name of a store of hsmd's config") }
    }

    /// The recall range as a Range; nil when absent. Only for validated requests.
    public var recallRange: Range<Int64>? {
        guard let range, range.count == 2, range[0] >= 0, range[1] > 0 else { return nil }
        let (end, overflow) = range[0].addingReportingOverflow(range[1])
        return overflow ? nil : range[0]..<end
    }

    private static func checkText(_ s: String, _ field: String, what: String) throws(ControlRequestError) {
        let n = s.utf8.count
        guard n <= ControlRequestLimits.maxPathBytes else {
            throw ControlRequestError("\(field): a \(what) of \(n) bytes is longer than the system allows (4096 with its NUL)")
        }
        guard !s.utf8.contains(0) else { throw ControlRequestError("\(field): the \(what) contains a NUL byte") }
    }

    /// Typed access to the request's members; each failure names the member.
    private struct Fields {
        let o: [String: JSONValue]
        init(_ o: [String: JSONValue]) { self.o = o }

        func fail(_ key: String, _ expected: String, _ found: JSONValue) -> ControlRequestError {
            ControlRequestError("malformed request: \(key): expected \(expected), found \(found.kind)")
        }

        func string(_ key: String) throws(ControlRequestError) -> String {
            guard let v = o[key] else { throw ControlRequestError("malformed request: \(key) is missing") }
            guard case .string(let s) = v else { throw fail(key, "a string", v) }
            return s
        }

        func optionalString(_ key: String) throws(ControlRequestError) -> String? {
            guard let v = o[key], v != .null else { return nil }
            guard case .string(let s) = v else { throw fail(key, "a string", v) }
            return s
        }

        func bool(_ key: String) throws(ControlRequestError) -> Bool? {
            guard let v = o[key] else { return nil }
            switch v {
            case .null: return nil
            case .bool(let b): return b
            default: throw fail(key, "true or false", v)
            }
        }

        func integer(_ v: JSONValue, _ key: String) throws(ControlRequestError) -> Int64 {
            switch v {
            case .integer(let n): return n
            case .number(let text):
                throw ControlRequestError("malformed request: \(key): \(text) is not an integer from \(Int64.min) to \(Int64.max)")
            default: throw fail(key, "an integer", v)
            }
        }

        func optionalInteger(_ key: String) throws(ControlRequestError) -> Int64? {
            guard let v = o[key], v != .null else { return nil }
            return try integer(v, key)
        }

        func integers(_ key: String) throws(ControlRequestError) -> [Int64]? {
            guard let v = o[key], v != .null else { return nil }
            guard case .array(let a) = v else { throw fail(key, "an array of integers", v) }
            guard a.count <= 2 else { throw ControlRequestError("\(key): expected [offset, length] (2 integers), found \(a.count)") }
            var out: [Int64] = []
            for (i, e) in a.enumerated() { out.append(try integer(e, "\(key)[\(i)]")) }
            return out
        }

        func strings(_ key: String, limit: Int) throws(ControlRequestError) -> [String]? {
            guard let v = o[key], v != .null else { return nil }
            guard case .array(let a) = v else { throw fail(key, "an array of strings", v) }
            guard a.count <= limit else {
                throw ControlRequestError("\(key): \(a.count) entries, at most \(limit) per request; split the list into several requests")
            }
            var out: [String] = []
            out.reserveCapacity(a.count)
            for (i, e) in a.enumerated() {
                guard case .string(let s) = e else { throw fail("\(key)[\(i)]", "a string", e) }
                out.append(s)
            }
            return out
        }
    }
}
