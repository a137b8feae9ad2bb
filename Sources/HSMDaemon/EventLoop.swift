import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// The one thread that reads the pre-content group. It does no file I/O of its own: it
/// reads the marker xattr, answers hsmd's own events, resident files and ranges that are
/// already local at once, and hands the rest to the recall engine.
final class EventLoop: Sendable {
    let group: FanotifyGroup
    let engine: RecallEngine
    let log: Logger
    private let ownPid = getpid()
    /// Last time the loop finished a batch, and whether it is waiting in read(): together
    /// they tell the systemd watchdog whether the loop is alive.
    let heartbeat = Atomic<UInt64>(monotonicNanos())
    let waiting = Atomic<Bool>(false)
    let eventsSeen = Atomic<UInt64>(0)
    private let stopping = Atomic<Bool>(false)
    private let thread = Atomic<UInt>(0)
    /// Interrupts the blocking read on stop (handler installed without SA_RESTART).
    static let wakeupSignal = SIGUSR2

    init(group: FanotifyGroup, engine: RecallEngine, log: Logger) {
        self.group = group
        self.engine = engine
        self.log = log
    }

    func start() throws(SystemError) {
        try FanotifyGroup.installWakeupHandler(signal: Self.wakeupSignal)
        startThread("hsmd-events") { self.run() }
    }

    var isAlive: Bool {
        waiting.load(ordering: .relaxed) || monotonicNanos() - heartbeat.load(ordering: .relaxed) < 10_000_000_000
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        let t = thread.load(ordering: .acquiring)
        if t != 0 { pthread_kill(pthread_t(t), Self.wakeupSignal) }
    }

    /// One blocking read per wake-up (no poll): this is the round trip every first
    /// access of a file pays.
    private func run() {
        thread.store(UInt(pthread_self()), ordering: .releasing)
        let reader = FanotifyReader(group: group)
        var xattrBuffer = [UInt8](repeating: 0, count: 4096)
        while !stopping.load(ordering: .acquiring) {
            waiting.store(true, ordering: .relaxed)
            let events: [FanotifyEvent]
            do { events = try reader.next() } catch {
                waiting.store(false, ordering: .relaxed)
                if error.errno == EAGAIN || error.errno == EINTR { continue }
                log.critical("reading the fanotify group failed: \(error)")
                return
            }
            waiting.store(false, ordering: .relaxed)
            eventsSeen.add(UInt64(events.count), ordering: .relaxed)
            for e in events { dispatch(e, &xattrBuffer) }
            heartbeat.store(monotonicNanos(), ordering: .relaxed)
        }
    }

    private func dispatch(_ e: FanotifyEvent, _ xattrBuffer: inout [UInt8]) {
        if e.isOverflow {
            log.warning("fanotify queue overflowed")
            return
        }
        if e.fd < 0 {
            // FAN_REPORT_FD_ERROR: the kernel could not open the file for us (e.g.
            // ETXTBSY for a running executable, EROFS through a read-only mount). It
            // denies such a permission event itself; there is nothing to answer.
            log.error("pre-access event for pid \(e.pid) without a file: \(String(cString: strerror(-e.fd)))")
            return
        }
        if e.pid == ownPid || !(e.isPreAccess || e.isOpenPermission) {
            answer(e, .allow)
            return
        }
        let raw: [UInt8]?
        do {
            raw = try FileDescriptor(rawValue: e.fd, path: "").xattr(Marker.xattrName, into: &xattrBuffer).map { Array(xattrBuffer[0..<$0]) }
        } catch {
            log.error("cannot read the marker of \(FileDescriptor.currentPath(of: e.fd)): \(error); the access fails with EIO")
            answer(e, .deny(errno: EIO))
            return
        }
        guard let raw else {
            ignoreFurtherEvents(e.fd)
            answer(e, .allow)
            return
        }
        let marker: Marker
        do { marker = try MarkerCodec.decode(raw) } catch {
            log.error("damaged marker on \(FileDescriptor.currentPath(of: e.fd)): \(error); the access fails with EIO")
            answer(e, .deny(errno: EIO))
            return
        }
        if marker.offline.isEmpty {
            ignoreFurtherEvents(e.fd)
            answer(e, .allow)
            return
        }
        let st: FileStat
        do { st = try FileDescriptor(rawValue: e.fd, path: "").stat() } catch {
            answer(e, .deny(errno: EIO))
            return
        }
        if e.isOpenPermission {
            // Opening a file with offline blocks: the engine decides (by program) whether
            // the whole file must come back before the open returns.
            engine.submit(PendingEvent(fd: e.fd, pid: e.pid, range: 0..<Int64.max, atOpen: true), key: st.inodeKey)
            return
        }
        let range = e.range ?? 0..<Int64.max
        // A file cut below its archived size has offline bits past its end: the engine
        // must drop them before anything (this access may extend the file) lets the old
        // data come back into what are now real holes.
        let truncated = st.size < marker.size && !marker.offline.setIndices(in: Int(st.size >> Int64(marker.blockShift))..<marker.offline.count).isEmpty
        if !truncated && marker.offline.setIndices(in: marker.layout.blocks(covering: range)).isEmpty {
            answer(e, .allow)
            return
        }
        engine.submit(PendingEvent(fd: e.fd, pid: e.pid, range: range), key: st.inodeKey)
    }

    /// Resident inodes get an evictable ignore mark: their later accesses cost no trip
    /// to userspace. The mark goes before the fd closes, so no release can slip between.
    private func ignoreFurtherEvents(_ fd: Int32) {
        try? group.ignore(fileAt: fd, path: "")
    }

    private func answer(_ e: FanotifyEvent, _ r: FanotifyResponse) {
        if group.respondOrFallBack(to: e.fd, r) == nil {
            log.error("fanotify response for pid \(e.pid) failed: \(String(cString: strerror(errno)))")
        }
        close(e.fd)
    }
}
