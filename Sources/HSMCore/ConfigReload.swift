/// Which config keys a reload (SIGHUP, systemctl reload hsmd) may change while hsmd runs,
/// and which need a restart. THE one list: a new key goes here, as reloadable (and the
/// daemon's apply step takes it) or as restart-only.
public enum ConfigReload {
    public struct Key: Sendable {
        public let name: String
        public let reloadable: Bool
        public let differs: @Sendable (Config, Config) -> Bool
    }

    public static let keys: [Key] = [
        // Reloadable: read again by whoever uses them, for the next event or request.
        Key(name: "log_level", reloadable: true) { $0.logLevel != $1.logLevel },
        Key(name: "full_recall_programs", reloadable: true) { $0.fullRecallPrograms != $1.fullRecallPrograms },
        Key(name: "recall_timeout", reloadable: true) { $0.recallTimeoutSeconds != $1.recallTimeoutSeconds },
        Key(name: "readahead_max", reloadable: true) { $0.readaheadMaxBytes != $1.readaheadMaxBytes },
        // Policies and watermarks (PolicySettings): the next pass or migrate request uses them.
        Key(name: "[[policy]]", reloadable: true) { $0.policies != $1.policies },
        Key(name: "watermark_interval", reloadable: true) { $0.watermarkIntervalSeconds != $1.watermarkIntervalSeconds },
        Key(name: "[[filesystem]] watermarks", reloadable: true) { watermarks($0) != watermarks($1) },
        // Restart only: they shape what hsmd set up at start (threads, fanotify groups and
        // marks, sockets, databases, store identities).
        Key(name: "socket", reloadable: false) { $0.socket != $1.socket },
        Key(name: "state_dir", reloadable: false) { $0.stateDir != $1.stateDir },
        Key(name: "recall_threads", reloadable: false) { $0.recallThreads != $1.recallThreads },
        Key(name: "journal", reloadable: false) { $0.journal != $1.journal },
        Key(name: "premark_files", reloadable: false) { $0.premarkFiles != $1.premarkFiles },
        Key(name: "metrics_listen", reloadable: false) { $0.metricsListen != $1.metricsListen },
        Key(name: "[[store]]", reloadable: false) { $0.stores != $1.stores },
        // Which filesystems and their stores; their watermarks are reloadable (above).
        Key(name: "[[filesystem]]", reloadable: false) { placement($0) != placement($1) },
    ]

    private static func watermarks(_ c: Config) -> [String: Watermarks] {
        Dictionary(c.filesystems.compactMap { fs in fs.watermarks.map { (fs.path, $0) } }, uniquingKeysWith: { a, _ in a })
    }

    private static func placement(_ c: Config) -> [String: String] {
        Dictionary(c.filesystems.map { ($0.path, $0.store) }, uniquingKeysWith: { a, _ in a })
    }

    public enum Verdict: Equatable, Sendable {
        /// Apply: these reloadable keys changed (empty: nothing did).
        case apply(changed: [String])
        /// Keep the running config: these keys changed and need a restart.
        case needsRestart(keys: [String])
    }

    public static func verdict(running: Config, new: Config) -> Verdict {
        let changed = keys.filter { $0.differs(running, new) }
        let restart = changed.filter { !$0.reloadable }
        if !restart.isEmpty { return .needsRestart(keys: restart.map(\.name)) }
        return .apply(changed: changed.map(\.name))
    }

    /// What a store or filesystem change is, for the refusal's log line.
    public static func details(running: Config, new: Config) -> [String] {
        var out: [String] = []
        let oldStores = Dictionary(running.stores.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let newStores = Dictionary(new.stores.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for n in newStores.keys.sorted() where oldStores[n] == nil { out.append("store \"\(n)\" added") }
        for n in oldStores.keys.sorted() where newStores[n] == nil { out.append("store \"\(n)\" removed") }
        for n in newStores.keys.sorted() where oldStores[n] != nil && oldStores[n] != newStores[n] { out.append("store \"\(n)\" changed") }
        let oldFS = Set(running.filesystems.map(\.path)), newFS = Set(new.filesystems.map(\.path))
        for p in newFS.subtracting(oldFS).sorted() { out.append("filesystem \(p) added") }
        for p in oldFS.subtracting(newFS).sorted() { out.append("filesystem \(p) removed") }
        let oldStoreOf = placement(running)
        for f in new.filesystems where oldFS.contains(f.path) && oldStoreOf[f.path] != f.store {
            out.append("filesystem \(f.path) moved to store \"\(f.store)\"")
        }
        return out
    }
}
