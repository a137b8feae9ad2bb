import HSMCore
import HSMKernel

/// One filesystem hsmd marks, with the store its files archive to.
struct ManagedFilesystem: Sendable {
    let path: String
    let device: UInt64
    let type: String
    let store: any ObjectStore
}

/// The filesystems of the config, checked and keyed by device. Fixed after start.
struct ManagedFilesystems: Sendable {
    let all: [ManagedFilesystem]

    struct SetupError: Error, CustomStringConvertible {
        let description: String
    }

    init(config: Config) throws(SetupError) {
        var list: [ManagedFilesystem] = []
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
            let store = PosixStore(name: storeConfig.name, root: storeConfig.path)
            if let problem = store.healthProblem() {
                throw SetupError(description: "\(problem) (create the directory or fix store.path)")
            }
            if let storeStat = try? FileStat.of(path: storeConfig.path, followLinks: true), storeStat.device == st.device {
                throw SetupError(description: "store \(storeConfig.name): \(storeConfig.path) is on the managed filesystem \(fs.path); put the tier on another filesystem")
            }
            if list.contains(where: { $0.device == st.device }) {
                throw SetupError(description: "\(key): \(fs.path) is the same filesystem as another entry")
            }
            list.append(ManagedFilesystem(path: fs.path, device: st.device, type: type, store: store))
        }
        all = list
    }

    func filesystem(device: UInt64) -> ManagedFilesystem? { all.first { $0.device == device } }

    var pathsDescription: String { all.map(\.path).joined(separator: ", ") }
}
