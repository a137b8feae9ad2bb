import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// At start, walks each managed filesystem on an idle-priority thread and puts hsmd's
/// ignore mark on resident files, so that their first access after a start costs no
/// round trip to hsmd (the event loop would otherwise mark each on its first open).
///
/// Safe against release: the check (no marker, or no offline block) and the mark happen
/// under the inode's lock, which release holds from removing the mark until it is done;
/// a mark placed before a release is removed by it. The file is named through an O_PATH
/// descriptor, so the mark lands on the inode that was checked even if its name changes.
final class ResidentPremarker: Sendable {
    private let group: FanotifyGroup
    private let filesystems: [ManagedFilesystem]
    private let locks: InodeLocks
    private let limit: Int
    private let log: Logger
    private let stopping = Atomic<Bool>(false)
    let marked = Atomic<Int>(0)
    let finished = Atomic<Bool>(false)

    init(group: FanotifyGroup, filesystems: [ManagedFilesystem], locks: InodeLocks, limit: Int, log: Logger) {
        self.group = group
        self.filesystems = filesystems
        self.locks = locks
        self.limit = limit
        self.log = log
    }

    func start() {
        guard limit > 0 else { finished.store(true, ordering: .releasing); return }
        startThread("hsmd-premark") { self.run() }
    }

    func stop() { stopping.store(true, ordering: .releasing) }

    /// "done, N resident files marked", "walking, …", or "off", for `hsmctl doctor`.
    var summary: String {
        if limit == 0 { return "off" }
        let n = marked.load(ordering: .relaxed)
        return finished.load(ordering: .acquiring) ? "done, \(n) resident files marked" : "walking, \(n) resident files marked so far"
    }

    private func run() {
        defer { finished.store(true, ordering: .releasing) }
        do { try setThreadIdlePriority() } catch {
            log.warning("resident-file walk runs at normal priority: \(error)")
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        for fs in filesystems {
            let started = monotonicNanos()
            var seen = 0, markedHere = 0, offline = 0
            var unreadable: [WalkFailure] = []
            TreeWalker.walkWhile(fs.path, device: fs.device, failed: { unreadable.append($0) }) { path, st in
                if stopping.load(ordering: .relaxed) { return false }
                guard st.fileType == .regular else { return true }
                seen += 1
                switch mark(path, &buffer) {
                case .marked:
                    markedHere += 1
                    marked.add(1, ordering: .relaxed)
                case .offline: offline += 1
                case .skipped: break
                }
                return seen < limit
            }
            if stopping.load(ordering: .relaxed) { return }
            let ms = (monotonicNanos() - started) / 1_000_000
            log.info("premarked \(markedHere) resident files of \(fs.path) in \(ms) ms (\(seen) files looked at\(seen >= limit ? ", the premark_files limit" : ""); \(offline) with offline data left to events)")
            // Files not premarked still get their events (slower, never wrong).
            if let first = unreadable.first {
                log.warning("resident-file walk of \(fs.path): \(unreadable.count) entries could not be read and were not premarked (first: \(first.path): \(first.reason))")
            }
        }
    }

    private enum Outcome { case marked, offline, skipped }

    private func mark(_ path: String, _ buffer: inout [UInt8]) -> Outcome {
        // Anything unexpected leaves the file to the event loop, which decides on access.
        guard let ref = try? InodeReference(path: path), let st = try? ref.stat(), st.fileType == .regular else { return .skipped }
        return locks.withLock(st.inodeKey) { () -> Outcome in
            let length: Int?
            do { length = try ref.xattr(Marker.xattrName, into: &buffer) } catch { return .skipped }
            if let length {
                guard let marker = try? MarkerCodec.decode(Array(buffer[0..<length])) else { return .skipped }
                if !marker.offline.isEmpty { return .offline }
            }
            do { try group.ignore(ref) } catch { return .skipped }
            return .marked
        }
    }
}
