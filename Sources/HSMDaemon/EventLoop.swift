import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// The one thread that reads the pre-content group. It does no file I/O of its own: it
/// reads the marker xattr, answers hsmd's own events, resident files and ranges that are
/// already local at once, and hands the rest to the recall engine. Every permission
/// event is on record in the event log before it is looked at (docs/ARCHITECTURE.md).
final class EventLoop: Sendable {
    let group: FanotifyGroup
    let eventLog: EventLog
    let engine: RecallEngine
    let filesystems: ManagedFilesystems
    let log: Logger
    private let ownPid = getpid()
    /// When the batch being handled was read, and whether the loop is waiting in read():
    /// together they tell the systemd watchdog whether the loop is alive.
    let batchStarted = Atomic<UInt64>(monotonicNanos())
    let waiting = Atomic<Bool>(false)
    let eventsSeen = Atomic<UInt64>(0)
    private let stopping = Atomic<Bool>(false)
    private let thread = Atomic<UInt>(0)
    private let exited = Atomic<Bool>(false)
    /// A batch handled for longer than this means the loop is stuck: every step of a
    /// batch is a syscall on an fd the kernel just opened, never a wait on I/O.
    static let stuckAfterNanos: UInt64 = 10_000_000_000
    /// Interrupts the blocking read on stop (handler installed without SA_RESTART).
    static let wakeupSignal = SIGUSR2
    /// Test-only: while this file exists the loop stalls in its next batch, events read
    /// and unanswered, as a hung hsmd would (for the watchdog and restart tests).
    private let stallFile = ProcessInfo.processInfo.environment["HSMD_TEST_STALL_FILE"]

    init(group: FanotifyGroup, eventLog: EventLog, engine: RecallEngine, filesystems: ManagedFilesystems, log: Logger) {
        self.group = group
        self.eventLog = eventLog
        self.engine = engine
        self.filesystems = filesystems
        self.log = log
    }

    func start() throws(SystemError) {
        try FanotifyGroup.installWakeupHandler(signal: Self.wakeupSignal)
        if let path = ProcessInfo.processInfo.environment["HSMD_TEST_DIE_AFTER_READ_FILE"], !path.isEmpty {
            log.warning("test switch HSMD_TEST_DIE_AFTER_READ_FILE: hsmd kills itself after reading a permission event, before recording it, while \(path) exists")
            EventLog.testDieAfterRead(whilePresent: path)
        }
        startThread("hsmd-events") { self.run() }
    }

    /// Alive: waiting for events (idle), or in a batch that started recently.
    var isAlive: Bool {
        if exited.load(ordering: .acquiring) { return false }
        if waiting.load(ordering: .acquiring) { return true }
        return monotonicNanos() &- batchStarted.load(ordering: .acquiring) < Self.stuckAfterNanos
    }

    /// Stops reading: events still queued stay in the kernel for a successor (or are
    /// allowed when the group's last holder closes it).
    func stop() {
        stopping.store(true, ordering: .releasing)
        let t = thread.load(ordering: .acquiring)
        if t != 0 { pthread_kill(pthread_t(t), Self.wakeupSignal) }
    }

    /// One blocking read per wake-up (no poll): this is the round trip every first
    /// access of a file pays.
    private func run() {
        thread.store(UInt(pthread_self()), ordering: .releasing)
        defer { exited.store(true, ordering: .releasing) }
        let reader = FanotifyReader(group: group, log: eventLog)
        var xattrBuffer = [UInt8](repeating: 0, count: 4096)
        while !stopping.load(ordering: .acquiring) {
            waiting.store(true, ordering: .releasing)
            let events: [FanotifyEvent]
            do { events = try reader.next() } catch {
                batchStarted.store(monotonicNanos(), ordering: .releasing)
                waiting.store(false, ordering: .releasing)
                if error.errno == EAGAIN || error.errno == EINTR { continue }
                log.critical("reading the fanotify group failed: \(error)")
                return
            }
            batchStarted.store(monotonicNanos(), ordering: .releasing)
            waiting.store(false, ordering: .releasing)
            if let stallFile, access(stallFile, F_OK) == 0 {
                log.warning("test switch HSMD_TEST_STALL_FILE: the event loop stalls with \(events.count) event(s) unanswered")
                while true { sleep(60) }
            }
            eventsSeen.add(UInt64(events.count), ordering: .relaxed)
            for e in events { dispatch(e, &xattrBuffer) }
        }
    }

    private func dispatch(_ e: FanotifyEvent, _ xattrBuffer: inout [UInt8]) {
        if e.isOverflow {
            DaemonMetrics.shared.eventOverflow.add()
            log.warning("fanotify queue overflowed")
            return
        }
        if e.fd < 0 {
            // FAN_REPORT_FD_ERROR: the kernel could not open the file for us (event fds
            // are read-only, so no EROFS or ETXTBSY: e.g. EMFILE). It denies such a
            // permission event itself; there is nothing to answer.
            if e.slot >= 0 { eventLog.done(e.slot) }
            DaemonMetrics.shared.eventNoFD.add()
            log.error("pre-access event for pid \(e.pid) without a file: \(String(cString: strerror(-e.fd)))")
            return
        }
        guard e.isPermission else {
            close(e.fd)
            return
        }
        // From here the event owns its fd and is answered exactly once (EIO if dropped).
        var event = PermissionEvent(number: e.fd, pid: e.pid, group: group, log: eventLog, slot: e.slot)
        let m = DaemonMetrics.shared
        if e.pid == ownPid {
            m.eventOwnPid.add()
            answer(&event, .allow)
            return
        }
        let raw: [UInt8]?
        do {
            raw = try FileDescriptor(rawValue: e.fd, path: "").xattr(Marker.xattrName, into: &xattrBuffer).map { Array(xattrBuffer[0..<$0]) }
        } catch {
            log.error("cannot read the marker of \(FileDescriptor.currentPath(of: e.fd)): \(error); the access fails with EIO")
            m.eventDenied.add()
            answer(&event, .deny(errno: EIO))
            return
        }
        guard let raw else {
            m.eventResident.add()
            ignoreFurtherEvents(e.fd)
            answer(&event, .allow)
            return
        }
        let marker: Marker
        do { marker = try MarkerCodec.decode(raw) } catch {
            log.error("damaged marker on \(FileDescriptor.currentPath(of: e.fd)): \(error); the access fails with EIO")
            m.eventDenied.add()
            answer(&event, .deny(errno: EIO))
            return
        }
        if marker.offline.isEmpty {
            m.eventResident.add()
            ignoreFurtherEvents(e.fd)
            answer(&event, .allow)
            return
        }
        // The event log took this statx when it recorded the event.
        let st: FileStat
        if let recorded = e.stat {
            st = recorded
        } else {
            do { st = try FileDescriptor(rawValue: e.fd, path: "").stat() } catch {
                m.eventDenied.add()
                answer(&event, .deny(errno: EIO))
                return
            }
        }
        guard let fs = filesystems.filesystem(ofOpenFile: e.fd, device: st.device) else {
            // Offline data on a filesystem hsmd cannot place: never allow over it.
            log.error("\(FileDescriptor.currentPath(of: e.fd)) has offline data but is on no managed filesystem hsmd can identify (device \(st.device >> 32):\(st.device & 0xffff_ffff)); the access fails with EIO")
            m.eventDenied.add()
            answer(&event, .deny(errno: EIO))
            return
        }
        if e.isOpenPermission {
            // Opening a file with offline blocks: the whole file comes back before the open
            // returns if its program is one of full_recall_programs or the file is a single
            // block. The program's name is read here, once, and goes with the event.
            let oneBlock = marker.size <= marker.layout.blockSize && st.size <= marker.layout.blockSize
            // A larger file's open needs nothing back unless its program is one of
            // full_recall_programs (/proc/PID/comm: no managed filesystem, as below): let
            // it go here, without a hand-off to a worker. Not while hsmd writes into the
            // inode: an open(O_TRUNC) raises no event of its own (docs/KERNEL-FACTS.md), so
            // its cut must wait for those writes, as the engine's queue makes it.
            let opener = engine.fullRecallOpener(pid: e.pid)
            if !oneBlock && opener == nil && !engine.isBusy(st.inodeKey) {
                m.eventAllowedInline.add()
                answer(&event, .allow)
                return
            }
            m.eventOpen.add()
            engine.submit(PendingEvent(event, range: nil, atOpen: true, opener: opener, fitsOneBlock: oneBlock, filesystem: fs,
                                       handle: eventLog.handle(ofSlot: e.slot)), key: st.inodeKey)
            return
        }
        // A file cut below its archived size has offline bits past its end: the engine
        // must drop them before anything (this access may extend the file) lets the old
        // data come back into what are now real holes.
        let truncated = st.size < marker.size && !marker.offline.setIndices(in: Int(st.size >> Int64(marker.blockShift))..<marker.offline.count).isEmpty
        // The event does not say what it is (a read, a write, a truncation and a shifting
        // fallocate look the same): the worst case, unless the blocked process shows less.
        var nature: EventNature?
        if !truncated && AccessPlan.neededBlocks(e.range, .event, fileSize: st.size, marker: marker).isEmpty {
            let worst = AccessPlan.conservativeIntent(e.range, canShift: fs.canShiftData)
            // While hsmd writes into the inode, an access that may cut the file must wait
            // for the engine: its writes would undo the cut.
            let busy = engine.isBusy(st.inodeKey)
            if !busy && AccessPlan.neededBlocks(e.range, worst, fileSize: st.size, marker: marker).isEmpty {
                m.eventAllowedInline.add()
                answer(&event, .allow)
                return
            }
            // /proc/PID/task/*/syscall touches no managed filesystem and cannot wait on an
            // event (docs/KERNEL-FACTS.md): safe on this thread, about 10 µs for a process
            // with one thread. Processes with many threads are left to the engine.
            if let n = engine.classify(pid: e.pid, e.range, canShift: fs.canShiftData, quick: true) {
                if AccessPlan.neededBlocks(e.range, n.intent, fileSize: st.size, marker: marker).isEmpty && (!busy || !n.mayCut) {
                    m.eventAllowedInline.add()
                    answer(&event, .allow)
                    return
                }
                nature = n
            }
        }
        m.eventAccess.add()
        engine.submit(PendingEvent(event, range: e.range, atOpen: false, filesystem: fs, handle: eventLog.handle(ofSlot: e.slot),
                                   nature: nature), key: st.inodeKey)
    }

    /// Resident inodes get an evictable ignore mark: their later accesses cost no trip
    /// to userspace. The mark goes before the fd closes, so no release can slip between.
    private func ignoreFurtherEvents(_ fd: Int32) {
        try? group.ignore(fileAt: fd, path: "")
    }

    private func answer(_ event: inout PermissionEvent, _ r: FanotifyResponse) {
        if case .failure(let error)? = event.respond(r) {
            log.error("fanotify response for pid \(event.pid) failed: \(error)")
        }
    }
}
