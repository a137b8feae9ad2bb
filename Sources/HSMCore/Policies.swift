import TOMLKit

/// A migration policy with a name ([[policy]] in the config), used by a filesystem's
/// watermarks and by `hsmctl migrate --policy NAME` (the nightly timer's).
public struct NamedPolicy: Equatable, Sendable {
    public var name: String
    public var policy: MigrationPolicy

    public init(name: String, policy: MigrationPolicy) {
        self.name = name
        self.policy = policy
    }
}

/// A filesystem's space watermarks: at `highPercent` of its space used, hsmd releases
/// archived files and then migrates cold ones until usage is below `lowPercent`.
public struct Watermarks: Equatable, Sendable {
    public var highPercent: Int
    public var lowPercent: Int
    /// The [[policy]] that picks which files may go (nil: any file not used within min_age).
    public var policy: String?
    /// A file used (read or written) within this many seconds is never touched.
    public var minAgeSeconds: Int64

    public static let defaultMinAgeSeconds: Int64 = 3600

    public init(highPercent: Int, lowPercent: Int, policy: String? = nil, minAgeSeconds: Int64 = defaultMinAgeSeconds) {
        self.highPercent = highPercent
        self.lowPercent = lowPercent
        self.policy = policy
        self.minAgeSeconds = minAgeSeconds
    }

    public static let keyNames = ["high_watermark", "low_watermark", "watermark_policy", "min_age"]

    /// Why the marks cannot work together, or nil.
    public static func problem(high: Int, low: Int) -> String? {
        guard low > 0 else { return "low_watermark \(low) must be greater than 0" }
        guard high <= 100 else { return "high_watermark \(high) is over 100 (percent of the space used)" }
        guard low < high else { return "low_watermark \(low) must be below high_watermark \(high)" }
        return nil
    }
}

extension Config {
    public func policy(named name: String) -> MigrationPolicy? { policies.first { $0.name == name }?.policy }

    /// The message for a policy name the config does not define.
    public func unknownPolicyMessage(_ name: String) -> String {
        policies.isEmpty ? "no [[policy]] named \"\(name)\": hsmd's config defines no policies"
            : "no [[policy]] named \"\(name)\" (known: \(policies.map(\.name).joined(separator: ", ")))"
    }

    static let policyKeyNames = ["name", "older_than", "min_size", "exclude"]

    static func parsePolicy(_ t: TOMLTable, _ ctx: String) throws(Error) -> NamedPolicy {
        var name: String?
        var p = MigrationPolicy()
        for (key, value) in t {
            let k = "\(ctx).\(key)"
            switch key {
            case "name":
                let n = try string(value, k)
                guard !n.isEmpty, n.utf8.count <= 64,
                      n.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }) else {
                    throw Error("\(k): \"\(n)\" must be 1 to 64 letters, digits, '-', '_' or '.'")
                }
                name = n
            case "older_than":
                let d = try duration(value, k)
                guard (0...Units.maxDuration).contains(d) else { throw Error("\(k): \(d) s is out of range (0 to 100 years)") }
                p.olderThanSeconds = d
            case "min_size":
                if let n = value.int {
                    guard n >= 0 else { throw Error("\(k): \(n) is negative") }
                    p.minSize = Int64(n)
                } else {
                    let s = try string(value, k)
                    guard let n = Units.parseSize(s) else { throw Error("\(k): \"\(s)\" is not a size (such as 4096, \"64k\" or \"1M\")") }
                    p.minSize = n
                }
            case "exclude":
                guard let a = value.array else { throw Error("\(k): expected an array of globs (such as [\"*.tmp\", \"/srv/data/keep/*\"]), found \(value.type)") }
                guard a.count <= ControlRequestLimits.maxExcludes else { throw Error("\(k): \(a.count) globs, at most \(ControlRequestLimits.maxExcludes)") }
                for (i, v) in a.enumerated() {
                    guard let g = v.string else { throw Error("\(k)[\(i)]: expected a glob as a string, found \(v.type)") }
                    guard !g.isEmpty, g.utf8.count <= ControlRequestLimits.maxPathBytes, !g.utf8.contains(0) else {
                        throw Error("\(k)[\(i)]: a glob must be 1 to \(ControlRequestLimits.maxPathBytes) bytes without NUL")
                    }
                    p.exclude.append(g)
                }
            default: throw Error("unknown key \"\(k)\" (known: \(policyKeyNames.joined(separator: ", ")))")
            }
        }
        guard let name else { throw Error("\(ctx).name is required (hsmctl migrate --policy NAME and watermark_policy use it)") }
        return NamedPolicy(name: name, policy: p)
    }

    /// The watermark keys of one [[filesystem]]; nil when it has none.
    static func parseWatermarks(_ keys: [(String, TOMLValueConvertible)], _ ctx: String) throws(Error) -> Watermarks? {
        guard !keys.isEmpty else { return nil }
        var high: Int?, low: Int?, policy: String?, minAge: Int64?
        for (key, value) in keys {
            let k = "\(ctx).\(key)"
            switch key {
            case "high_watermark", "low_watermark":
                guard let n = value.int else { throw Error("\(k): expected a whole percent of the space used (such as 90), found \(value.type)") }
                if key == "high_watermark" { high = n } else { low = n }
            case "watermark_policy": policy = try string(value, k)
            case "min_age":
                let d = try duration(value, k)
                guard (0...Units.maxDuration).contains(d) else { throw Error("\(k): \(d) s is out of range (0 to 100 years)") }
                minAge = d
            default: break
            }
        }
        guard let high, let low else {
            let given = keys.map(\.0).joined(separator: ", ")
            throw Error("\(ctx): \(given) given without \(high == nil ? "high_watermark" : "low_watermark"); watermarks need both high_watermark and low_watermark (such as 90 and 75)")
        }
        if let problem = Watermarks.problem(high: high, low: low) {
            throw Error("\(ctx): \(problem); give 0 < low_watermark < high_watermark <= 100")
        }
        return Watermarks(highPercent: high, lowPercent: low, policy: policy, minAgeSeconds: minAge ?? Watermarks.defaultMinAgeSeconds)
    }

    func validatePolicies() throws(Error) {
        var names = Set<String>()
        for p in policies {
            guard names.insert(p.name).inserted else { throw Error("policy \"\(p.name)\" is defined twice") }
        }
        for (i, f) in filesystems.enumerated() {
            if let name = f.watermarks?.policy, policy(named: name) == nil {
                throw Error("filesystem[\(i)].watermark_policy: \(unknownPolicyMessage(name))")
            }
        }
    }
}

extension ControlRequest {
    /// A migrate request with its named policy filled in from `policies`: the policy's
    /// age, size and excludes, and, when no path is named, every managed filesystem
    /// (`defaultPaths`). A request without a policy must name its paths.
    public func resolvingPolicy(_ policies: [NamedPolicy], defaultPaths: [String]) throws(ControlRequestError) -> ControlRequest {
        guard let name = policy else {
            if paths.isEmpty { throw ControlRequestError("paths: name at least one file or directory, or a policy (--policy NAME) to migrate every managed filesystem by it") }
            return self
        }
        if olderThanSeconds != nil || minSize != nil || !exclude.isEmpty {
            throw ControlRequestError("policy: \(name) gives the age, size and excludes; do not combine it with older_than, min_size or exclude")
        }
        guard let named = policies.first(where: { $0.name == name }) else {
            var c = Config()
            c.policies = policies
            throw ControlRequestError(c.unknownPolicyMessage(name))
        }
        var r = self
        r.olderThanSeconds = named.policy.olderThanSeconds
        r.minSize = named.policy.minSize
        r.exclude = named.policy.exclude
        if r.paths.isEmpty { r.paths = defaultPaths }
        return r
    }
}

extension MigrationPolicy {
    /// "older than 30d, at least 64.0 KiB, 2 excludes", for notes and log lines.
    public var summary: String {
        var parts: [String] = []
        if let a = olderThanSeconds { parts.append("older than \(Units.formatDuration(a))") }
        if let s = minSize { parts.append("at least \(Units.formatBytes(s))") }
        if !exclude.isEmpty { parts.append("\(exclude.count) exclude\(exclude.count == 1 ? "" : "s")") }
        return parts.isEmpty ? "every file" : parts.joined(separator: ", ")
    }
}
