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
    private let stopPipe: (read: Int32, write: Int32)
    /// Last time the loop was alive, for the systemd watchdog.
    let heartbeat = Atomic<UInt64>(monotonicNanos())
    let eventsSeen = Atomic<UInt64>(0)

    init(group: FanotifyGroup, engine: RecallEngine, log: Logger) {
        self.group = group
        self.engine = engine
        self.log = log
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        stopPipe = (fds[0], fds[1])
    }

    func start() {
        startThread("hsmd-events") { self.run() }
    }

    func stop() {
        var b: UInt8 = 1
        _ = write(stopPipe.write, &b, 1)
    }

    private func run() {
        let reader = FanotifyReader(group: group)
        var fds = [pollfd(fd: group.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)]
        while true {
            heartbeat.store(monotonicNanos(), ordering: .relaxed)
            let n = poll(&fds, 2, 1000)
            if n < 0 && errno != EINTR {
                log.critical("poll on the fanotify group failed: \(String(cString: strerror(errno)))")
                return
            }
            if fds[1].revents != 0 { return }
            if n <= 0 || fds[0].revents == 0 { continue }
            let events: [FanotifyEvent]
            do { events = try reader.next() } catch {
                if error.errno == EAGAIN || error.errno == EINTR { continue }
                log.critical("reading the fanotify group failed: \(error)")
                return
            }
            eventsSeen.add(UInt64(events.count), ordering: .relaxed)
            for e in events { dispatch(e) }
        }
    }

    private func dispatch(_ e: FanotifyEvent) {
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
        do { raw = try FileDescriptor(rawValue: e.fd, path: "").xattr(Marker.xattrName) } catch {
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
