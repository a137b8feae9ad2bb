import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

// Archiver: releasing archived files' blocks (and rewriting blocks from the store).
extension Archiver {
    func release(_ path: String) -> FileResult { release(path, storeChecked: false) }

    /// `storeChecked`: the store's identity file was read for this batch just before; the
    /// pin (a stat) is checked again here.
    func release(_ path: String, storeChecked: Bool) -> FileResult {
        let r = releaseUncounted(path, storeChecked: storeChecked)
        DaemonMetrics.shared.recordRelease(r)
        return r
    }

    private func releaseUncounted(_ path: String, storeChecked: Bool) -> FileResult {
        do {
            // Verifying reads every block: it must not make the file look used to policies.
            let (fd, st, fs) = try openManaged(path, [.readWrite, .noAccessTime])
            defer { fd.close() }
            return try locks.withLock(st.inodeKey) { () throws(Refusal) -> FileResult in
                let result: FileResult
                do throws(Refusal) { result = try releaseLocked(fd, st, fs, storeChecked: storeChecked) } catch {
                    noteReleaseInCatalog(fd, fs)
                    throw error
                }
                noteReleaseInCatalog(fd, fs)
                return result
            }
        } catch let r as Refusal {
            return r.result
        } catch {
            return FileResult(path: path, outcome: .failed, reason: "\(error)")
        }
    }

    /// The catalog row after a release, done or not (a refused one may have found the
    /// file dirty; a stopped one left it partly released).
    private func noteReleaseInCatalog(_ fd: FileDescriptor, _ fs: ManagedFilesystem) {
        guard let catalog, let raw = try? fd.xattr(Marker.xattrName), let m = try? MarkerCodec.decode(raw) else { return }
        catalog.noteFile(fd, fs: fs, marker: m, path: fd.path)
    }

    /// docs/ARCHITECTURE.md invariant 2: ignore mark → lease → verify → marker → punch in chunks →
    /// unmark → unlock. Only blocks whose bytes match the stored checksums are punched,
    /// and only when the store itself (not a cache) holds them intact (invariant 8).
    private func releaseLocked(_ fd: FileDescriptor, _ st: FileStat, _ fs: ManagedFilesystem, storeChecked: Bool) throws(Refusal) -> FileResult {
        func fail(_ reason: String, _ state: HSMState? = nil) -> Refusal {
            Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: reason, state: state))
        }
        guard var marker = try readMarker(fd) else { throw fail("not archived; run hsmctl archive first (or hsmctl migrate)", .resident) }
        do {
            if try fd.xattr(Pin.xattrName) != nil {
                throw fail("pinned: kept local by hsmctl pin (hsmctl unpin lets it be released); nothing changed", statusOf(fd.path, st, marker, fs).state)
            }
        } catch let r as Refusal { throw r } catch { throw fail("reading its pin: \(error); nothing changed") }
        if st.size != marker.size || st.mtimeNs != marker.mtimeNs { throw fail("dirty: changed since it was archived; archive it again", .dirty) }
        if let problem = fs.store.healthProblem(readingIdentity: !storeChecked) { throw fail(problem) }
        let record: ObjectRecord
        do { record = try fs.store.storedRecord(marker.object) } catch {
            if case .unusable(let why) = error { throw fail(why) }
            throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
        }
        guard record.size == marker.size, record.blockShift == marker.blockShift, record.mtimeNs == marker.mtimeNs,
              record.checksums.count == marker.offline.count else {
            throw fail("store \(fs.store.name): object \(marker.object) does not match the marker (size, block size or mtime); nothing released", .damaged)
        }
        let candidates = (0..<marker.offline.count).filter { record.checksums[$0] != nil && !marker.offline[$0] }
        let layout = marker.layout
        // Blocks the marker lists offline that still hold data: the pages a partial recall
        // brought back (its block stays offline until no hole is left), or bytes a program
        // wrote and then put the mtime back. Verified byte for byte against the store and
        // punched too, or release would free nothing of them.
        var partlyLocal = Set<Int>()
        do {
            for extent in try fd.dataExtents(in: 0..<st.size) {
                for b in layout.blocks(covering: extent) where marker.offline[b] && record.checksums[b] != nil {
                    partlyLocal.insert(b)
                }
            }
        } catch { throw fail("\(error)") }
        if candidates.isEmpty && partlyLocal.isEmpty {
            return FileResult(path: fd.path, outcome: .done, reason: "already released", state: statusOf(fd.path, st, marker, fs).state, object: marker.object.hex)
        }

        // Ignore accesses (hsmd's own reads and punches must raise no event) but not
        // opens: an opener that needs the whole file must still be seen.
        do {
            try group.stopIgnoring(fileAt: fd.rawValue, path: fd.path)
            try group.ignore(fileAt: fd.rawValue, path: fd.path, mask: FanotifyGroup.preAccess)
        } catch { throw fail("\(error)") }
        var leased = false
        defer {
            // Order matters: the ignore mark goes before the lease, so an opener waiting
            // on the lease gets events (and recalls) for its reads.
            try? group.stopIgnoring(fileAt: fd.rawValue, path: fd.path)
            if leased { try? fd.releaseLease() }
        }
        // A few short retries ride out opens that are just ending (a reader closing, the
        // kernel's fd for an event hsmd is answering); a file really in use stays busy.
        var attempt = 0
        while true {
            do {
                try fd.setWriteLease(signal: Self.leaseSignal)
                break
            } catch {
                guard [EAGAIN, EBUSY].contains(error.errno) else { throw fail("\(error)") }
                attempt += 1
                if attempt >= 5 { throw fail("busy: open by another process; nothing changed") }
                usleep(20_000)
            }
        }
        leased = true
        let allocatedBefore = st.allocatedBytes
        // Punching strips security.capability (and, without CAP_FSETID, the set-id bits):
        // read under the lease, put back before it goes (no one can open the file meanwhile).
        let privileges: FilePrivileges?
        do {
            let now = try fd.stat()
            guard now.size == marker.size && now.mtimeNs == marker.mtimeNs else { throw fail("dirty: changed since it was archived", .dirty) }
            privileges = try FilePrivileges.of(fd, mode: now.mode)
        } catch let r as Refusal { throw r } catch { throw fail("\(error)") }

        // Verify every block against the stored checksums before anything is punched: the
        // local bytes, and the store's own copy of them.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
        defer { buffer.deallocate() }
        let reader: any ObjectReader
        do { reader = try fs.store.reader(for: record) } catch {
            if case .unusable(let why) = error { throw fail(why) }
            throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
        }
        defer { reader.close() }
        var checked = 0
        func checkLease() throws(Refusal) {
            if checked % 64 == 0, (try? fd.lease()) != .write { throw fail("busy: opened by another process during release; nothing changed") }
            checked += 1
        }
        func checkLocal(_ b: Int) throws(Refusal) {
            try checkLease()
            let r = layout.range(ofBlock: b)
            let len = Int(r.upperBound - r.lowerBound)
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<len])
            let n: Int
            do { n = try fd.read(into: view, at: r.lowerBound) } catch { throw fail("\(error)") }
            guard n == len, CRC32C.checksum(UnsafeRawBufferPointer(view)) == record.checksums[b] else {
                throw fail("dirty: block \(b) differs from the stored copy; archive it again", .dirty)
            }
        }
        if reader.parallelReads > 1 && candidates.count > 1 {
            // A store read is a round trip (S3): the recall pipeline keeps several in
            // flight, each block checked against its checksum as it arrives.
            do {
                try BlockPipeline(blocks: candidates, reader: reader, blockSize: Int(layout.blockSize)).run { b, _ in try checkLocal(b) }
            } catch let r as Refusal {
                throw r
            } catch {
                throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
            }
        } else {
            for b in candidates {
                try checkLocal(b)
                do { _ = try reader.read(block: b, into: buffer) } catch {
                    throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
                }
            }
        }
        if !partlyLocal.isEmpty {
            // No checksum covers part of a block: compare the local data with the store's
            // verified chunks around it (the partial recall's own store read). The data is
            // looked up again here, under the lease: what counts is what is there now.
            let stored = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
            defer { stored.deallocate() }
            for b in partlyLocal.sorted() {
                try checkLease()
                let r = layout.range(ofBlock: b)
                let extents: [Range<Int64>]
                do { extents = try fd.dataExtents(in: r.lowerBound..<min(r.upperBound, st.size)) } catch { throw fail("\(error)") }
                for e in extents {
                    do { _ = try reader.read(block: b, bytes: e, into: stored) } catch {
                        throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
                    }
                    let from = Int(e.lowerBound - r.lowerBound), to = Int(e.upperBound - r.lowerBound)
                    let view = UnsafeMutableRawBufferPointer(rebasing: buffer[from..<to])
                    let got: Int
                    do { got = try fd.read(into: view, at: e.lowerBound) } catch { throw fail("\(error)") }
                    guard got == view.count, memcmp(view.baseAddress!, stored.baseAddress! + from, got) == 0 else {
                        throw fail("dirty: block \(b) differs from the stored copy; archive it again", .dirty)
                    }
                }
            }
        }
        let note = try noteInProgress(.release, fd, st, object: marker.object, store: fs.store, privileges: privileges)
        // Ended once the marker and the mtime are true again; kept only when blocks the
        // marker lists offline could not be made holes or local again, for the next start.
        var keepNote = false
        defer { if !keepNote { inProgress.end(note) } }
        // Before the note ends and the lease goes (defers run last first); the note holds
        // them for the next start should hsmd die before this.
        defer {
            if let privileges {
                do { try privileges.restore(fd) } catch {
                    log.critical("\(fd.path): punching removed its \(privileges.description) and putting them back failed: \(error); set them again by hand")
                }
            }
        }

        // Marker first: from here on a crash leaves blocks that are offline by the marker
        // but still allocated, which recall treats as already local (invariant 1).
        var released = marker
        for b in candidates { released.offline[b] = true }
        released.releasedBlocks = UInt32(released.offline.setCount)
        do { try fd.setXattr(Marker.xattrName, MarkerCodec.encode(released)) } catch { throw fail("writing the marker: \(error)") }

        var punched = Set<Int>()
        var interrupted = false, leaseBroken = false
        // The partly local blocks are offline in the marker already: punched like the others.
        let toPunch = (candidates + partlyLocal).sorted()
        outer: for run in consecutiveRuns(toPunch) {
            var b = run.lowerBound
            while b < run.upperBound {
                if Self.punchPauseMicros > 0 && b != toPunch[0] { usleep(Self.punchPauseMicros) }
                if (try? fd.lease()) != .write { interrupted = true; leaseBroken = true; break outer }
                let chunkBlocks = max(1, Int(Self.punchChunk / layout.blockSize))
                let end = min(run.upperBound, b + chunkBlocks)
                // Whole blocks, even past EOF: a punch ending mid-page zeroes that page
                // instead of freeing it, and recall (which fills holes only) would then
                // leave those zeros in place.
                let start = layout.range(ofBlock: b).lowerBound, length = Int64(end - b) * layout.blockSize
                do { try fd.punchHole(offset: start, length: length) } catch {
                    log.error("punching \(fd.path) failed: \(error)")
                    interrupted = true
                    break outer
                }
                punched.formUnion(b..<end)
                b = end
            }
        }
        // Trust, but verify: every punched block must now be a hole, or recall would skip it.
        var keptLocal = Set<Int>()
        for b in punched.sorted() {
            let r = layout.range(ofBlock: b)
            if let extents = try? fd.dataExtents(in: r), extents.isEmpty { continue }
            keptLocal.insert(b)
        }
        if !keptLocal.isEmpty {
            log.error("\(fd.path): \(keptLocal.count) block(s) still allocated after punching; rewriting them from the store and keeping them local")
            do { try rewriteFromStore(fd, blocks: keptLocal.sorted(), record: record, store: fs.store, buffer: buffer) } catch {
                // The marker still lists them offline and they are not holes: refuse access
                // rather than serve zeros.
                log.critical("\(fd.path): could not rewrite blocks from the store: \(error)")
                keepNote = true
                return FileResult(path: fd.path, outcome: .failed, reason: "blocks left allocated after punching and could not be restored: \(error)", state: .damaged)
            }
            punched.subtract(keptLocal)
            interrupted = true
        }
        if interrupted {
            for b in candidates where !punched.contains(b) { released.offline[b] = false }
            released.releasedBlocks = UInt32(released.offline.setCount)
            try? fd.setXattr(Marker.xattrName, MarkerCodec.encode(released))
        }
        // Punching changes the mtime; the file's content did not change.
        try? fd.setModificationTime(marker.mtimeNs)
        marker = released
        let freed = max(0, allocatedBefore - ((try? fd.stat().allocatedBytes) ?? allocatedBefore))
        if interrupted {
            let why = leaseBroken ? "busy: opened by another process during release" : "could not punch every block"
            log.notice("release of \(fd.path) stopped early: \(why) (\(punched.count) of \(toPunch.count) blocks released)")
            return FileResult(path: fd.path, outcome: .failed, reason: "\(why); \(punched.count) of \(toPunch.count) blocks released",
                              state: punched.isEmpty ? .archived : .partial, object: marker.object.hex, bytesFreed: freed)
        }
        log.info("released \(fd.path) (\(Units.formatBytes(freed)) freed)")
        return FileResult(path: fd.path, outcome: .done, state: .released, object: marker.object.hex, bytesFreed: freed)
    }

    /// Overwrites whole blocks with their verified stored bytes.
    private func rewriteFromStore(_ fd: FileDescriptor, blocks: [Int], record: ObjectRecord, store: any ObjectStore,
                                  buffer: UnsafeMutableRawBufferPointer) throws {
        let reader = try store.reader(for: record)
        defer { reader.close() }
        for b in blocks {
            let n = try reader.read(block: b, into: buffer)
            try fd.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: record.layout.range(ofBlock: b).lowerBound)
        }
    }
}
