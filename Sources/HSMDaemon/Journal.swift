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
    private let state: Mutex<[EpochState]>
    private let queue = Mutex<[Op]>([])
    private let queueSignal = DispatchSemaphore(value: 0)
    private let pendingBarriers = Mutex<[Barrier]>([])
    private let wakePipe: (read: Int32, write: Int32)
    private let stopPipe: (read: Int32, write: Int32)
    private let ownPid = getpid()
    private let pauseAtStartMs: Int
    let eventsRead = Atomic<UInt64>(0)
    let transactions = Atomic<UInt64>(0)
    /// Kernel queue overflows seen (hsmd_journal_overflows_total).
    let overflows = Atomic<UInt64>(0)

    /// Each watched filesystem's notification group, by fsid: for systemd's fd store.
    var groups: [(fsid: UInt64, fd: Int32)] { watched.map { ($0.fsid, $0.group.fd) } }

    static let databaseName = "journal.sqlite"
    static let runningKey = "running"

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
        pauseAtStartMs = ProcessInfo.processInfo.environment["HSMD_TEST_JOURNAL_PAUSE_MS"].flatMap(Int.init) ?? 0
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

    private func enqueue(_ op: Op) {
        queue.withLock { $0.append(op) }
        queueSignal.signal()
    }

    private func enqueue(_ ops: [Op]) {
        guard !ops.isEmpty else { return }
        queue.withLock { $0.append(contentsOf: ops) }
        queueSignal.signal()
    }

    // MARK: Reading (hsmd-journal)

    private func readLoop() {
        if pauseAtStartMs > 0 {
            // Test-only: let a burst of changes overrun the bounded kernel queue.
            log.notice("change journal: pausing event reading for \(pauseAtStartMs) ms (HSMD_TEST_JOURNAL_PAUSE_MS)")
            usleep(UInt32(pauseAtStartMs) * 1000)
        }
        let readers = watched.map { DirectoryEventReader(group: $0.group) }
        // One group per filesystem, in `watched` order, then the two pipes.
        var fds = watched.map { pollfd(fd: $0.group.fd, events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0))
        fds.append(pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0))
        var stopping = false
        // Events read, by mask, for one debug line at stop (which kinds got past the marks).
        var masksSeen: [UInt64: Int] = [:]
        while true {
            let n = poll(&fds, nfds_t(fds.count), 1000)
            if n < 0 && errno != EINTR {
                log.critical("change journal: poll failed: \(String(cString: strerror(errno))); the journal stops")
                return
            }
            if fds[fds.count - 1].revents != 0 { stopping = true }
            var drainAll = false
            if fds[fds.count - 2].revents != 0 || stopping {
                var buf = [UInt8](repeating: 0, count: 64)
                _ = read(wakePipe.read, &buf, buf.count)
                drainAll = true
            }
            for i in watched.indices where drainAll || fds[i].revents != 0 {
                drain(i, readers[i], &masksSeen)
            }
            if drainAll {
                // Everything a waiter's changes queued in the kernel is read now: pass the
                // barrier to the writer, which signals it after committing what came before.
                let barriers = pendingBarriers.withLock { b -> [Barrier] in defer { b.removeAll() }; return b }
                enqueue(barriers.map { .barrier($0) })
            }
            if stopping {
                let kinds = masksSeen.sorted { $0.value > $1.value }.prefix(8).map { "0x\(String($0.key, radix: 16)): \($0.value)" }
                log.debug("change journal: events read by mask: \(kinds.joined(separator: ", "))")
                return
            }
        }
    }

    private func drain(_ fs: Int, _ reader: DirectoryEventReader, _ kinds: inout [UInt64: Int]) {
        while true {
            let events: [DirectoryEvent]
            do { events = try reader.next() } catch {
                log.error("change journal: reading events of \(watched[fs].path) failed: \(error)")
                enqueue(.overflow(fs: fs, epoch: currentEpoch(fs)))
                return
            }
            if events.isEmpty { return }
            eventsRead.add(UInt64(events.count), ordering: .relaxed)
            for e in events { kinds[e.mask, default: 0] += 1 }
            var ops: [Op] = []
            state.withLock { s in
                for e in events {
                    if e.isOverflow {
                        // The lost events happened in this epoch or an earlier one; every
                        // range that includes an earlier one includes this one too.
                        ops.append(.overflow(fs: fs, epoch: s[fs].epoch))
                        continue
                    }
                    // hsmd's own archive and release (marker xattrs, punches) change no
                    // file's contents as its users see them.
                    if e.pid == ownPid { continue }
                    if let name = e.movedDirectoryName, let parent = e.directories.first {
                        ops.append(.moved(fs: fs, epoch: s[fs].epoch, parent: parent, name: name))
                    }
                    for h in e.directories {
                        if s[fs].seen.insert(h).inserted {
                            ops.append(.record(fs: fs, epoch: s[fs].epoch, handle: h))
                        } else if e.isSuppressedByIgnoreMark, s[fs].remarking.insert(h).inserted {
                            // An event an ignore mark should have stopped: the mark is gone
                            // (or not placed yet; marking twice is harmless).
                            ops.append(.remark(fs: fs, epoch: s[fs].epoch, handle: h))
                        }
                    }
                }
            }
            enqueue(ops)
        }
    }

    // MARK: Writing (hsmd-journal-db)

    /// How long a recorded directory may wait for its commit. Directories are resolved and
    /// ignore-marked at once; only the database write waits, so a burst of new directories
    /// costs a few transactions instead of one each. Nothing the journal promises is lost:
    /// a crash before the commit makes the epoch incomplete anyway (unclean stop), and
    /// every reader (`sync`) forces the commit first.
    static let commitIntervalNanos: UInt64 = 100_000_000

    private func writeLoop() {
        var rows: [Int: [Int64: [(handle: [UInt8], path: String?)]]] = [:]
        var moved: [(fs: Int, epoch: Int64, handle: [UInt8], path: String?)] = []
        var incomplete: [(fs: Int, epoch: Int64, reason: String)] = []
        var epochs: [(Int, Int64, Double)] = []
        var migrations: [(Int, String, Int64)] = []
        var barriers: [Barrier] = []
        var oldestPending: UInt64?
        while true {
            if let oldest = oldestPending {
                let left = Self.commitIntervalNanos > monotonicNanos() - oldest ? Self.commitIntervalNanos - (monotonicNanos() - oldest) : 0
                _ = queueSignal.wait(timeout: .now() + .nanoseconds(Int(left)))
            } else {
                queueSignal.wait()
            }
            let ops = queue.withLock { q -> [Op] in defer { q.removeAll() }; return q }
            var stop = false
            for op in ops {
                switch op {
                case .record(let fs, let epoch, let handle):
                    rows[fs, default: [:]][epoch, default: []] += resolveChain(fs: fs, epoch: epoch, handle: handle)
                case .moved(let fs, let epoch, let parent, let name):
                    if let m = resolveMoved(fs: fs, parent: parent, name: name) { moved.append((fs, epoch, m.handle, m.path)) }
                case .remark(let fs, let epoch, let handle):
                    let w = watched[fs]
                    if let fd = try? handle.openPath(mountFD: w.mountFD, what: w.path) {
                        state.withLock { s in
                            if s[fs].epoch == epoch { try? w.group.ignoreDirectory(fd: fd, path: w.path) }
                            s[fs].remarking.remove(handle)
                        }
                        close(fd)
                    } else {
                        state.withLock { _ = $0[fs].remarking.remove(handle) }
                    }
                case .overflow(let fs, let epoch):
                    overflows.add(1, ordering: .relaxed)
                    log.warning("change journal: the kernel event queue of \(watched[fs].path) overflowed; epoch \(epoch) is incomplete")
                    incomplete.append((fs, epoch, "the kernel event queue overflowed at \(ISO8601DateFormatter().string(from: Date())): events were lost"))
                case .beginEpoch(let fs, let epoch, let time):
                    epochs.append((fs, epoch, time))
                case .migrateEpoch(let fs, let path, let epoch):
                    migrations.append((fs, path, epoch))
                case .barrier(let b):
                    barriers.append(b)
                case .stop:
                    stop = true
                }
            }
            let pending = !rows.isEmpty || !moved.isEmpty || !incomplete.isEmpty || !epochs.isEmpty || !migrations.isEmpty
            if pending && oldestPending == nil { oldestPending = monotonicNanos() }
            let due = !barriers.isEmpty || stop || !epochs.isEmpty
                || (oldestPending.map { monotonicNanos() - $0 >= Self.commitIntervalNanos } ?? false)
            if due {
                flush(rows: &rows, moved: &moved, incomplete: &incomplete, epochs: &epochs, migrations: &migrations)
                oldestPending = nil
                for b in barriers { b.done.signal() }
                barriers.removeAll()
            }
            if stop { return }
        }
    }

    private func flush(rows: inout [Int: [Int64: [(handle: [UInt8], path: String?)]]], moved: inout [(fs: Int, epoch: Int64, handle: [UInt8], path: String?)], incomplete: inout [(fs: Int, epoch: Int64, reason: String)],
                       epochs: inout [(Int, Int64, Double)], migrations: inout [(Int, String, Int64)]) {
        guard !rows.isEmpty || !moved.isEmpty || !incomplete.isEmpty || !epochs.isEmpty || !migrations.isEmpty else { return }
        let currentEpochs = state.withLock { $0.map(\.epoch) }
        do {
            var wrote = false
            // Only epoch starts, completeness and migrate epochs need the disk at once. A
            // fsync per group commit made the journal benchmark's runs 5.3-7.3 s instead of
            // 4.9-5.1 s (docs/BENCHMARKS.md): each fsync of state_dir's filesystem waited
            // for the other writes queued on that disk.
            let durable = !epochs.isEmpty || !incomplete.isEmpty || !migrations.isEmpty
            try db.transaction(durable: durable) { (t) throws(DatabaseError) in
                // New epochs first: records of a new epoch may share this transaction.
                for (fs, epoch, time) in epochs { try t.beginEpoch(fs: watched[fs].id, epoch: epoch, at: time); wrote = true }
                for (fs, byEpoch) in rows {
                    for (epoch, list) in byEpoch {
                        if try t.record(fs: watched[fs].id, epoch: epoch, list) > 0 { wrote = true }
                    }
                }
                for m in moved {
                    try t.recordMoved(fs: watched[m.fs].id, epoch: m.epoch, [(m.handle, m.path)])
                    wrote = true
                }
                for i in incomplete {
                    try t.markIncomplete(fs: watched[i.fs].id, epoch: i.epoch, reason: i.reason)
                    wrote = true
                }
                for (fs, path, epoch) in migrations { try t.setMigrateEpoch(fs: watched[fs].id, path: path, epoch: epoch); wrote = true }
            }
            if wrote { transactions.add(1, ordering: .relaxed) }
        } catch {
            // A record that never reached the disk leaves the epoch unable to vouch for itself.
            log.error("change journal: writing to \(db.path) failed: \(error); marking the current epochs incomplete")
            try? db.transaction { (t) throws(DatabaseError) in
                for (fs, w) in watched.enumerated() {
                    try t.markIncomplete(fs: w.id, epoch: currentEpochs[fs], reason: "a database write failed: \(error)")
                }
            }
        }
        rows.removeAll(); moved.removeAll(); incomplete.removeAll(); epochs.removeAll(); migrations.removeAll()
    }

    /// A directory that arrived in `parent` as `name`: its handle and path now. nil when it
    /// is no longer there: moved again (that move has its own event) or deleted (which
    /// recorded its parent).
    private func resolveMoved(fs: Int, parent: InodeHandle, name: [UInt8]) -> (handle: [UInt8], path: String)? {
        let w = watched[fs]
        do throws(SystemError) {
            let parentFD = try parent.openPath(mountFD: w.mountFD, what: "directory \(parent) on \(w.path)")
            defer { close(parentFD) }
            let fd = try openPathAt(parentFD, nameBytes: name, what: FileDescriptor.currentPath(of: parentFD))
            defer { close(fd) }
            return (try InodeHandle.of(fd: fd, path: w.path).encoded, FileDescriptor.currentPath(of: fd))
        } catch {
            log.debug("change journal: a moved directory is gone from where it arrived: \(error)")
            return nil
        }
    }

    /// The directory and every ancestor not yet recorded in `epoch`, with their paths now,
    /// ignore-marking each while `epoch` is still current. A directory deleted before we
    /// got to it is recorded by handle alone: its deletion recorded its parent anyway.
    private func resolveChain(fs: Int, epoch: Int64, handle: InodeHandle) -> [(handle: [UInt8], path: String?)] {
        let w = watched[fs]
        var out: [(handle: [UInt8], path: String?)] = []
        var fd: Int32
        do { fd = try handle.openPath(mountFD: w.mountFD, what: "directory \(handle) on \(w.path)") } catch {
            if error.errno != ESTALE && error.errno != ENOENT { log.debug("change journal: \(error)") }
            return [(handle.encoded, nil)]
        }
        var current = handle
        var localSeen: Set<InodeHandle> = [handle]
        while true {
            var markError: SystemError?
            let path = FileDescriptor.currentPath(of: fd)
            out.append((current.encoded, path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path))
            let marked = state.withLock { s -> Bool in
                guard s[fs].epoch == epoch else { return false }
                // Under the state lock, so a snapshot's flush cannot come between the
                // epoch check and the mark: no directory is ever ignored in an epoch it
                // was not recorded in.
                do throws(SystemError) { try w.group.ignoreDirectory(fd: fd, path: path) } catch {
                    markError = error
                    return false
                }
                return true
            }
            if !marked, let markError { log.debug("change journal: no ignore mark: \(markError)") }
            if current == w.rootHandle { break }
            let parentFD: Int32
            let parent: InodeHandle
            do {
                parentFD = try openPathAt(fd, "..", what: path)
                parent = try InodeHandle.of(fd: parentFD, path: path + "/..")
            } catch {
                log.debug("change journal: cannot climb from \(path): \(error)")
                break
            }
            close(fd)
            fd = parentFD
            // Stop at an ancestor already recorded (or queued) in this epoch: its own
            // chain up to the root is, or will be, recorded.
            let new = state.withLock { s -> Bool? in
                s[fs].epoch == epoch ? s[fs].seen.insert(parent).inserted : nil
            } ?? localSeen.insert(parent).inserted
            if !new { break }
            current = parent
        }
        close(fd)
        return out
    }

    // MARK: Control operations (control threads)

    /// Waits until every event queued in the kernel before this call is read and its
    /// directories are committed, so an answer reflects all changes made before it.
    func sync(timeoutSeconds: Int = 60) -> Bool {
        let b = Barrier()
        pendingBarriers.withLock { $0.append(b) }
        var one: UInt8 = 1
        _ = write(wakePipe.write, &one, 1)
        let extra = pauseAtStartMs / 1000 + 1
        return b.done.wait(timeout: .now() + .seconds(timeoutSeconds + extra)) == .success
    }

    func index(of path: String) -> Int? { watched.firstIndex { $0.path == path } }

    /// The index of the managed filesystem holding `path`.
    func filesystem(containing path: String) -> Int? {
        guard let st = try? FileStat.of(path: path, followLinks: true) else {
            return watched.indices.filter { JournalRules.isUnder(path, watched[$0].path) }.max { watched[$0].path.count < watched[$1].path.count }
        }
        return watched.firstIndex { (try? FileStat.of(path: $0.path, followLinks: true).device) == st.device }
    }

    func epochs(_ fs: Int) throws(DatabaseError) -> [JournalEpoch] { try db.epochs(fs: watched[fs].id) }

    func status() throws(DatabaseError) -> [JournalFilesystemStatus] {
        var out: [JournalFilesystemStatus] = []
        for (i, w) in watched.enumerated() {
            let all = try epochs(i)
            if let cur = all.last { out.append(JournalFilesystemStatus(path: w.path, current: cur)) }
        }
        return out
    }

    /// Closes the current epoch of `fs` and starts the next; returns its number.
    func snapshot(_ fs: Int) -> Int64 {
        let w = watched[fs]
        let now = Date().timeIntervalSince1970
        let epoch = state.withLock { s -> Int64 in
            // Flush first, under the lock: from here on every change reaches us again,
            // and whatever the reader takes after the lock is released counts in the new
            // epoch (a change from just before may count in both: never in neither).
            do { try w.group.flushInodeMarks() } catch {
                log.error("change journal: \(error); ignore marks stay, so the epoch may miss changes")
            }
            s[fs].epoch += 1
            s[fs].seen.removeAll(keepingCapacity: true)
            s[fs].remarking.removeAll()
            // Queued under the lock, so no record of the new epoch is queued before it.
            enqueue(.beginEpoch(fs: fs, epoch: s[fs].epoch, time: now))
            return s[fs].epoch
        }
        log.info("change journal: \(w.path) epoch \(epoch) begins; change journal: \(eventsRead.load(ordering: .relaxed)) events read so far, \(transactions.load(ordering: .relaxed)) transactions")
        return epoch
    }

    func currentEpoch(_ fs: Int) -> Int64 { state.withLock { $0[fs].epoch } }

    /// Records (after everything queued before it) the epoch an incremental migrate began in.
    func rememberMigrate(_ fs: Int, path: String, epoch: Int64) {
        enqueue(.migrateEpoch(fs: fs, path: path, epoch: epoch))
    }

    func migrateEpoch(_ fs: Int, path: String) throws(DatabaseError) -> Int64? {
        try db.migrateEpoch(fs: watched[fs].id, path: path)
    }

    /// Changed directories since `since`, resolved to their paths now, under `root`.
    func changes(_ fs: Int, since: Int64, under root: String?) throws(DatabaseError) -> [JournalEntry] {
        let w = watched[fs]
        var out: [JournalEntry] = []
        for d in try db.directories(fs: w.id, since: since) {
            var entry = JournalEntry(path: d.path, epoch: d.epoch, deleted: true)
            if let h = InodeHandle(encoded: d.handle), let fd = try? h.openPath(mountFD: w.mountFD, what: w.path) {
                let p = FileDescriptor.currentPath(of: fd)
                close(fd)
                if p.hasSuffix(" (deleted)") { entry.path = String(p.dropLast(10)) } else { entry.path = p; entry.deleted = false }
            }
            if let root {
                guard let p = entry.path, JournalRules.isUnder(p, root) else { continue }
            }
            out.append(entry)
        }
        return out.sorted { ($0.path ?? "", $0.deleted ? 1 : 0) < ($1.path ?? "", $1.deleted ? 1 : 0) }
    }

    /// Directories renamed or moved since `since` that are now at or below `root`:
    /// their subtrees have new paths, so a scan of `root` must walk them whole.
    func movedTrees(_ fs: Int, since: Int64, under root: String) throws(DatabaseError) -> [String] {
        let w = watched[fs]
        var out: [String] = []
        for d in try db.movedDirectories(fs: w.id, since: since) {
            guard let h = InodeHandle(encoded: d.handle), let fd = try? h.openPath(mountFD: w.mountFD, what: w.path) else { continue }
            let p = FileDescriptor.currentPath(of: fd)
            close(fd)
            if !p.hasSuffix(" (deleted)") && JournalRules.isUnder(p, root) { out.append(p) }
        }
        return out.sorted()
    }

    /// "Did anything under `path` change since `since`?" PATH's own directory (a file's
    /// parent) is looked up by handle; its ctime also counts, so a directory renamed or
    /// recreated into place after the epoch began reads as changed.
    func changed(_ fs: Int, path: String, since: Int64) throws(DatabaseError) -> JournalVerdict {
        let w = watched[fs]
        var dir = path
        if let st = try? FileStat.of(path: path), st.fileType != .directory { dir = (path as NSString).deletingLastPathComponent }
        let all = try epochs(fs)
        let handle: InodeHandle
        let st: FileStat
        do { handle = try InodeHandle.of(path: dir); st = try FileStat.of(path: dir) } catch {
            return JournalVerdict(answer: .changed, reason: "changed: \(dir) cannot be looked up now (\(error))")
        }
        var recorded = try db.epochsRecording(fs: w.id, handle: handle.encoded, since: since)
        recorded += try db.epochsMoved(fs: w.id, handle: handle.encoded, since: since)
        if let start = all.first(where: { $0.epoch == since })?.started, JournalRules.ctimeWithin(st.ctimeNs, epochStart: start) {
            recorded.append(all.last?.epoch ?? since)
        }
        return JournalRules.verdict(path: path, since: since, epochs: all, pathRecordedIn: recorded)
    }
}
