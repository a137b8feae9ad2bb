import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization

/// Brings offline blocks back from the stores.
///
/// Events for one inode queue behind each other and one worker drains them under the
/// inode lock, so overlapping requests coalesce: the second finds its blocks resident.
/// Different inodes recall in parallel on a fixed pool of threads hsmd owns.
final class RecallEngine: Sendable {
    struct Readahead {
        var nextBlock: Int
        var window: Int
        /// Where the last recall of part of a block ended: an access starting there reads
        /// on sequentially, and gets whole blocks.
        var nextByte: Int64 = -1
    }

    struct State {
        var queues: [InodeKey: [PendingEvent]] = [:]
        var scheduled: Set<InodeKey> = []
        var ready: [InodeKey] = []
        var outstanding: [ObjectIdentifier: PendingEvent] = [:]
        var readahead: [InodeKey: Readahead] = [:]
        var stopping = false
        /// Reloadable settings (ConfigReload): read under this lock, which every event
        /// takes anyway.
        var timeoutNanos: UInt64
        var readaheadMaxBytes: Int64
        var fullRecallPrograms: FullRecallPrograms
        /// Files whose marker waits until no other process has them open (RecallSettle).
        var unsettled: [InodeKey: Unsettled] = [:]
    }

    let group: FanotifyGroup
    let filesystems: ManagedFilesystems
    let locks: InodeLocks
    let log: Logger
    private let threads: Int
    let state: Mutex<State>
    /// Recalls copying data now (hsmctl queue, hsmd_recalls_in_flight).
    let inFlight = InFlightRecalls()
    /// Test-only: a store that answers this slowly, to exercise recall_timeout.
    static let testStoreDelayMicros: UInt32 = ProcessInfo.processInfo.environment["HSMD_TEST_STORE_DELAY_MS"]
        .flatMap { UInt32($0) }.map { $0 > UInt32.max / 1000 ? UInt32.max : $0 * 1000 } ?? 0
    private let work = DispatchSemaphore(value: 0)
    /// Wakes the settle thread: a file to settle, or stop.
    let settleWake = DispatchSemaphore(value: 0)
    /// Bytes written back by recalls since start: the space watcher looks at usage again
    /// after a large amount (SpaceWatcher).
    let bytesRecalled = Atomic<Int64>(0)
    /// Told of every marker recall writes (queued; see Catalog).
    let catalog: Catalog?

    init(group: FanotifyGroup, filesystems: ManagedFilesystems, locks: InodeLocks, config: Config, log: Logger,
         catalog: Catalog? = nil) {
        self.catalog = catalog
        self.group = group
        self.filesystems = filesystems
        self.locks = locks
        self.log = log
        state = Mutex(State(timeoutNanos: UInt64(config.recallTimeoutSeconds) * 1_000_000_000,
                            readaheadMaxBytes: config.readaheadMaxBytes,
                            fullRecallPrograms: FullRecallPrograms(config.fullRecallPrograms)))
        threads = config.recallThreads
    }

    /// Takes the reloadable settings of a new config (SIGHUP); events already taken keep
    /// going, later ones see the new values.
    func apply(_ config: Config) {
        state.withLock { s in
            s.timeoutNanos = UInt64(config.recallTimeoutSeconds) * 1_000_000_000
            s.readaheadMaxBytes = config.readaheadMaxBytes
            s.fullRecallPrograms = FullRecallPrograms(config.fullRecallPrograms)
        }
    }

    /// Accesses taken and not answered yet (hsmd_recall_queue_depth).
    var queueDepth: Int { state.withLock { $0.outstanding.count } }

    func start() {
        for i in 0..<threads { startThread("hsmd-recall\(i)") { self.workerLoop() } }
        startThread("hsmd-timeouts") { self.timeoutLoop() }
        startThread("hsmd-settle") { self.settleLoop() }
    }

    /// Finishes what is queued, for up to `drainSeconds`, then stops the workers. Returns
    /// the events still unanswered: they stay in the event log for a successor.
    @discardableResult
    func stop(drainSeconds: Double) -> Int {
        let deadline = monotonicNanos() + UInt64(drainSeconds * 1e9)
        var left = state.withLock { $0.outstanding.count }
        while left > 0 && monotonicNanos() < deadline {
            usleep(20_000)
            left = state.withLock { $0.outstanding.count }
        }
        state.withLock { $0.stopping = true }
        for _ in 0..<threads { work.signal() }
        settleWake.signal()
        let unsettled = state.withLock { $0.unsettled.count }
        if unsettled > 0 {
            log.info("\(unsettled) file(s) recalled at open were still open elsewhere: their markers are written at their next access")
        }
        return left
    }

    /// Called by the event thread; never blocks on I/O.
    func submit(_ event: PendingEvent, key: InodeKey) {
        let wake = state.withLock { s -> Bool in
            s.outstanding[ObjectIdentifier(event)] = event
            s.queues[key, default: []].append(event)
            guard !s.scheduled.contains(key) else { return false }
            s.scheduled.insert(key)
            s.ready.append(key)
            return true
        }
        if wake { work.signal() }
    }

    private func workerLoop() {
        let buffer = WorkerBuffer()
        while true {
            work.wait()
            let next = state.withLock { s -> (InodeKey?, Bool) in
                (s.ready.isEmpty ? nil : s.ready.removeFirst(), s.stopping)
            }
            if let key = next.0 { drain(key, buffer) } else if next.1 { return }
        }
    }

    /// Answers every queued event of one inode, then gives the inode up.
    private func drain(_ key: InodeKey, _ buffer: WorkerBuffer) {
        while true {
            let batch = state.withLock { s -> [PendingEvent] in
                let b = s.queues.removeValue(forKey: key) ?? []
                if b.isEmpty { s.scheduled.remove(key) }
                return b
            }
            if batch.isEmpty { return }
            locks.withLock(key) {
                for event in batch {
                    handle(event, key: key, buffer: buffer)
                    // Close at once: a lingering event fd counts as an open file and
                    // would make a release that follows the access report "busy".
                    state.withLock { _ = $0.outstanding.removeValue(forKey: ObjectIdentifier(event)) }
                    if event.finish() {
                        log.error("an access by pid \(event.pid) was left unanswered by its recall; denied with EIO")
                    }
                }
            }
        }
    }

    private func handle(_ event: PendingEvent, key: InodeKey, buffer: WorkerBuffer) {
        if event.isAnswered { return }
        let fs = event.filesystem
        var range = event.range
        let opener = event.opener
        // An archiver's (tar…) marker waits until no other process has the file open.
        let markerOnceClosed = opener.map(FullRecallPrograms.markerWaitsForClose) ?? false
        if event.atOpen {
            // Sparse-aware copiers probe holes with lseek(SEEK_DATA), and a loop device
            // reads through the block layer: neither raises an event, so a released file
            // would read as zeros. Bring it all back before the open returns. A file of
            // one block comes back whole at any open: its first read would need that
            // block anyway, and this way it costs one event instead of two.
            if opener == nil && !event.fitsOneBlock {
                event.answer(.allow)
                return
            }
            range = nil
        }
        // The fd names its inode, not its path, in errors: the path (a readlink) is looked
        // up only for a message that is written (`name`).
        let fd: FileDescriptor
        var opened: FileStat?
        if event.fileIsWritable {
            fd = FileDescriptor(rawValue: event.file, path: Self.inodeLabel(key, fs))
        } else {
            do { (fd, opened) = try writableFile(event, key: key) } catch {
                if event.answer(.deny(errno: EIO)) {
                    log.error("recall for pid \(event.pid) cannot open \(FileDescriptor.currentPath(of: event.file)) for writing: \(error); the access fails with EIO")
                }
                return
            }
        }
        defer { if !event.fileIsWritable { fd.close() } }
        let name = { fs.displayPath(ofPrivateFile: fd.rawValue) }
        if let opener, !event.fitsOneBlock {
            log.info("\(opener) (pid \(event.pid)) opens released file \(name()): recalling all of it first")
        }
        let started = monotonicNanos()
        var allowed = false
        let ticket = inFlight.begin(path: { [fdNumber = fd.rawValue] in fs.displayPath(ofPrivateFile: fdNumber) }, pid: event.pid, kind: event.atOpen ? "open" : "access", startedNanos: started)
        defer { inFlight.end(ticket) }
        let metrics = DaemonMetrics.shared
        do {
            let bytes = try recall(fd, range: range, key: key, store: fs.store, readahead: !event.atOpen,
                                   markerOnceClosed: markerOnceClosed, event: event, canShift: fs.canShiftData, ticket: ticket,
                                   knownStat: opened, name: name, buffer: buffer) {
                // From the event's arrival to the data it needs being in: what the program
                // waited. Counted before the answer, so a reader that has its data sees it counted.
                if !event.isAnswered { metrics.recallSeconds.observe(monotonicNanos() &- event.received) }
                allowed = event.answer(.allow)
            }
            if allowed && bytes > 0 {
                let ms = Double(monotonicNanos() - started) / 1e6
                log.debug("recalled \(Units.formatBytes(bytes)) of \(name()) for pid \(event.pid) in \(String(format: "%.1f", ms)) ms")
            }
            if markerOnceClosed {
                // The event's own fd counts as an open of the file: closed first, or the
                // lease `settle` takes could never be had.
                if !event.fileIsWritable { event.finish() }
                if !settle(fd, key: key, store: fs.store) {
                    settleLater(key: key, filesystem: fs, handle: event.handle ?? (try? InodeHandle.of(fd: fd.rawValue, path: fd.path)))
                }
            }
        } catch {
            if event.answer(.deny(errno: error.errno)) {
                metrics.recordRecallFailure(errno: error.errno)
                log.error("recall failed for \(name()) (pid \(event.pid), bytes \(event.range?.description ?? "all")): \(error); the access fails with \(String(cString: strerror(error.errno)))")
            } else if allowed {
                log.warning("read-ahead of \(name()) failed after the access itself was served: \(error)")
            }
        }
    }

    /// What errors of a recall fd say instead of its path: no syscall to make it.
    static func inodeLabel(_ key: InodeKey, _ fs: ManagedFilesystem) -> String {
        "inode \(key.inode) on \(fs.path)"
    }

    /// What an event is: looks at the blocked process (/proc/PID/task/*/syscall) only when
    /// the blocks it needs depend on that, or when the caller must know whether it may cut
    /// the file (`mustKnowCut`); once per event. An open-time recall is a request.
    func nature(of event: PendingEvent, fileSize: Int64, marker: Marker, canShift: Bool, mustKnowCut: Bool) -> EventNature {
        if event.atOpen { return EventNature(intent: .request, mayCut: true) }
        if let known = event.nature.withLock({ $0 }) { return known }
        guard mustKnowCut || AccessPlan.intentMatters(event.range, fileSize: fileSize, marker: marker, canShift: canShift) else {
            return EventNature(intent: .event, mayCut: true)
        }
        let nature = classify(pid: event.pid, event.range, canShift: canShift)
            ?? EventNature(intent: AccessPlan.conservativeIntent(event.range, canShift: canShift), mayCut: true)
        event.nature.withLock { $0 = nature }
        return nature
    }

    /// Looks at what the threads of `pid` are doing (/proc/PID/task/*/syscall).
    /// With `quick`, a process with more than `quickThreadLimit` threads (or one whose
    /// threads cannot be read) gives nil: the event thread leaves it to a worker.
    func classify(pid: Int32, _ range: AccessRange?, canShift: Bool, quick: Bool = false) -> EventNature? {
        let lines = ProcessThreads.syscallLines(pid: pid, limit: quick ? Self.quickThreadLimit : Self.threadLimit)
        if quick && lines == nil { return nil }
        return BlockedThreads.classify(range, states: lines?.map { ThreadState(line: $0) }, canShift: canShift)
    }

    /// The event thread reads at most this many threads' lines (one open and read each).
    static let quickThreadLimit = 16

    /// Processes with more threads than this are not looked at: their events count as
    /// the worst case (to the end of the file), which costs recall, never correctness.
    static let threadLimit = 256

    /// Whether an inode's data may be being written by hsmd right now (a recall queued or
    /// running, or any operation holding its lock): the event loop then lets the engine
    /// answer, in order, instead of answering at once.
    func isBusy(_ key: InodeKey) -> Bool {
        state.withLock { $0.scheduled.contains(key) } || locks.isHeld(key)
    }

    /// The event fd is read-only and on the accessing program's mount, which may be
    /// read-only (an overlayfs lower layer, a read-only bind mount): recall writes through
    /// the same inode opened by handle on hsmd's private mount of the filesystem
    /// (docs/ARCHITECTURE.md, "An event's life"). Once per recall, on the worker: its
    /// open is not seen by hsmd's group (mount ignore mark), so it waits for no answer.
    /// The handle is the one the event log took when the event was read (the same
    /// name_to_handle_at of the same fd), asked again only when it has none. Returns the
    /// statx taken for the inode check, which the recall then starts from.
    private func writableFile(_ event: PendingEvent, key: InodeKey) throws(SystemError) -> (FileDescriptor, FileStat) {
        let handle: InodeHandle
        if let recorded = event.handle { handle = recorded } else {
            handle = try InodeHandle.of(fd: event.file, path: Self.inodeLabel(key, event.filesystem))
        }
        return try Self.openWritable(handle, key: key, filesystem: event.filesystem)
    }

    /// Opens the inode `handle` names read-write on the private mount of `filesystem`, and
    /// checks that it is still the inode `key` (a handle outlives its inode: never write
    /// into another). Returns its statx too.
    static func openWritable(_ handle: InodeHandle, key: InodeKey, filesystem fs: ManagedFilesystem) throws(SystemError) -> (FileDescriptor, FileStat) {
        let label = inodeLabel(key, fs)
        let file = try handle.openFile(mountFD: fs.privateRootFD, flags: .readWrite, what: label)
        let st: FileStat
        do { st = try file.stat() } catch {
            file.close()
            throw error
        }
        guard st.inodeKey == key else {
            file.close()
            throw SystemError(errno: ESTALE, operation: "open_by_handle_at (another inode, handle \(handle))", path: label)
        }
        return (file, st)
    }

    /// The name of `pid` if it is one of full_recall_programs, whose opens wait for the
    /// whole file; nil otherwise. Read once per open event, where the event is read, and
    /// carried in the PendingEvent (/proc/PID/comm: no managed filesystem behind it).
    func fullRecallOpener(pid: Int32) -> String? {
        let program = Self.programName(pid: pid)
        return state.withLock { $0.fullRecallPrograms }.includes(program) ? program : nil
    }

    /// The kernel's name for a process (/proc/PID/comm, at most 15 characters).
    /// One read: comm is at most 16 bytes with its newline.
    static func programName(pid: Int32) -> String {
        ProcessThreads.programName(pid: pid)
    }

    /// Answers events that waited longer than recall_timeout with EIO, so no
    /// program hangs on a store that does not answer.
    private func timeoutLoop() {
        while !state.withLock({ $0.stopping }) {
            usleep(500_000)
            let now = monotonicNanos()
            let (late, timeoutNanos) = state.withLock { s in (s.outstanding.values.filter { now - $0.received > s.timeoutNanos }, s.timeoutNanos) }
            for e in late {
                e.answer(.deny(errno: RecallError.timedOut.errno)) { _ in
                    DaemonMetrics.shared.recordRecallFailure(errno: RecallError.timedOut.errno)
                    self.log.error("recall of \(FileDescriptor.currentPath(of: e.file)) for pid \(e.pid) timed out after \(timeoutNanos / 1_000_000_000) s (recall_timeout); the access fails with EIO")
                }
            }
        }
    }
}
