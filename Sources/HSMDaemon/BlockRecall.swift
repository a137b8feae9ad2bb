import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization

// RecallEngine: the recall itself (offline blocks from the store into holes, then the marker).
extension RecallEngine {
    /// Recalls the offline blocks `range` needs (plus read-ahead) into `fd`, filling holes
    /// only (docs/ARCHITECTURE.md, invariant 1), then persists the marker. The caller holds the inode
    /// lock. Returns the bytes written.
    /// `neededIsIn` is called once the blocks `range` needs are in and recorded, before
    /// any read-ahead: the accessing program can be let go then.
    /// `range` nil is the whole file. `event` is the pre-access event being served (what
    /// it needs: AccessPlan); nil for hsmctl recall and archive, which want exactly `range`.
    /// `markerOnceClosed`: the data is only brought in; its fdatasync and the marker are
    /// left to `settle` (RecallSettle.swift), so the file is synced once, just before its
    /// marker. `localOnly`: nothing is read from the store, and the caller has made the
    /// file durable under this inode lock (`settle`): blocks found whole become resident
    /// with no second fdatasync.
    func recall(_ fd: FileDescriptor, range: AccessRange?, key: InodeKey, store: any ObjectStore,
                readahead: Bool, markerOnceClosed: Bool = false, localOnly: Bool = false, event: PendingEvent? = nil, canShift: Bool = true,
                ticket: RecallTicket? = nil, knownStat: FileStat? = nil, name: (() -> String)? = nil, buffer: WorkerBuffer? = nil,
                neededIsIn: (() -> Void)? = nil) throws(RecallError) -> Int64 {
        let st: FileStat
        let raw: [UInt8]?
        do {
            // `knownStat`: the caller's statx of this fd, taken under the same inode lock.
            if let knownStat { st = knownStat } else { st = try fd.stat() }
            raw = try fd.xattr(Marker.xattrName)
        } catch { throw .system(error) }
        /// The file's name for messages (a readlink when the fd's own label names an inode).
        let fileName = name ?? { fd.path }
        guard let raw else {
            // No marker (removed since the event was read): nothing is offline as far as
            // anyone can know, and the access must not wait for an answer that never comes.
            neededIsIn?()
            return 0
        }
        var marker: Marker
        do { marker = try MarkerCodec.decode(raw) } catch { throw .damagedMarker("\(error)") }
        let layout = marker.layout
        // What the catalog's row of this file needs, from what the event already carries
        // (its filesystem, the handle the event log recorded, the stat taken above): no
        // syscall per marker write. hsmctl recall and archive look it up once here.
        let catalogFile: CatalogFileRef? = catalog == nil ? nil : {
            guard let fs = event?.filesystem ?? filesystems.filesystem(ofOpenFile: fd.rawValue, device: st.device),
                  let handle = event?.handle ?? (try? InodeHandle.of(fd: fd.rawValue, path: fd.path)) else { return nil }
            return CatalogFileRef(fs: fs, handle: handle, stat: st)
        }()
        var markerChanged = false
        let markerAsRead = marker

        // Blocks wholly past the current end of file were truncated away: never recall
        // into them, or a later extension would resurrect old data. The block holding
        // the end comes back now (up to the end only; AccessPlan asks for it), so that
        // past the end there are only real holes.
        let liveBlocks = layout.blocks(covering: 0..<st.size).upperBound
        if st.size < marker.size && !marker.offline.setIndices(in: liveBlocks..<marker.offline.count).isEmpty {
            marker.offline.clear(from: liveBlocks)
            markerChanged = true
        }
        let intent = event.map { nature(of: $0, fileSize: st.size, marker: marker, canShift: canShift, mustKnowCut: false).intent } ?? .request
        let needed = AccessPlan.neededBlocks(range, intent, fileSize: st.size, marker: marker)
        var ahead: [Int] = []
        var window = 0
        // Read-ahead follows the access's own blocks, not the end-of-file block it may add.
        let own = layout.blocks(covering: (range ?? .wholeFile).bytes(fileSize: st.size))
        let core = needed.filter { own.contains($0) }
        if readahead, let first = core.first, let last = core.last {
            window = nextWindow(key: key, first: first, offset: (range ?? .wholeFile).offset, blockSize: layout.blockSize)
            if window > 0 {
                ahead = marker.offline.setIndices(in: (last + 1)..<min(last + 1 + window, liveBlocks))
                // Read-ahead goes on after the access is let go: not for one that may cut
                // the file, whose cut the read-ahead's writes would undo.
                if !ahead.isEmpty, let event,
                   nature(of: event, fileSize: st.size, marker: marker, canShift: canShift, mustKnowCut: true).mayCut {
                    ahead = []
                }
            }
            state.withLock { s in
                s.readahead[key, default: Readahead(nextBlock: 0, window: 0)].nextBlock = (ahead.last ?? last) + 1
            }
        }
        if needed.isEmpty && ahead.isEmpty {
            if markerChanged { try persist(marker, fd, file: catalogFile) }
            neededIsIn?()
            return 0
        }

        let record: ObjectRecord
        do throws(StoreError) {
            record = try store.record(marker.object)
            if let why = record.mismatch(with: marker) {
                throw StoreError.badRecord(marker.object, path: "record of \(fileName())", reason: why)
            }
        } catch {
            try markDamaged(&marker, fd, error)
            throw .store(error)
        }
        // The object is opened only once a block needs data from it: bytes already local
        // (pages a partial recall brought back) read right with the store unreachable.
        var openedReader: (any ObjectReader)?
        func storeReader() throws(StoreError) -> any ObjectReader {
            if let openedReader { return openedReader }
            // A recall that goes to the store: counted before any of its data is written.
            DaemonMetrics.shared.recalls.add()
            if Self.testStoreDelayMicros > 0 { usleep(Self.testStoreDelayMicros) }
            let r = try store.reader(for: record)
            openedReader = r
            return r
        }
        defer { openedReader?.close() }
        // A random access (no read-ahead window, not reading on from where the last one
        // ended) into an object with chunk checksums brings back only the chunks it
        // touches of the blocks it reads; the block stays offline ("may have holes") until
        // nothing of it is missing. Whole blocks still for a block holding the end of
        // the file inside it (an extension or O_APPEND rewrites its last page), a file cut below its
        // archived size, and anything but a plain access (a request, a truncation, an
        // access that may shift data, one that may make holes: BlockedThreads).
        var partial: [Int] = []
        let accessBytes = (range ?? .wholeFile).bytes(fileSize: st.size)
        if readahead, let event, record.chunkShift != nil, intent == .event, window == 0, ahead.isEmpty,
           st.size >= marker.size, range != nil,
           state.withLock({ $0.readahead[key]?.nextByte }) != accessBytes.lowerBound,
           !nature(of: event, fileSize: st.size, marker: marker, canShift: canShift, mustKnowCut: true).mayMakeHoles {
            // The last block too when the file ends at a block boundary: no page of it is
            // rewritten when the file grows.
            partial = core.filter { $0 < liveBlocks - 1 || st.size % layout.blockSize == 0 }
        }
        let whole = needed.filter { !partial.contains($0) }
        let wasClean = st.size == marker.size && st.mtimeNs == marker.mtimeNs
        let objectData = record.dataExtents
        let recalledBytes = DaemonMetrics.shared.recalledBytes
        var written: Int64 = 0
        /// Data written since the last fdatasync: the marker may say "local" only for
        /// data on disk (docs/ARCHITECTURE.md, invariant 8), or a power cut could leave holes that the
        /// marker calls resident, and they would read as zeros.
        var unsynced = false

        /// Makes the data durable, then writes the marker.
        func persistDurably() throws(RecallError) {
            // Only parts of blocks came back, and they stay offline: the marker says what
            // it said, and data not yet on disk is a hole again after a crash, which the
            // next recall fills.
            if marker == markerAsRead { return }
            if unsynced {
                do { try fd.syncData() } catch { throw .system(error) }
                unsynced = false
            }
            try persist(marker, fd, file: catalogFile)
        }
        // A write that fails (ENOSPC) still changes the mtime, as does punching it back.
        var touched = false
        // Every write strips security.capability (and, without CAP_FSETID, the set-id
        // bits): put back after each block, so they are there again before any access is
        // answered. An exec reads them just after the reads it was answered for, so for
        // such a file nothing is written once an access has been let go: no read-ahead
        // and no early answers (they are usually small programs).
        let privileges: FilePrivileges?
        do { privileges = try FilePrivileges.of(fd, mode: st.mode) } catch { throw .system(error) }
        let writesAfterAnswers = privileges == nil
        if !writesAfterAnswers { ahead = [] }
        var privilegesLost = false
        func keepPrivileges() {
            guard let privileges else { return }
            do { try privileges.restore(fd) } catch {
                if !privilegesLost {
                    log.critical("\(fileName()): recall's writes removed its \(privileges.description) and putting them back failed: \(error); set them again by hand")
                }
                privilegesLost = true
            }
        }

        /// What block `b` lacks: the parts of its holes (inside `only`, when given) that
        /// hold data in the object, and whether nothing of the block is missing once those
        /// are in. Recall writes into these and nowhere else (invariant 1).
        func missing(_ b: Int, only: Range<Int64>? = nil) throws(SystemError) -> (pieces: [Range<Int64>], complete: Bool) {
            let block = layout.range(ofBlock: b)
            // Never past the end as it is now: another process may have cut the file
            // since the recall began, and a write there would extend it with old data.
            let live = block.lowerBound..<max(block.lowerBound, min(block.upperBound, st.size, try fd.stat().size))
            var holes = subtract(try fd.dataExtents(in: live), from: live)
            var complete = true
            if let only {
                let outside = holes.flatMap { subtract([only], from: $0) }
                complete = outside.allSatisfy { intersect($0, objectData).isEmpty }
                holes = holes.map { $0.clamped(to: only) }.filter { !$0.isEmpty }
            }
            return (holes.flatMap { intersect($0, objectData) }, complete)
        }

        /// Keeps of `blocks` those that lack data (inside `only`, when given), so nothing
        /// is read from the store for bytes already local; a block found whole is resident.
        func lacking(_ blocks: [Int], only: Range<Int64>? = nil) throws(SystemError) -> [Int] {
            var kept: [Int] = []
            for b in blocks {
                let (pieces, complete) = try missing(b, only: only)
                if !pieces.isEmpty {
                    kept.append(b)
                } else if complete && marker.offline[b] {
                    marker.offline[b] = false
                    // Data hsmd did not write this time (a recall's before a crash, a
                    // program's): on disk before a marker calls it local (invariant 8),
                    // which a `localOnly` caller has seen to.
                    if !localOnly { unsynced = true }
                }
            }
            return kept
        }

        /// Writes one verified block into the holes of the file.
        /// `only`: the part of the block `buffer` holds (a partial recall); the block stays
        /// offline while holes outside it that should hold data remain.
        func place(_ b: Int, _ buffer: UnsafeMutableRawBufferPointer, only: Range<Int64>? = nil) throws(RecallError) {
            let block = layout.range(ofBlock: b)
            var filled: [Range<Int64>] = []
            var complete = true
            do {
                let (pieces, whole) = try missing(b, only: only)
                complete = whole
                for piece in pieces {
                    filled.append(piece)
                    touched = true
                    let from = Int(piece.lowerBound - block.lowerBound), to = Int(piece.upperBound - block.lowerBound)
                    try fd.write(UnsafeRawBufferPointer(rebasing: buffer[from..<to]), at: piece.lowerBound)
                    written += piece.upperBound - piece.lowerBound
                    ticket?.bytes.add(piece.upperBound - piece.lowerBound, ordering: .relaxed)
                    recalledBytes.add(signed: piece.upperBound - piece.lowerBound)
                    unsynced = true
                }
            } catch {
                reopenHoles(filled, fd, fileSize: st.size, object: marker.object, name: fileName)
                if !filled.isEmpty { keepPrivileges() }
                throw RecallError.system(error)
            }
            if !filled.isEmpty { keepPrivileges() }
            if complete { marker.offline[b] = false }
        }

        /// Copies blocks in, fills holes only, and leaves the file clean; the caller then
        /// makes it durable and writes the marker.
        /// `more`: other writes follow this fill (the read-ahead after the needed blocks).
        /// `exact`: bring back only the chunks of each block that these bytes touch.
        /// `prefetch`: ask the store to start reading the blocks at once (the read-ahead).
        func fill(_ requested: [Int], more: Bool, exact: Range<Int64>? = nil, prefetch: Bool = false) throws(RecallError) {
            guard !requested.isEmpty else { return }
            let pages = exact.map { ($0.lowerBound & ~4095)..<(($0.upperBound + 4095) & ~4095) }
            let blocks: [Int]
            do { blocks = try lacking(requested, only: pages) } catch { throw .system(error) }
            // Nothing to read: no mtime to put back (a step before wrote it already) and
            // no damage flag to clear (nothing was verified). `localOnly`: blocks found
            // whole are marked resident, and nothing is read (the settle of a file a
            // release may have punched since).
            guard !blocks.isEmpty, !localOnly else { return }
            do {
                let reader = try storeReader()
                // After the answer: asking the kernel to read ahead submits I/O synchronously.
                if prefetch, let from = blocks.first, let to = blocks.last { reader.prefetch(blocks: from..<to + 1) }
                if let exact, let pages {
                    // The worker's buffer: only the part a read fills this time is written.
                    let scratch = buffer ?? WorkerBuffer()
                    let partBuffer = scratch.acquire(Int(layout.blockSize))
                    defer { scratch.release(partBuffer) }
                    for b in blocks {
                        // The store gives whole verified chunks; only the pages the access
                        // touches are written, so a random read writes about what it reads.
                        let span = try reader.read(block: b, bytes: exact, into: partBuffer)
                        let start = layout.range(ofBlock: b).lowerBound
                        let part = span.clamped(to: pages)
                        if part.isEmpty { continue }
                        try place(b, UnsafeMutableRawBufferPointer(rebasing: partBuffer[0..<Int(span.upperBound - start)]), only: part)
                    }
                } else if blocks.count > 1 {
                    var placed = 0
                    // The worker's kept slots (nil for hsmctl recall and archive: slots of its own).
                    try BlockPipeline(blocks: blocks, reader: reader, blockSize: Int(layout.blockSize), buffers: buffer).run { b, data in
                        try place(b, data)
                        placed += 1
                        // Start writing the block to disk now, without waiting, so the
                        // fdatasync before the marker finds little left to do.
                        let r = layout.range(ofBlock: b)
                        try? fd.writeBack(r.lowerBound..<min(r.upperBound, st.size), wait: false)
                        // A sequential reader is usually waiting for the next block: let it
                        // go now rather than after the whole window (the marker follows at
                        // the end of the window, once the data is durable).
                        if writesAfterAnswers {
                            answerSatisfied(key, marker, fileSize: st.size, canShift: canShift,
                                            writesFollow: more || placed < blocks.count)
                        }
                    }
                } else if let b = blocks.first {
                    // The worker's own buffer (the pipeline uses its slots); hsmctl recall
                    // and archive, which have none, allocate one here.
                    let scratch = buffer ?? WorkerBuffer()
                    let block = scratch.acquire(Int(layout.blockSize))
                    defer { scratch.release(block) }
                    _ = try reader.read(block: b, into: block)
                    try place(b, block)
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
        // crash fills only what is still a hole. A whole-file recall at open for a program
        // by an archiver (`markerOnceClosed`) leaves the fdatasync and the marker to
        // `settle`, once no one has the file open: writing the marker changes the ctime,
        // which a program reading the file (tar) would take for a change under its feet.
        try fill(whole, more: !ahead.isEmpty || !partial.isEmpty)
        try fill(partial, more: !ahead.isEmpty, exact: accessBytes)
        if readahead {
            state.withLock { s in
                s.readahead[key, default: Readahead(nextBlock: 0, window: 0)].nextByte = partial.isEmpty ? -1 : accessBytes.upperBound
            }
        }
        // Nothing left offline: later accesses need no event, from the first one on. The
        // data is in the file (page cache) already; only a power cut could lose it, and
        // that ends the group and its marks too.
        if marker.offline.isEmpty && ahead.isEmpty { try? group.ignore(fileAt: fd.rawValue, path: fd.path) }
        neededIsIn?()
        if !markerOnceClosed { try persistDurably() }
        if !ahead.isEmpty {
            try fill(ahead, more: false, prefetch: true)
            try persistDurably()
        }
        if marker.offline.isEmpty && !ahead.isEmpty { try? group.ignore(fileAt: fd.rawValue, path: fd.path) }
        bytesRecalled.add(written, ordering: .relaxed)
        return written
    }

    /// A failed write (ENOSPC) can leave pages allocated but never filled; recall fills
    /// holes only, so those zeros would later pass for data. Punch back what this attempt
    /// was filling. At EOF the punch runs past the end: one ending mid-page zeroes
    /// instead of freeing.
    private func reopenHoles(_ ranges: [Range<Int64>], _ fd: FileDescriptor, fileSize: Int64, object: ObjectID, name: () -> String) {
        for r in ranges {
            let end = r.upperBound >= fileSize ? (r.upperBound + 4095) / 4096 * 4096 : r.upperBound
            do { try fd.punchHole(offset: r.lowerBound, length: end - r.lowerBound) } catch {
                log.critical("\(name()): after a failed recall write, bytes \(r.lowerBound)..<\(end) could not be punched back to a hole (\(error)); they may read as zeros; restore them by hand from object \(object)")
            }
        }
    }

    /// Allows the queued accesses of `key` whose blocks are all in already. Only plain
    /// accesses inside the file: anything reaching past its end waits for the worker.
    /// While more recall writes follow (`writesFollow`), only accesses that cannot cut the
    /// file go early: the writes would extend it again past a cut.
    private func answerSatisfied(_ key: InodeKey, _ marker: Marker, fileSize: Int64, canShift: Bool, writesFollow: Bool) {
        let queued = state.withLock { s in
            (s.queues[key] ?? []).filter { e in
                !e.atOpen && !e.isAnswered && fileSize >= marker.size
                    && (e.range ?? .wholeFile).bytes(fileSize: fileSize).upperBound <= fileSize
            }
        }
        // Outside the lock: working out what an event is may read /proc.
        for e in queued {
            let n = nature(of: e, fileSize: fileSize, marker: marker, canShift: canShift, mustKnowCut: writesFollow)
            if (!writesFollow || !n.mayCut) && AccessPlan.neededBlocks(e.range, n.intent, fileSize: fileSize, marker: marker).isEmpty {
                e.answer(.allow)
            }
        }
    }

    /// Sequential readers get a window that doubles up to readahead_max; a jump resets it.
    /// After a recall of part of a block, only an access starting where that one ended
    /// reads on (a random read that happens to land in the next block does not).
    private func nextWindow(key: InodeKey, first: Int, offset: Int64, blockSize: Int64) -> Int {
        return state.withLock { s in
            let maxBlocks = max(Int(s.readaheadMaxBytes / blockSize), 0)
            if s.readahead.count > 65536 { s.readahead.removeAll() }
            var r = s.readahead[key] ?? Readahead(nextBlock: -1, window: 0)
            let onward = first == r.nextBlock && (r.nextByte < 0 || offset == r.nextByte)
            r.window = onward ? min(max(r.window * 2, 1), maxBlocks) : 0
            s.readahead[key] = r
            return r.window
        }
    }

    /// `file`: the catalog's reference to the file, when the recall knows it (nil: looked
    /// up here, at two syscalls).
    private func persist(_ marker: Marker, _ fd: FileDescriptor, file: CatalogFileRef? = nil) throws(RecallError) {
        do {
            try fd.setXattr(Marker.xattrName, MarkerCodec.encode(marker))
            // Queued, never written here: the catalog's thread does that (and syncs first).
            if let catalog {
                if let file {
                    catalog.noteFile(file.handle, fs: file.fs, marker: marker, path: nil, stat: file.stat)
                } else if let st = try? fd.stat(), let fs = filesystems.filesystem(ofOpenFile: fd.rawValue, device: st.device) {
                    catalog.noteFile(fd, fs: fs, marker: marker, path: nil, stat: st)
                }
            }
        } catch let e as SystemError {
            throw .system(e)
        } catch {
            throw .damagedMarker("\(error)")
        }
    }

    /// The catalog's reference to a file being recalled (see `persist`).
    struct CatalogFileRef {
        let fs: ManagedFilesystem
        let handle: InodeHandle
        let stat: FileStat
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
