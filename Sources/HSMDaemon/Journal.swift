import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// The change journal: which directories changed, per epoch, per managed filesystem.
///
/// Threads: `hsmd-journal` reads every filesystem's notification group and does no I/O
/// but reading them: it drops directories already recorded in the current epoch (an
/// in-memory set) and queues the new ones. `hsmd-journal-db` resolves each new directory's
/// ancestors (open_by_handle_at, "..", name_to_handle_at), ignore-marks them so the
/// kernel stops sending their events until the next epoch, and writes everything queued
/// in one transaction (group commit). A slow disk therefore never stops event reading;
/// if the kernel queue overruns meanwhile, the overflow marks the epoch incomplete.
final class Journal: Sendable {
    struct Watched: Sendable {
        let path: String
        let fsid: UInt64
        let id: Int64
        let group: DirectoryChangeGroup
        /// An fd on the filesystem root, for open_by_handle_at.
        let mountFD: Int32
        let rootHandle: InodeHandle
    }

    /// Per filesystem: the current epoch and the directories recorded in it (or queued).
    struct EpochState {
        var epoch: Int64
        var seen: Set<InodeHandle> = []
        /// Recorded directories whose events still arrive: their evictable ignore mark went
        /// with the inode (cache pressure, drop_caches). The writer marks them again.
        var remarking: Set<InodeHandle> = []
    }

    enum Op: Sendable {
        case record(fs: Int, epoch: Int64, handle: InodeHandle)
        /// A directory renamed or moved into `parent` as `name` (not deduplicated: rare,
        /// and each move matters).
        case moved(fs: Int, epoch: Int64, parent: InodeHandle, name: [UInt8])
        /// Place the ignore mark again on a directory already recorded in `epoch`.
        case remark(fs: Int, epoch: Int64, handle: InodeHandle)
        case overflow(fs: Int, epoch: Int64)
        case beginEpoch(fs: Int, epoch: Int64, time: Double)
        case migrateEpoch(fs: Int, path: String, epoch: Int64)
        case barrier(Barrier)
        case stop
    }

    final class Barrier: Sendable {
        let done = DispatchSemaphore(value: 0)
    }

    let watched: [Watched]
    let db: JournalDatabase
    let log: Logger
    let state: Mutex<[EpochState]>
    let queue = Mutex<[Op]>([])
    let queueSignal = DispatchSemaphore(value: 0)
    let pendingBarriers = Mutex<[Barrier]>([])
    let wakePipe: (read: Int32, write: Int32)
    let stopPipe: (read: Int32, write: Int32)
    let ownPid = getpid()
    /// Test-only (HSMD_TEST_JOURNAL_PAUSE_FILE): event reading waits while this file exists,
    /// so a test can overrun the bounded kernel queue without racing a timer.
    let pauseFile: String?
    let eventsRead = Atomic<UInt64>(0)
    let transactions = Atomic<UInt64>(0)
    /// Kernel queue overflows seen (hsmd_journal_overflows_total).
    let overflows = Atomic<UInt64>(0)

    /// Each watched filesystem's notification group, by fsid: for systemd's fd store.
    var groups: [(fsid: UInt64, fd: Int32)] { watched.map { ($0.fsid, $0.group.fd) } }

    static let databaseName = "journal.sqlite"
    static let runningKey = "running"
    /// The longest HSMD_TEST_JOURNAL_PAUSE_FILE holds event reading back.
    static let pauseCapSeconds = 120

    struct StartError: Error, CustomStringConvertible { let description: String }

    /// Opens the database, settles what the last run left (an unclean stop, filesystems
    /// no longer watched), creates one group per filesystem and marks it.
    /// `adopted`: groups systemd's fd store kept across a restart, by fsid. A filesystem
    /// whose group was kept loses no event between the two processes.
    init(stateDir: String, filesystems: [ManagedFilesystem], adopted: [UInt64: Int32] = [:], log: Logger) throws(StartError) {
        self.log = log
        do { db = try JournalDatabase(path: stateDir + "/" + Self.databaseName) } catch {
            throw StartError(description: "change journal database: \(error)")
        }
        pauseFile = ProcessInfo.processInfo.environment["HSMD_TEST_JOURNAL_PAUSE_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        let now = Date().timeIntervalSince1970
        let stamp = ISO8601DateFormatter().string(from: Date())
        var list: [Watched] = []
        var states: [EpochState] = []
        do {
            let unclean = try db.meta(Self.runningKey) == "1"
            var current: [(path: String, fsid: UInt64)] = []
            for fs in filesystems {
                let fsid: UInt64
                do { fsid = try filesystemID(of: fs.path) } catch { throw StartError(description: "change journal: \(error)") }
                current.append((fs.path, fsid))
            }
            let known = try db.filesystems()
            let reasons = JournalRules.incompleteAtStart(previousRunUnclean: unclean, known: known.map { ($0.path, $0.fsid) },
                                                         watched: current, held: Set(adopted.keys), now: stamp)
            try db.transaction { (t) throws(DatabaseError) in
                for k in known {
                    guard let reason = reasons[k.path] else { continue }
                    try t.markIncomplete(fs: k.id, epoch: k.current, reason: reason)
                    if let fsid = current.first(where: { $0.path == k.path })?.fsid, fsid != k.fsid { try t.setFsid(fs: k.id, fsid: fsid) }
                }
                try t.setMeta(Self.runningKey, "1")
            }
            for (path, reason) in reasons.sorted(by: { $0.key < $1.key }) {
                log.warning("change journal: the current epoch of \(path) is incomplete: \(reason)")
            }
            for (fs, (_, fsid)) in zip(filesystems, current) {
                let row = try db.ensureFilesystem(path: fs.path, fsid: fsid, now: now)
                let group: DirectoryChangeGroup
                let mountFD: Int32
                let root: InodeHandle
                do {
                    if let fd = adopted[fsid] { group = DirectoryChangeGroup(fd: fd) } else { group = try DirectoryChangeGroup.open() }
                    // Marking again is harmless for a kept group: the mask is the same.
                    try group.markFilesystem(fs.path)
                    if fs.hasPrivateMount {
                        do { try group.ignore(mountOf: fs.privateRootFD, path: fs.path) } catch {
                            log.warning("change journal for \(fs.path): no ignore mark on hsmd's private mount (\(error)): recall's own writes wake the journal (they are dropped by pid)")
                        }
                    }
                    mountFD = try FileDescriptor.open(fs.path, [.directory]).rawValue
                    root = try InodeHandle.of(path: fs.path)
                } catch {
                    throw StartError(description: "change journal for \(fs.path): \(error)")
                }
                list.append(Watched(path: fs.path, fsid: fsid, id: row.id, group: group, mountFD: mountFD, rootHandle: root))
                states.append(EpochState(epoch: row.current))
            }
        } catch let e as DatabaseError {
            throw StartError(description: "change journal database \(stateDir)/\(Self.databaseName): \(e)")
        } catch let e as StartError {
            throw e
        } catch {
            throw StartError(description: "change journal: \(error)")
        }
        watched = list
        state = Mutex(states)
        wakePipe = Self.makePipe()
        stopPipe = Self.makePipe()
    }

    /// With `journal = false` hsmd watches nothing, so every epoch it had is no longer
    /// vouched for: mark them incomplete (if a journal database exists at all).
    static func markUnwatched(stateDir: String, log: Logger) {
        let path = stateDir + "/" + databaseName
        guard FileManager.default.fileExists(atPath: path) else { return }
        do {
            let db = try JournalDatabase(path: path)
            let stamp = ISO8601DateFormatter().string(from: Date())
            let known = try db.filesystems()
            try db.transaction { (t) throws(DatabaseError) in
                for k in known {
                    try t.markIncomplete(fs: k.id, epoch: k.current, reason: "not watched by hsmd from \(stamp) (the journal was off)")
                }
            }
            if !known.isEmpty { log.warning("change journal is off: the current epochs of \(known.map(\.path).joined(separator: ", ")) are now incomplete") }
        } catch {
            log.error("change journal is off and its database could not be updated: \(error)")
        }
    }

    private static func makePipe() -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        }
        return (fds[0], fds[1])
    }

    func start() {
        startThread("hsmd-journal") { self.readLoop() }
        startThread("hsmd-journal-db") { self.writeLoop() }
    }

    /// Stops reading, writes everything queued, and clears the running flag: the next
    /// start then knows this stop was clean and keeps the epochs complete.
    func stop() {
        let last = Barrier()
        pendingBarriers.withLock { $0.append(last) }
        var b: UInt8 = 1
        _ = write(stopPipe.write, &b, 1)
        // The reader hands the barrier on after its final drain; give it a moment.
        if last.done.wait(timeout: .now() + 30) == .timedOut {
            log.error("change journal: the final write did not finish in 30 s; the next start will call this epoch incomplete")
            return
        }
        enqueue(.stop)
        do {
            try db.transaction { (t) throws(DatabaseError) in try t.setMeta(Self.runningKey, "0") }
        } catch {
            log.error("change journal: cannot record the clean stop: \(error)")
        }
        // Closing ours is not the end of a group systemd's fd store also holds: it keeps
        // queueing for the next process.
        for w in watched { w.group.close(); close(w.mountFD) }
        log.info("change journal stopped cleanly: \(eventsRead.load(ordering: .relaxed)) events read, \(transactions.load(ordering: .relaxed)) transactions")
    }

    func enqueue(_ op: Op) {
        queue.withLock { $0.append(op) }
        queueSignal.signal()
    }

    func enqueue(_ ops: [Op]) {
        guard !ops.isEmpty else { return }
        queue.withLock { $0.append(contentsOf: ops) }
        queueSignal.signal()
    }
}
