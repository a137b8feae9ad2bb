import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization

/// Why a recall failed, and the errno the accessing program gets.
enum RecallError: Error, CustomStringConvertible {
    case damagedMarker(String)
    case store(StoreError)
    case system(SystemError)
    case timedOut

    var errno: Int32 {
        switch self {
        case .damagedMarker: return EIO
        case .store(let e): return e.errno
        case .system(let e): return [ENOSPC, EDQUOT].contains(e.errno) ? e.errno : EIO
        // The kernel refuses ETIMEDOUT in FAN_DENY_ERRNO (docs/KERNEL-FACTS.md).
        case .timedOut: return EIO
        }
    }

    var description: String {
        switch self {
        case .damagedMarker(let d): return "damaged marker: \(d)"
        case .store(let e): return e.description
        case .system(let e): return e.description
        case .timedOut: return "recall timed out"
        }
    }
}

/// Brings offline blocks back from the stores.
///
/// Events for one inode queue behind each other and one worker drains them under the
/// inode lock, so overlapping requests coalesce: the second finds its blocks resident.
/// Different inodes recall in parallel on a fixed pool of threads hsmd owns.
final class RecallEngine: Sendable {
    private struct Readahead {
        var nextBlock: Int
        var window: Int
    }

    private struct State {
        var queues: [InodeKey: [PendingEvent]] = [:]
        var scheduled: Set<InodeKey> = []
        var ready: [InodeKey] = []
        var outstanding: [ObjectIdentifier: PendingEvent] = [:]
        var readahead: [InodeKey: Readahead] = [:]
        var stopping = false
    }

    let group: FanotifyGroup
    let filesystems: ManagedFilesystems
    let locks: InodeLocks
    let log: Logger
    private let timeoutNanos: UInt64
    private let readaheadMaxBytes: Int64
    private let fullRecallPrograms: Set<String>
    private let threads: Int
    private let state = Mutex(State())
    /// Test-only: a store that answers this slowly, to exercise recall_timeout.
    static let testStoreDelayMicros: UInt32 = ProcessInfo.processInfo.environment["HSMD_TEST_STORE_DELAY_MS"]
        .flatMap { UInt32($0) }.map { $0 > UInt32.max / 1000 ? UInt32.max : $0 * 1000 } ?? 0
    private let work = DispatchSemaphore(value: 0)

    init(group: FanotifyGroup, filesystems: ManagedFilesystems, locks: InodeLocks, config: Config, log: Logger) {
        self.group = group
        self.filesystems = filesystems
        self.locks = locks
        self.log = log
        timeoutNanos = UInt64(config.recallTimeoutSeconds) * 1_000_000_000
        readaheadMaxBytes = config.readaheadMaxBytes
        fullRecallPrograms = Set(config.fullRecallPrograms)
        threads = config.recallThreads
    }

    func start() {
        for i in 0..<threads { startThread("hsmd-recall\(i)") { self.workerLoop() } }
        startThread("hsmd-timeouts") { self.timeoutLoop() }
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
        while true {
            work.wait()
            let next = state.withLock { s -> (InodeKey?, Bool) in
                (s.ready.isEmpty ? nil : s.ready.removeFirst(), s.stopping)
            }
            if let key = next.0 { drain(key) } else if next.1 { return }
        }
    }

    /// Answers every queued event of one inode, then gives the inode up.
    private func drain(_ key: InodeKey) {
        while true {
            let batch = state.withLock { s -> [PendingEvent] in
                let b = s.queues.removeValue(forKey: key) ?? []
                if b.isEmpty { s.scheduled.remove(key) }
                return b
            }
            if batch.isEmpty { return }
            locks.withLock(key) {
                for event in batch {
                    handle(event, key: key)
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

    private func handle(_ event: PendingEvent, key: InodeKey) {
        if event.isAnswered { return }
        let fs = event.filesystem
        var range = event.range
        var opener: String?
        if event.atOpen {
            // Sparse-aware copiers probe holes with lseek(SEEK_DATA), which raises no
            // event: a released file would look empty to them. Bring it all back first.
            let program = Self.programName(pid: event.pid)
            guard fullRecallPrograms.contains(program) else {
                event.answer(.allow)
                return
            }
            range = 0..<Int64.max
            opener = program
        }
        // The path (a readlink) only for events that recall: it names the file in errors.
        let fd = FileDescriptor(rawValue: event.file, path: FileDescriptor.currentPath(of: event.file))
        if let opener {
            log.info("\(opener) (pid \(event.pid)) opens released file \(fd.path): recalling all of it first")
        }
        let started = monotonicNanos()
        var allowed = false
        do {
            let bytes = try recall(fd, range: range, key: key, store: fs.store, readahead: !event.atOpen) {
                allowed = event.answer(.allow)
            }
            if allowed && bytes > 0 {
                let ms = Double(monotonicNanos() - started) / 1e6
                log.debug("recalled \(Units.formatBytes(bytes)) of \(fd.path) for pid \(event.pid) in \(String(format: "%.1f", ms)) ms")
            }
        } catch {
            if event.answer(.deny(errno: error.errno)) {
                log.error("recall failed for \(fd.path) (pid \(event.pid), bytes \(event.range.lowerBound)..<\(event.range.upperBound)): \(error); the access fails with \(String(cString: strerror(error.errno)))")
            } else if allowed {
                log.warning("read-ahead of \(fd.path) failed after the access itself was served: \(error)")
            }
        }
    }

    /// The kernel's name for a process (/proc/PID/comm, at most 15 characters).
    static func programName(pid: Int32) -> String {
        guard let fd = try? FileDescriptor.open("/proc/\(pid)/comm", [.readOnly]) else { return "" }
        defer { fd.close() }
        let bytes = (try? fd.readAll(limit: 64)) ?? []
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Answers events that waited longer than recall_timeout with EIO, so no
    /// program hangs on a store that does not answer.
    private func timeoutLoop() {
        while !state.withLock({ $0.stopping }) {
            usleep(500_000)
            let now = monotonicNanos()
            let late = state.withLock { s in s.outstanding.values.filter { now - $0.received > timeoutNanos } }
            for e in late {
                e.answer(.deny(errno: RecallError.timedOut.errno)) { _ in
                    self.log.error("recall of \(FileDescriptor.currentPath(of: e.file)) for pid \(e.pid) timed out after \(self.timeoutNanos / 1_000_000_000) s (recall_timeout); the access fails with EIO")
                }
            }
        }
    }

    // MARK: The recall itself

    /// Recalls the offline blocks `range` needs (plus read-ahead) into `fd`, filling holes
    /// only (docs/ARCHITECTURE.md, invariant 1), then persists the marker. The caller holds the inode
    /// lock. Returns the bytes written.
    /// `neededIsIn` is called once the blocks `range` needs are in and recorded, before
    /// any read-ahead: the accessing program can be let go then.
    func recall(_ fd: FileDescriptor, range: Range<Int64>, key: InodeKey, store: any ObjectStore,
                readahead: Bool, neededIsIn: (() -> Void)? = nil) throws(RecallError) -> Int64 {
        let st: FileStat
        let raw: [UInt8]?
        do {
            st = try fd.stat()
            raw = try fd.xattr(Marker.xattrName)
        } catch { throw .system(error) }
        guard let raw else {
            // No marker (removed since the event was read): nothing is offline as far as
            // anyone can know, and the access must not wait for an answer that never comes.
            neededIsIn?()
            return 0
        }
        var marker: Marker
        do { marker = try MarkerCodec.decode(raw) } catch { throw .damagedMarker("\(error)") }
        let layout = marker.layout
        var markerChanged = false

        // Blocks wholly past the current end of file were truncated away: never recall
        // into them, or a later extension would resurrect old data. The block holding
        // the end comes back now (up to the end only), so that past the end there are
        // only real holes.
        let liveBlocks = layout.blocks(covering: 0..<st.size).upperBound
        var eofBlock: [Int] = []
        if st.size < marker.size {
            if !marker.offline.setIndices(in: liveBlocks..<marker.offline.count).isEmpty {
                marker.offline.clear(from: liveBlocks)
                markerChanged = true
            }
            if st.size % layout.blockSize != 0 && marker.offline[liveBlocks - 1] { eofBlock = [liveBlocks - 1] }
        }
        let needed = Array(Set(marker.offline.setIndices(in: layout.blocks(covering: range)) + eofBlock)).sorted()
        var ahead: [Int] = []
        if readahead, let first = needed.first, let last = needed.last {
            let window = nextWindow(key: key, first: first, blockSize: layout.blockSize)
            if window > 0 {
                ahead = marker.offline.setIndices(in: (last + 1)..<min(last + 1 + window, liveBlocks))
            }
            state.withLock { s in
                s.readahead[key, default: Readahead(nextBlock: 0, window: 0)].nextBlock = (ahead.last ?? last) + 1
            }
        }
        if needed.isEmpty && ahead.isEmpty {
            if markerChanged { try persist(marker, fd) }
            neededIsIn?()
            return 0
        }

        if Self.testStoreDelayMicros > 0 { usleep(Self.testStoreDelayMicros) }
        let record: ObjectRecord
        let reader: any ObjectReader
        do throws(StoreError) {
            record = try store.record(marker.object)
            if let why = record.mismatch(with: marker) {
                throw StoreError.badRecord(marker.object, path: "record of \(fd.path)", reason: why)
            }
            reader = try store.reader(for: record)
        } catch {
            try markDamaged(&marker, fd, error)
            throw .store(error)
        }
        defer { reader.close() }
        let wasClean = st.size == marker.size && st.mtimeNs == marker.mtimeNs
        let objectData = record.dataExtents
        var written: Int64 = 0
        /// Data written since the last fdatasync: the marker may say "local" only for
        /// data on disk (docs/ARCHITECTURE.md, invariant 8), or a power cut could leave holes that the
        /// marker calls resident, and they would read as zeros.
        var unsynced = false

        /// Makes the data durable, then writes the marker.
        func persistDurably() throws(RecallError) {
            if unsynced {
                do { try fd.syncData() } catch { throw .system(error) }
                unsynced = false
            }
            try persist(marker, fd)
        }
        // A write that fails (ENOSPC) still changes the mtime, as does punching it back.
        var touched = false

        /// Writes one verified block into the holes of the file.
        func place(_ b: Int, _ buffer: UnsafeMutableRawBufferPointer) throws(RecallError) {
            let block = layout.range(ofBlock: b)
            let live = block.lowerBound..<min(block.upperBound, st.size)
            var filled: [Range<Int64>] = []
            do {
                let holes = subtract(try fd.dataExtents(in: live), from: live)
                for hole in holes {
                    for piece in intersect(hole, objectData) {
                        filled.append(piece)
                        touched = true
                        let from = Int(piece.lowerBound - block.lowerBound), to = Int(piece.upperBound - block.lowerBound)
                        try fd.write(UnsafeRawBufferPointer(rebasing: buffer[from..<to]), at: piece.lowerBound)
                        written += piece.upperBound - piece.lowerBound
                        unsynced = true
                    }
                }
            } catch {
                reopenHoles(filled, fd, fileSize: st.size, object: marker.object)
                throw RecallError.system(error)
            }
            marker.offline[b] = false
        }

        /// Copies blocks in, fills holes only, and leaves the file clean; the caller then
        /// makes it durable and writes the marker.
        func fill(_ blocks: [Int]) throws(RecallError) {
            do {
                if blocks.count > 1 {
                    try BlockPipeline(blocks: blocks, reader: reader, blockSize: Int(layout.blockSize)).run { b, data in
                        try place(b, data)
                        // Start writing the block to disk now, without waiting, so the
                        // fdatasync before the marker finds little left to do.
                        let r = layout.range(ofBlock: b)
                        try? fd.writeBack(r.lowerBound..<min(r.upperBound, st.size), wait: false)
                        // A sequential reader is usually waiting for the next block: let it
                        // go now rather than after the whole window (the marker follows at
                        // the end of the window, once the data is durable).
                        answerSatisfied(key, marker, fileSize: st.size)
                    }
                } else if let b = blocks.first {
                    // Allocated here, not for every recall: the pipeline brings its own
                    // buffers, and a block-sized one per recall thread adds up.
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
                    defer { buffer.deallocate() }
                    _ = try reader.read(block: b, into: buffer)
                    try place(b, buffer)
                }
                marker.flags.remove(.objectDamaged)
            } catch {
                let failure: RecallError
                if let e = error as? StoreError {
                    // Flagged here, written below after the fdatasync: the same marker
                    // also clears the bits of the blocks placed before the failure.
                    if Self.meansDamaged(e) { marker.flags.insert(.objectDamaged) }
                    failure = .store(e)
                } else if let e = error as? RecallError {
                    failure = e
                } else if let e = error as? SystemError {
                    failure = .system(e)
                } else {
                    failure = .damagedMarker("unexpected error: \(error)")
                }
                // Keep what came back, and do not let a failed recall make the file look
                // modified (a partly written block stays offline: recall fills holes only).
                if wasClean && touched { try? fd.setModificationTime(marker.mtimeNs) }
                try? persistDurably()
                throw failure
            }
            do {
                // Recall is not a modification: keep the mtime the file had, so it stays
                // clean. A file already dirty keeps its own new mtime.
                if wasClean && written > 0 { try fd.setModificationTime(marker.mtimeNs) }
            } catch { throw .system(error) }
        }

        // What the access needs first; the program goes on while the read-ahead follows.
        // An access may go on before the data is durable: the marker, written only after
        // the fdatasync, still calls the blocks offline until then, and a recall after a
        // crash fills only what is still a hole. A whole-file recall at open waits for the
        // marker: writing it changes the ctime, which a program that has just opened the
        // file (tar) would take for a change under its feet.
        try fill(needed)
        if !readahead { try persistDurably() }
        neededIsIn?()
        if readahead { try persistDurably() }
        if let from = ahead.first, let to = ahead.last {
            // After the answer: asking the kernel to read ahead submits I/O synchronously.
            reader.prefetch(blocks: from..<to + 1)
            try fill(ahead)
            try persistDurably()
        }
        if marker.offline.isEmpty { try? group.ignore(fileAt: fd.rawValue, path: fd.path) }
        return written
    }

    /// A failed write (ENOSPC) can leave pages allocated but never filled; recall fills
    /// holes only, so those zeros would later pass for data. Punch back what this attempt
    /// was filling. At EOF the punch runs past the end: one ending mid-page zeroes
    /// instead of freeing.
    private func reopenHoles(_ ranges: [Range<Int64>], _ fd: FileDescriptor, fileSize: Int64, object: ObjectID) {
        for r in ranges {
            let end = r.upperBound >= fileSize ? (r.upperBound + 4095) / 4096 * 4096 : r.upperBound
            do { try fd.punchHole(offset: r.lowerBound, length: end - r.lowerBound) } catch {
                log.critical("\(fd.path): after a failed recall write, bytes \(r.lowerBound)..<\(end) could not be punched back to a hole (\(error)); they may read as zeros; restore them by hand from object \(object)")
            }
        }
    }

    /// Allows the queued accesses of `key` whose blocks are all in already. Only plain
    /// accesses inside the file: anything reaching past its end waits for the worker.
    private func answerSatisfied(_ key: InodeKey, _ marker: Marker, fileSize: Int64) {
        let ready = state.withLock { s in
            (s.queues[key] ?? []).filter { e in
                !e.atOpen && !e.isAnswered && e.range.upperBound <= fileSize && fileSize >= marker.size
                    && marker.offline.setIndices(in: marker.layout.blocks(covering: e.range)).isEmpty
            }
        }
        for e in ready { e.answer(.allow) }
    }

    /// Sequential readers get a window that doubles up to readahead_max; a jump resets it.
    private func nextWindow(key: InodeKey, first: Int, blockSize: Int64) -> Int {
        let maxBlocks = max(Int(readaheadMaxBytes / blockSize), 0)
        return state.withLock { s in
            if s.readahead.count > 65536 { s.readahead.removeAll() }
            var r = s.readahead[key] ?? Readahead(nextBlock: -1, window: 0)
            r.window = first == r.nextBlock ? min(max(r.window * 2, 1), maxBlocks) : 0
            s.readahead[key] = r
            return r.window
        }
    }

    private func persist(_ marker: Marker, _ fd: FileDescriptor) throws(RecallError) {
        do {
            try fd.setXattr(Marker.xattrName, MarkerCodec.encode(marker))
        } catch let e as SystemError {
            throw .system(e)
        } catch {
            throw .damagedMarker("\(error)")
        }
    }

    /// Records in the marker that the object failed, so `status` shows `damaged`.
    /// Only before anything was written: the marker is persisted without a sync.
    private func markDamaged(_ marker: inout Marker, _ fd: FileDescriptor, _ error: StoreError) throws(RecallError) {
        if Self.meansDamaged(error) && !marker.flags.contains(.objectDamaged) {
            marker.flags.insert(.objectDamaged)
            try? persist(marker, fd)
        }
    }

    /// The object itself is bad (not a passing I/O error): `status` shows `damaged`.
    static func meansDamaged(_ error: StoreError) -> Bool {
        switch error {
        case .objectMissing, .corrupt, .badRecord: return true
        default: return false
        }
    }
}
