import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

/// Archive, release, recall and status of single files, on behalf of hsmctl.
/// Every operation on an inode runs under that inode's lock.
struct Archiver: Sendable {
    let group: FanotifyGroup
    let filesystems: ManagedFilesystems
    let locks: InodeLocks
    let engine: RecallEngine
    let log: Logger
    /// Notes of the operations under way (state_dir/in-progress), shared by every copy.
    let inProgress: InProgress
    /// Told of every marker archive and release write (after it is written).
    let catalog: Catalog?

    init(group: FanotifyGroup, filesystems: ManagedFilesystems, locks: InodeLocks, engine: RecallEngine, log: Logger,
         catalog: Catalog? = nil) {
        self.catalog = catalog
        self.group = group
        self.filesystems = filesystems
        self.locks = locks
        self.engine = engine
        self.log = log
        inProgress = InProgress(stateDir: filesystems.stateDir)
    }

    /// The lease-break signal; hsmd installs a no-op handler and polls F_GETLEASE.
    static let leaseSignal = SIGIO
    /// Punch at most this much between lease checks, so an opener waits little.
    static let punchChunk: Int64 = 64 << 20
    /// Test-only: pause between punch chunks so a test can open the file mid-release.
    static let punchPauseMicros: UInt32 = ProcessInfo.processInfo.environment["HSMD_TEST_PUNCH_PAUSE_MS"]
        .flatMap { UInt32($0) }.map { $0.multipliedReportingOverflow(by: 1000).overflow ? UInt32.max : $0 * 1000 } ?? 0

    struct Refusal: Error {
        let result: FileResult
    }

    /// Notes that `kind` of the file open as `fd` is starting (see InProgress).
    func noteInProgress(_ kind: InProgress.Kind, _ fd: FileDescriptor, _ st: FileStat, object: ObjectID,
                previous: ObjectID? = nil, store: any ObjectStore, privileges: FilePrivileges? = nil) throws(Refusal) -> InProgress.Note {
        let handle = try? InodeHandle.of(fd: fd.rawValue, path: fd.path)
        var entry = InProgress.Entry(kind: kind, object: object.hex, previous: previous?.hex, store: store.name, path: fd.path,
                                     device: st.device, inode: st.inode, handle: handle?.hex)
        if let privileges {
            entry.setIDBits = privileges.setIDBits
            entry.capability = privileges.capability.map(FilePrivileges.hex)
        }
        do { return try inProgress.begin(entry) } catch {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "\(error)"))
        }
    }

    // MARK: Opening

    /// Opens `path` non-blocking, so that a lease holder makes the open fail (EWOULDBLOCK)
    /// rather than wait up to fs.lease-break-time. A few short retries ride out leases
    /// that are just ending, hsmd's own among them (a settle holds one while it writes a
    /// marker); a lease kept longer stays EWOULDBLOCK.
    static func openNotWaitingOnLeases(_ path: String, _ flags: FileDescriptor.OpenFlags) throws(SystemError) -> FileDescriptor {
        var attempt = 0
        while true {
            do {
                return try FileDescriptor.open(path, flags.union(.nonBlocking))
            } catch where error.errno == EWOULDBLOCK && attempt < 5 {
                attempt += 1
                usleep(20_000)
            }
        }
    }

    /// Opens a regular file on a managed filesystem, or explains why not.
    func openManaged(_ path: String, _ flags: FileDescriptor.OpenFlags) throws(Refusal) -> (FileDescriptor, FileStat, ManagedFilesystem) {
        let lst: FileStat
        do { lst = try FileStat.of(path: path) } catch {
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)"))
        }
        switch lst.fileType {
        case .regular: break
        case .directory:
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "is a directory; name files, or use hsmctl migrate to walk a tree"))
        default:
            // Named explicitly, so not done (exit 1); migrate's walks skip these quietly.
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "\(lst.fileType.rawValue): not a regular file, skipped"))
        }
        guard let fs = filesystems.filesystem(device: lst.device) else {
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))"))
        }
        let fd: FileDescriptor
        do { fd = try Self.openNotWaitingOnLeases(path, flags.union(.noFollow)) } catch {
            let reason = [EWOULDBLOCK, ETXTBSY].contains(error.errno) ? "busy: the file is in use (\(error))" : "\(error)"
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: reason))
        }
        do {
            let st = try fd.stat()
            guard st.inodeKey == lst.inodeKey else {
                fd.close()
                throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "replaced while being opened; try again"))
            }
            return (fd, st, fs)
        } catch let e as Refusal {
            throw e
        } catch {
            fd.close()
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "\(error)"))
        }
    }

    func readMarker(_ fd: FileDescriptor) throws(Refusal) -> Marker? {
        do {
            guard let raw = try fd.xattr(Marker.xattrName) else { return nil }
            return try MarkerCodec.decode(raw)
        } catch {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "damaged marker: \(error)", state: .damaged))
        }
    }
}
