import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

/// Archive, release, recall and status of single files, on behalf of hsmctl.
/// Every operation on an inode runs under that inode's lock.
struct Archiver: Sendable {
    let group: FanotifyGroup
    let filesystems: ManagedFilesystems
    let locks: InodeLocks
    let engine: RecallEngine
    let log: Logger
    /// Notes of the operations under way (state_dir/in-progress), shared by every copy.
    let inProgress: InProgress
    /// Told of every marker archive and release write (after it is written).
    let catalog: Catalog?

    init(group: FanotifyGroup, filesystems: ManagedFilesystems, locks: InodeLocks, engine: RecallEngine, log: Logger,
         catalog: Catalog? = nil) {
        self.catalog = catalog
        self.group = group
        self.filesystems = filesystems
        self.locks = locks
        self.engine = engine
        self.log = log
        inProgress = InProgress(stateDir: filesystems.stateDir)
    }

    /// The lease-break signal; hsmd installs a no-op handler and polls F_GETLEASE.
    static let leaseSignal = SIGIO
    /// Punch at most this much between lease checks, so an opener waits little.
    static let punchChunk: Int64 = 64 << 20
    /// Test-only: pause between punch chunks so a test can open the file mid-release.
    static let punchPauseMicros: UInt32 = ProcessInfo.processInfo.environment["HSMD_TEST_PUNCH_PAUSE_MS"]
        .flatMap { UInt32($0) }.map { $0.multipliedReportingOverflow(by: 1000).overflow ? UInt32.max : $0 * 1000 } ?? 0

    struct Refusal: Error {
        let result: FileResult
    }

    /// Notes that `kind` of the file open as `fd` is starting (see InProgress).
    func noteInProgress(_ kind: InProgress.Kind, _ fd: FileDescriptor, _ st: FileStat, object: ObjectID,
                previous: ObjectID? = nil, store: any ObjectStore, privileges: FilePrivileges? = nil) throws(Refusal) -> InProgress.Note {
        let handle = try? InodeHandle.of(fd: fd.rawValue, path: fd.path)
        var entry = InProgress.Entry(kind: kind, object: object.hex, previous: previous?.hex, store: store.name, path: fd.path,
                                     device: st.device, inode: st.inode, handle: handle?.hex)
        if let privileges {
            entry.setIDBits = privileges.setIDBits
            entry.capability = privileges.capability.map(FilePrivileges.hex)
        }
        do { return try inProgress.begin(entry) } catch {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "\(error)"))
        }
    }

    // MARK: Opening

    /// Opens a regular file on a managed filesystem, or explains why not.
    func openManaged(_ path: String, _ flags: FileDescriptor.OpenFlags) throws(Refusal) -> (FileDescriptor, FileStat, ManagedFilesystem) {
        let lst: FileStat
        do { lst = try FileStat.of(path: path) } catch {
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)"))
        }
        switch lst.fileType {
        case .regular: break
        case .directory:
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "is a directory; name files, or use hsmctl migrate to walk a tree"))
        default:
            // Named explicitly, so not done (exit 1); migrate's walks skip these quietly.
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "\(lst.fileType.rawValue): not a regular file, skipped"))
        }
        guard let fs = filesystems.filesystem(device: lst.device) else {
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))"))
        }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, flags.union([.noFollow, .nonBlocking])) } catch {
            let reason = [EWOULDBLOCK, ETXTBSY].contains(error.errno) ? "busy: the file is in use (\(error))" : "\(error)"
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: reason))
        }
        do {
            let st = try fd.stat()
            guard st.inodeKey == lst.inodeKey else {
                fd.close()
                throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "replaced while being opened; try again"))
            }
            return (fd, st, fs)
        } catch let e as Refusal {
            throw e
        } catch {
            fd.close()
            throw Refusal(result: FileResult(path: path, outcome: .failed, reason: "\(error)"))
        }
    }

    func readMarker(_ fd: FileDescriptor) throws(Refusal) -> Marker? {
        do {
            guard let raw = try fd.xattr(Marker.xattrName) else { return nil }
            return try MarkerCodec.decode(raw)
        } catch {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "damaged marker: \(error)", state: .damaged))
        }
    }

    // MARK: Archive

    /// An object written for a file whose marker is not set yet: the first half of an
    /// archive. Staging many files and then making their objects durable with one flush
    /// is what makes migrate fast; the marker still never names a non-durable object.
    struct StagedArchive: Sendable {
        let path: String
        let stat: FileStat
        let record: ObjectRecord
        let previous: ObjectID?
        let fs: ManagedFilesystem
        /// The in-progress note, ended once the marker is set or the object dropped.
        let note: InProgress.Note
    }

    /// Drops a staged object no marker names, and its note.
    private func drop(_ s: StagedArchive) {
        try? s.fs.store.delete(s.record.object)
        inProgress.end(s.note)
    }

    enum Staging: Sendable {
        case staged(StagedArchive)
        case finished(FileResult)
    }

    /// Copies the file into its store (recalling a dirty file's offline part first). The
    /// object is durable only after the store's next `makeDurable()`.
    /// `unusable`: stores known not to prove their identity (name → why), refused at once.
    func stage(_ path: String, unusable: [String: String] = [:]) -> Staging {
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite, .noAccessTime])
            defer { fd.close() }
            if let why = unusable[fs.store.name] { return .finished(FileResult(path: path, outcome: .failed, reason: why)) }
            return try locks.withLock(st.inodeKey) { try stageLocked(fd, st, fs) }
        } catch let r as Refusal {
            return .finished(r.result)
        } catch {
            return .finished(FileResult(path: path, outcome: .failed, reason: "\(error)"))
        }
    }

    private func stageLocked(_ fd: FileDescriptor, _ initial: FileStat, _ fs: ManagedFilesystem) throws(Refusal) -> Staging {
        var st = initial
        let old = try readMarker(fd)
        if let old {
            let clean = st.size == old.size && st.mtimeNs == old.mtimeNs && !old.flags.contains(.objectDamaged)
            if clean {
                let status = statusOf(fd.path, st, old, fs)
                return .finished(FileResult(path: fd.path, outcome: .done, reason: "already archived", state: status.state, object: old.object.hex))
            }
            // Dirty: bring back whatever is still offline before reading it, so the new
            // copy never contains holes where data belongs.
            if !old.offline.isEmpty {
                do { _ = try engine.recall(fd, range: .wholeFile, key: st.inodeKey, store: fs.store, readahead: false) } catch {
                    throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "cannot recall the offline part of this dirty file: \(error)"))
                }
                do { st = try fd.stat() } catch { throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "\(error)")) }
            }
        }
        // The marker keeps the mtime in 64-bit nanoseconds and release puts it back after
        // punching: a saturated one (before 1677 or after 2262) would change the file's.
        guard st.mtimeNs != .min && st.mtimeNs != .max else {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "its modification time is outside 1677-2262, which hsmd cannot keep exactly; set it (touch) and archive again"))
        }
        guard let shift = BlockLayout.shift(forFileSize: st.size, maxBits: MarkerCodec.maxBlocks) else {
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "too large: hsmd archives files up to \(MarkerCodec.maxBlocks) GiB"))
        }
        let id = ObjectID.random()
        let note = try noteInProgress(.archive, fd, st, object: id, previous: old?.object, store: fs.store)
        let record: ObjectRecord
        do {
            record = try fs.store.put(fd, as: id, stat: st, blockShift: shift, originalPath: fd.path, xattrs: ownXattrs(fd))
        } catch {
            inProgress.end(note)
            log.error("archive of \(fd.path) to store \(fs.store.name) failed: \(error)")
            let reason = if case .unusable = error { "\(error)" } else { "store \(fs.store.name): \(error)" }
            throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: reason))
        }
        return .staged(StagedArchive(path: fd.path, stat: st, record: record, previous: old?.object, fs: fs, note: note))
    }

    /// Sets the marker of a staged file whose object is durable, if the file is still
    /// exactly what was copied; otherwise drops the object. A re-archive's old object is
    /// deleted only once the new marker is durable (docs/ARCHITECTURE.md, invariant 8).
    func commit(_ s: StagedArchive) -> FileResult {
        func fail(_ reason: String) -> FileResult {
            drop(s)
            return FileResult(path: s.path, outcome: .failed, reason: reason)
        }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(s.path, [.readOnly, .noFollow, .nonBlocking]) } catch { return fail("\(error)") }
        defer { fd.close() }
        do {
            return try locks.withLock(s.stat.inodeKey) { () throws -> FileResult in
                let now = try fd.stat()
                let marker = try fd.xattr(Marker.xattrName).map { try MarkerCodec.decode($0) }
                guard now.inodeKey == s.stat.inodeKey, now.size == s.stat.size, now.mtimeNs == s.stat.mtimeNs,
                      marker?.object == s.previous else {
                    return fail(StoreError.changedDuringArchive(path: s.path).description)
                }
                let m = Marker(object: s.record.object, size: s.stat.size, mtimeNs: s.stat.mtimeNs, blockShift: s.record.blockShift)
                try fd.setXattr(Marker.xattrName, MarkerCodec.encode(m))
                defer { inProgress.end(s.note) }
                if let catalog {
                    let handle = try? InodeHandle.of(fd: fd.rawValue, path: fd.path)
                    catalog.enqueue(.object(CatalogObject(id: s.record.object.hex, store: s.fs.store.name, handle: handle?.encoded,
                                                          fs: s.fs.path, path: s.path, size: s.record.size,
                                                          storedBytes: s.record.storedBytes, archivedAt: s.record.archivedAt)))
                    catalog.noteFile(fd, fs: s.fs, marker: m, path: s.path, stat: now)
                }
                if let previous = s.previous {
                    if deletePrevious(previous, of: fd, from: s.fs.store) { catalog?.enqueue(.deleteObject(previous.hex)) }
                }
                log.info("archived \(s.path) as object \(s.record.object) (\(Units.formatBytes(s.record.storedBytes)))")
                return FileResult(path: s.path, outcome: .done, state: .archived, object: s.record.object.hex, bytesArchived: s.record.storedBytes)
            }
        } catch {
            return fail("\(error)")
        }
    }

    /// Deletes a re-archived file's old object once the marker that no longer names it is
    /// durable: an xattr change is inode metadata, which reaches the disk with an fsync of
    /// the file. If the fsync fails the old object stays (an orphan, never a dangling marker).
    /// True when the object was deleted.
    @discardableResult
    func deletePrevious(_ previous: ObjectID, of fd: FileDescriptor, from store: any ObjectStore) -> Bool {
        do { try fd.sync() } catch {
            log.warning("kept the stale object \(previous) of \(fd.path): the new marker could not be made durable: \(error)")
            return false
        }
        do { try store.delete(previous) } catch {
            log.warning("could not delete the stale object \(previous) of \(fd.path): \(error)")
            return false
        }
        return true
    }

    /// Archives (and optionally releases) many files: stage a chunk on `jobs` threads,
    /// make the chunk's objects durable with one flush per store, then commit and release.
    /// Several names of one inode (hard links) are archived once, by the first name.
    /// `cancelled` is asked before each file is copied: once it says yes, the files not
    /// started are reported not done (hsmctl cancel, or the requesting hsmctl went away).
    func archiveMany(_ named: [String], jobs: Int, release: Bool, chunk: Int = 256,
                     cancelled: @escaping @Sendable () -> Bool = { false },
                     onCopied: @escaping @Sendable () -> Void = {},
                     onResult: @escaping @Sendable (FileResult) -> Void = { _ in }) -> [FileResult] {
        var results: [FileResult] = []
        var paths: [String] = []
        var firstName: [InodeKey: String] = [:]
        for p in named {
            if let st = try? FileStat.of(path: p), st.fileType == .regular {
                if let first = firstName[st.inodeKey] {
                    let r = FileResult(path: p, outcome: .skipped, reason: "another name of \(first) (hard link), done once")
                    onResult(r)
                    results.append(r)
                    continue
                }
                firstName[st.inodeKey] = p
            }
            paths.append(p)
        }
        var start = 0
        var logged = Set<String>()
        while start < paths.count {
            let part = Array(paths[start..<min(start + chunk, paths.count)])
            start += part.count
            let t0 = monotonicNanos()
            // One identity check per store and chunk (and one log line per request), rather
            // than a failed put and a log line for each of thousands of files.
            var unusable: [String: String] = [:]
            for store in filesystems.stores {
                if let problem = store.healthProblem() {
                    unusable[store.name] = problem
                    if logged.insert(store.name).inserted { log.error("archive refused: \(problem)") }
                }
            }
            let refused = unusable
            let staged = parallelMap(part, jobs: jobs) { p -> Staging in
                if cancelled() { return .finished(FileResult(path: p, outcome: .failed, reason: Job.cancelledReason)) }
                let s = stage(p, unusable: refused)
                onCopied()
                return s
            }
            let t1 = monotonicNanos()
            var stores: [String: any ObjectStore] = [:]
            for case .staged(let s) in staged { stores[s.fs.store.name] = s.fs.store }
            var flushFailed: [String: String] = [:]
            for (name, store) in stores {
                do { try store.makeDurable() } catch { flushFailed[name] = "\(error)" }
                // The store must still be the store before any marker names its objects
                // and anything is released against them.
                if flushFailed[name] == nil, let problem = store.healthProblem() { flushFailed[name] = problem }
            }
            let failures = flushFailed
            let t2 = monotonicNanos()
            defer {
                let ms = { (a: UInt64, b: UInt64) in String(format: "%.0f", Double(b - a) / 1e6) }
                let t3 = monotonicNanos()
                log.debug("chunk of \(part.count) files: copy \(ms(t0, t1)) ms, flush \(ms(t1, t2)) ms, mark\(release ? " + release" : "") \(ms(t2, t3)) ms")
            }
            results += parallelMap(staged, jobs: jobs) { st -> FileResult in
                var r: FileResult
                switch st {
                case .finished(let f): r = f
                case .staged(let s):
                    if let why = failures[s.fs.store.name] {
                        drop(s)
                        r = FileResult(path: s.path, outcome: .failed, reason: why.hasPrefix("store \(s.fs.store.name):") ? why : "store \(s.fs.store.name): \(why)")
                    } else {
                        r = commit(s)
                    }
                }
                DaemonMetrics.shared.recordArchive(r)
                if release && r.outcome == .done {
                    let archived = r
                    // The chunk's store passed the full identity check after its flush.
                    r = self.release(archived.path, storeChecked: true)
                    r.bytesArchived = archived.bytesArchived
                    if r.outcome == .done && archived.reason == "already archived" && r.reason == "already released" {
                        r.outcome = .skipped
                    }
                }
                onResult(r)
                return r
            }
        }
        return results
    }

    /// The file's own xattrs, to keep beside the object (hsmd's marker excluded).
    private func ownXattrs(_ fd: FileDescriptor) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for name in (try? fd.xattrNames()) ?? [] where name != Marker.xattrName {
            if let v = try? fd.xattr(name) { out[name] = v }
        }
        return out
    }

    // MARK: Release

    func release(_ path: String) -> FileResult { release(path, storeChecked: false) }

    /// `storeChecked`: the store's identity file was read for this batch just before; the
    /// pin (a stat) is checked again here.
    private func release(_ path: String, storeChecked: Bool) -> FileResult {
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
        if candidates.isEmpty {
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
        let layout = marker.layout
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
        defer { buffer.deallocate() }
        let reader: any ObjectReader
        do { reader = try fs.store.reader(for: record) } catch {
            if case .unusable(let why) = error { throw fail(why) }
            throw fail("store \(fs.store.name): \(error); nothing released", .damaged)
        }
        defer { reader.close() }
        var checked = 0
        func checkLocal(_ b: Int) throws(Refusal) {
            if checked % 64 == 0, (try? fd.lease()) != .write { throw fail("busy: opened by another process during release; nothing changed") }
            checked += 1
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
        outer: for run in consecutiveRuns(candidates) {
            var b = run.lowerBound
            while b < run.upperBound {
                if Self.punchPauseMicros > 0 && b != candidates[0] { usleep(Self.punchPauseMicros) }
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
            log.notice("release of \(fd.path) stopped early: \(why) (\(punched.count) of \(candidates.count) blocks released)")
            return FileResult(path: fd.path, outcome: .failed, reason: "\(why); \(punched.count) of \(candidates.count) blocks released",
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

    // MARK: Recall

    func recall(_ path: String, range: Range<Int64>?) -> FileResult {
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite])
            defer { fd.close() }
            return try locks.withLock(st.inodeKey) { () throws(Refusal) -> FileResult in
                let bytes: Int64
                let ticket = engine.inFlight.begin(path: { [path = fd.path] in path }, pid: 0, kind: "hsmctl")
                defer { engine.inFlight.end(ticket) }
                do { bytes = try engine.recall(fd, range: range.map { AccessRange(offset: $0.lowerBound, count: max($0.upperBound - $0.lowerBound, 1)) } ?? .wholeFile,
                                             key: st.inodeKey, store: fs.store, readahead: false, ticket: ticket)
                } catch {
                    log.error("recall of \(fd.path) failed: \(error)")
                    throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "\(error)", state: .damaged))
                }
                let now = (try? fd.stat()) ?? st
                let status = statusOf(fd.path, now, try readMarker(fd), fs)
                return FileResult(path: fd.path, outcome: .done, state: status.state, object: status.object?.hex, bytesRecalled: bytes)
            }
        } catch let r as Refusal {
            return r.result
        } catch {
            return FileResult(path: path, outcome: .failed, reason: "\(error)")
        }
    }

    // MARK: Status

    func statusOf(_ path: String, _ st: FileStat, _ marker: Marker?, _ fs: ManagedFilesystem) -> FileStatus {
        FileStatus.derive(stat: st, marker: marker, objectExists: { fs.store.contains($0) })
    }

    /// One row per regular file; directories are walked.
    func status(_ path: String) -> (rows: [StatusRow], problems: [FileResult]) {
        let lst: FileStat
        do { lst = try FileStat.of(path: path) } catch {
            return ([], [FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)")])
        }
        if lst.fileType == .directory {
            var rows: [StatusRow] = [], problems: [FileResult] = []
            TreeWalker.walk(path, device: lst.device) { p, st in
                if st.fileType == .regular { rows += status(p).rows }
            }
            if filesystems.filesystem(device: lst.device) == nil {
                problems.append(FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))"))
            }
            return (rows, problems)
        }
        guard lst.fileType == .regular else {
            return ([], [FileResult(path: path, outcome: .skipped, reason: "\(lst.fileType.rawValue): not a regular file")])
        }
        guard let fs = filesystems.filesystem(device: lst.device) else {
            return ([], [FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))")])
        }
        // Under the inode lock: a recall lets its reader go before its marker is durable
        // (the data is synced first), and status must not show the state from before.
        let read = locks.withLock(lst.inodeKey) { () -> Result<(FileStat, [UInt8]?), SystemError> in
            do throws(SystemError) { return .success((try FileStat.of(path: path), try Xattr.get(path: path, Marker.xattrName))) } catch {
                return .failure(error)
            }
        }
        guard case .success(let (st, raw)) = read else {
            if case .failure(let error) = read { return ([], [FileResult(path: path, outcome: .failed, reason: "\(error)")]) }
            return ([], [])
        }
        let s = FileStatus.derive(stat: st, markerBytes: raw, objectExists: { fs.store.contains($0) })
        return ([StatusRow(path: path, state: s.state, size: st.size, offlineBytes: s.offlineBytes, object: s.object?.hex, detail: s.detail)], [])
    }
}
