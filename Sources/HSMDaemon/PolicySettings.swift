import HSMCore
import Synchronization

/// The named policies and the watermarks hsmd works by, read from the config. Held here,
/// not in each user, so a config reload can swap them while passes and migrations run:
/// each pass or request takes one snapshot and keeps it to its end.
final class PolicySettings: Sendable {
    struct Snapshot: Sendable {
        var policies: [NamedPolicy] = []
        /// Managed filesystem path → its watermarks.
        var watermarks: [String: Watermarks] = [:]
        var intervalSeconds: Int64 = 30
    }

    private let current: Mutex<Snapshot>

    init(_ config: Config = Config()) { current = Mutex(Self.snapshot(of: config)) }

    var snapshot: Snapshot { current.withLock { $0 } }

    /// For a reload: takes effect at the next pass or request.
    func replace(with config: Config) {
        let s = Self.snapshot(of: config)
        current.withLock { $0 = s }
    }

    private static func snapshot(of config: Config) -> Snapshot {
        var s = Snapshot(policies: config.policies, intervalSeconds: config.watermarkIntervalSeconds)
        for fs in config.filesystems { if let w = fs.watermarks { s.watermarks[fs.path] = w } }
        return s
    }
}
