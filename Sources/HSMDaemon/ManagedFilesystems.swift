import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Synchronization

/// One filesystem hsmd marks, with the store its files archive to.
struct ManagedFilesystem: Sendable {
    let path: String
    /// st_dev of its root. Files in btrfs subvolumes and snapshots have other st_devs.
    let device: UInt64
    /// An fd on its root, for open_by_handle_at. Open for hsmd's life.
    let rootFD: Int32
    /// Where recall opens files for writing (by handle): the root of hsmd's private clone
    /// of the mount, whose mount ignore mark keeps hsmd's own I/O from raising events.
    /// Whatever mount a program read through (an overlayfs lower layer, a read-only bind
    /// mount), a file opened here is writable. `rootFD` when no clone could be made.
    let privateRootFD: Int32
    let type: String
    let store: any ObjectStore

    init(path: String, device: UInt64, rootFD: Int32, privateRootFD: Int32? = nil, type: String, store: any ObjectStore) {
        self.path = path
        self.device = device
        self.rootFD = rootFD
        self.privateRootFD = privateRootFD ?? rootFD
        self.type = type
        self.store = store
    }

    /// True when recall's writes go through the private clone (it has its own root fd).
    var hasPrivateMount: Bool { privateRootFD != rootFD }

    /// A file opened through `privateRootFD`, named for log lines: the kernel's path of it
    /// is relative to the clone's root, which is `path`.
    func displayPath(ofPrivateFile fd: Int32) -> String {
        let p = FileDescriptor.currentPath(of: fd)
        guard hasPrivateMount, p.hasPrefix("/") else { return p }
        return path == "/" ? p : (p == "/" ? path : path + p)
    }

    /// fallocate INSERT_RANGE / COLLAPSE_RANGE can move data here (ext4, xfs). btrfs refuses
    /// them with EOPNOTSUPP after raising the event (docs/KERNEL-FACTS.md), so an event on
    /// btrfs never shifts data. Unknown types count as able to.
    var canShiftData: Bool { type != "btrfs" }
}

/// The filesystems of the config, checked and keyed by device, and their stores (one
/// instance per store, its identity established). Fixed after start.
final class ManagedFilesystems: Sendable {
    let all: [ManagedFilesystem]
    /// hsmd's own state (store ids, operations in progress).
    let stateDir: String
    /// What establishing each store's identity found at start, for the log.
    let storeIdentities: [(store: String, outcome: StoreIdentity.Outcome)]
    /// Filesystems without a private mount (why), for the log.
    let privateMountProblems: [String]
    /// st_dev → index in `all`, for devices that are not a root's (btrfs subvolumes).
    private let otherDevices = Mutex<[UInt64: Int]>([:])

    struct SetupError: Error, CustomStringConvertible {
        let description: String
    }

    /// Filesystems set up by the caller (tests of the daemon's machinery).
    init(_ all: [ManagedFilesystem], stateDir: String = "") {
        self.all = all
        self.stateDir = stateDir
        storeIdentities = []
        privateMountProblems = []
    }

    init(config: Config) throws(SetupError) {
        var list: [ManagedFilesystem] = []
        var stores: [String: any ObjectStore] = [:]
        var identities: [(store: String, outcome: StoreIdentity.Outcome)] = []
        var problems: [String] = []
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
            let store: any ObjectStore
            if let existing = stores[storeConfig.name] {
                store = existing
                if let posix = existing as? PosixStore { try Self.checkPosix(posix, storeConfig, fs, st) }
            } else if let s3 = storeConfig.s3 {
                // Credentials refused or no such bucket: the configuration is wrong, and
                // hsmd refuses to start. A service that does not answer now does not stop
                // hsmd (without hsmd, released ranges would read as zeros): recalls fail
                // with EIO and archive and release are refused until it answers.
                let s3Store: S3Store
                do throws(StoreError) {
                    s3Store = try S3Store(name: storeConfig.name, settings: s3,
                                          credentials: try S3Store.credentials(s3, store: storeConfig.name),
                                          retryBudgetSeconds: config.recallTimeoutSeconds, stateDir: config.stateDir)
                } catch {
                    throw SetupError(description: "\(error)")
                }
                if let problem = s3Store.startProblem() {
                    if problem.fatal { throw SetupError(description: problem.message) }
                    // Its identity is established at the first check once it answers.
                    identities.append((storeConfig.name, .refused(problem.message)))
                } else {
                    // As for a posix store: a bucket that does not prove its identity does
                    // not stop hsmd; archive and release are refused.
                    identities.append((storeConfig.name, s3Store.identity.establish()))
                }
                stores[storeConfig.name] = s3Store
                store = s3Store
            } else {
                let posix = PosixStore(name: storeConfig.name, root: storeConfig.path, stateDir: config.stateDir)
                try Self.checkPosix(posix, storeConfig, fs, st)
                if list.contains(where: { $0.device == st.device }) {
                    throw SetupError(description: "\(key): \(fs.path) is the same filesystem as another entry")
                }
                // A store that does not prove its identity does not stop hsmd: without
                // hsmd, released ranges would read as zeros; with it they fail with EIO
                // until the store is back, and archive and release are refused meanwhile.
                stores[storeConfig.name] = posix
                identities.append((storeConfig.name, posix.identity.establish()))
                store = posix
            }
            if list.contains(where: { $0.device == st.device }) {
                throw SetupError(description: "\(key): \(fs.path) is the same filesystem as another entry")
            }
            let root: FileDescriptor
            do { root = try FileDescriptor.open(fs.path, [.directory]) } catch {
                throw SetupError(description: "\(key): \(fs.path): \(error)")
            }
            // Without it recall still works, through the root fd: its own I/O then raises
            // events that the event loop answers at once.
            var privateRoot: Int32?
            do { privateRoot = try Filesystem.privateMount(of: fs.path).rawValue } catch {
                problems.append("\(fs.path): \(error)")
            }
            // Timed and counted per request (hsmd_store_*).
            list.append(ManagedFilesystem(path: fs.path, device: st.device, rootFD: root.rawValue, privateRootFD: privateRoot, type: type, store: MeteredStore(store)))
        }
        all = list
        stateDir = config.stateDir
        storeIdentities = identities
        privateMountProblems = problems
    }

    /// A posix store's directory exists and is not on the managed filesystem `fs`.
    private static func checkPosix(_ posix: PosixStore, _ storeConfig: Config.Store, _ fs: Config.Filesystem, _ st: FileStat) throws(SetupError) {
        if let problem = posix.directoryProblem() {
            throw SetupError(description: "\(problem) (create the directory or fix store.path)")
        }
        if let storeStat = try? FileStat.of(path: storeConfig.path, followLinks: true), storeStat.device == st.device {
            throw SetupError(description: "store \(storeConfig.name): \(storeConfig.path) is on the managed filesystem \(fs.path); put the tier on another filesystem")
        }
    }

    func filesystem(device: UInt64) -> ManagedFilesystem? { all.first { $0.device == device } }

    /// The managed filesystem an open file is on. By st_dev first; a device that is no
    /// root's (a btrfs subvolume or snapshot) is resolved once by the file's handle, then
    /// remembered. nil: not a managed filesystem (the caller must not
    /// assume its data is local).
    func filesystem(ofOpenFile fd: Int32, device: UInt64) -> ManagedFilesystem? {
        if let fs = filesystem(device: device) { return fs }
        if let i = otherDevices.withLock({ $0[device] }) { return all[i] }
        // The file's handle, decoded on each managed filesystem: the one where it names
        // this very inode is the file's. Mount ids would not do: the event fd's mount may
        // be in another mount namespace (a container's readers, or hsmd's).
        guard let st = try? FileDescriptor(rawValue: fd, path: "").stat(),
              let handle = try? InodeHandle.of(fd: fd, path: ""),
              let i = all.firstIndex(where: { fs in
                  handle.identity(onFilesystemOf: fs.rootFD).map { $0 == (st.device, st.inode) } ?? false
              }) else { return nil }
        otherDevices.withLock { if $0.count < 4096 { $0[device] = i } }
        return all[i]
    }

    /// The managed filesystem on which `handle` names the inode (device, inode).
    func filesystem(handle: InodeHandle, device: UInt64, inode: UInt64) -> ManagedFilesystem? {
        all.first { fs in handle.identity(onFilesystemOf: fs.rootFD).map { $0 == (device, inode) } ?? false }
    }

    /// Each store once, in config order.
    var stores: [any ObjectStore] {
        var seen = Set<String>()
        return all.compactMap { seen.insert($0.store.name).inserted ? $0.store : nil }
    }

    /// The stores themselves, without the metering wrapper every filesystem's store wears:
    /// for what only one kind of store does (a posix store's volatile-filesystem warning,
    /// an s3 store's clean-up of unfinished uploads).
    /// Each store as archive would find it now, for doctor: "NAME: ok (identity ID, PLACE)"
    /// or "NAME: the problem" (the identity checked afresh: an s3 store asks its bucket).
    var storeLines: [String] {
        stores.map { store in
            if let problem = store.healthProblem() { return "\(store.name): \(problem)" }
            let inner = (store as? MeteredStore)?.inner ?? store
            guard let identity = (inner as? IdentifiedStore)?.identity, let id = identity.id else { return "\(store.name): ok" }
            return "\(store.name): ok (identity \(id), \(identity.location.place))"
        }
    }

    var unwrappedStores: [any ObjectStore] { stores.map { ($0 as? MeteredStore)?.inner ?? $0 } }

    var pathsDescription: String { all.map(\.path).joined(separator: ", ") }
}
