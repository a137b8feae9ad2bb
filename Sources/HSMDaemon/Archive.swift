import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

// Archiver: archiving single files (staging objects, setting markers).
extension Archiver {
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

    /// The file's own xattrs, to keep beside the object (hsmd's marker and pin excluded).
    private func ownXattrs(_ fd: FileDescriptor) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for name in (try? fd.xattrNames()) ?? [] where !Pin.isHSMState(name) {
            if let v = try? fd.xattr(name) { out[name] = v }
        }
        return out
    }
}
