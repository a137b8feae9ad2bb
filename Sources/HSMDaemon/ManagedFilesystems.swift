import HSMCore
import HSMKernel

/// One filesystem hsmd marks, with the store its files archive to.
struct ManagedFilesystem: Sendable {
    let path: String
    let device: UInt64
    let type: String
    let store: any ObjectStore
}

/// The filesystems of the config, checked and keyed by device, and their stores (one
/// instance per store, its identity established). Fixed after start.
struct ManagedFilesystems: Sendable {
    let all: [ManagedFilesystem]
    /// hsmd's own state (store ids, operations in progress).
    let stateDir: String
    /// What establishing each store's identity found at start, for the log.
    let storeIdentities: [(store: String, outcome: StoreIdentity.Outcome)]

    struct SetupError: Error, CustomStringConvertible {
        let description: String
    }

    init(config: Config) throws(SetupError) {
        var list: [ManagedFilesystem] = []
        var stores: [String: PosixStore] = [:]
        var identities: [(store: String, outcome: StoreIdentity.Outcome)] = []
        for (i, fs) in config.filesystems.enumerated() {
            let key = "filesystem[\(i)].path"
            let st: FileStat
            do { st = try FileStat.of(path: fs.path, followLinks: true) } catch {
                throw SetupError(description: "\(key): \(fs.path): \(error)")
            }
            guard st.fileType == .directory else { throw SetupError(description: "\(key): \(fs.path) is not a directory") }
            let isMount = (try? Filesystem.isMountPoint(fs.path)) ?? false
            guard isMount else {
                throw SetupError(description: "\(key): \(fs.path) is not a mount point; hsmd manages whole filesystems, give the directory a filesystem is mounted on")
            }
            guard let type = try? Filesystem.typeName(of: fs.path) else {
                throw SetupError(description: "\(key): \(fs.path) is not ext4, xfs or btrfs; pre-content events need one of those (tmpfs and network filesystems refuse them)")
            }
            guard let storeConfig = config.store(named: fs.store) else {
                throw SetupError(description: "filesystem[\(i)].store: no store named \(fs.store)")
            }
            let store = stores[storeConfig.name] ?? PosixStore(name: storeConfig.name, root: storeConfig.path, stateDir: config.stateDir)
            if let problem = store.directoryProblem() {
                throw SetupError(description: "\(problem) (create the directory or fix store.path)")
            }
            if let storeStat = try? FileStat.of(path: storeConfig.path, followLinks: true), storeStat.device == st.device {
                throw SetupError(description: "store \(storeConfig.name): \(storeConfig.path) is on the managed filesystem \(fs.path); put the tier on another filesystem")
            }
            if list.contains(where: { $0.device == st.device }) {
                throw SetupError(description: "\(key): \(fs.path) is the same filesystem as another entry")
            }
            if stores[storeConfig.name] == nil {
                // A store that does not prove its identity does not stop hsmd: without
                // hsmd, released ranges would read as zeros; with it they fail with EIO
                // until the store is back, and archive and release are refused meanwhile.
                stores[storeConfig.name] = store
                identities.append((storeConfig.name, store.identity.establish()))
            }
            list.append(ManagedFilesystem(path: fs.path, device: st.device, type: type, store: store))
        }
        all = list
        stateDir = config.stateDir
        storeIdentities = identities
    }

    func filesystem(device: UInt64) -> ManagedFilesystem? { all.first { $0.device == device } }

    /// Each store once, in config order.
    var stores: [any ObjectStore] {
        var seen = Set<String>()
        return all.compactMap { seen.insert($0.store.name).inserted ? $0.store : nil }
    }

    var pathsDescription: String { all.map(\.path).joined(separator: ", ") }
}
