import Glibc
import HSMCore
import HSMKernel
import HSMStores

/// What a start does before it serves hsmctl: say what each store's identity check
/// found, and finish or undo the archives and releases a killed hsmd left in progress
/// (InProgress), so that every state `status` shows is true.
extension Archiver {
    /// Runs once at start, after the event loop answers events (hsmd opens and reads
    /// managed files here, which raises events to itself) and before the control socket
    /// serves anyone. Bounded by the operations that were under way: a few files.
    func recoverAtStart() {
        for (name, outcome) in filesystems.storeIdentities {
            switch outcome {
            case .verified(let id): log.info("store \(name): identity \(id) verified")
            case .initialised(let id): log.notice("store \(name): first use, identity \(id) written to \(where_(name))")
            case .adopted(let id, let why): log.notice("store \(name): identity \(id) adopted (\(why))")
            case .refused(let why): log.critical("\(why). Recalls still run; a released file whose object is not found reads EIO")
            }
        }
        for case let store as PosixStore in filesystems.unwrappedStores {
            if let kind = store.identity.volatileFilesystem {
                log.warning("store \(store.name): \(store.root) is on \(kind): its objects vanish at unmount or reboot, and released files with them")
            }
        }
        do { try inProgress.makeDirectory() } catch {
            log.error("cannot prepare \(inProgress.directory): \(error); archive and release will fail until it can be made")
            return
        }
        for (note, entry) in inProgress.pending() {
            guard let entry, let object = ObjectID(hex: entry.object) else {
                log.error("\(inProgress.directory)/slot-\(note.slot) is not a note hsmd can read; cleared (an orphan object may remain in a store)")
                inProgress.end(note)
                continue
            }
            let done: Bool
            switch entry.kind {
            case .archive: done = undoArchive(entry, object)
            case .release: done = finishRelease(entry, object)
            case .remove: done = finishRemove(entry, object)
            }
            if done { inProgress.end(note) }
        }
        // After the notes: parts of an upload whose note was lost, or whose object was
        // deleted while the listing lagged, go too.
        for case let store as S3Store in filesystems.unwrappedStores {
            // A store that did not answer at start was logged above; its uploads wait for
            // the next start.
            let unanswered = filesystems.storeIdentities.contains { entry in
                if entry.store == store.name, case .refused = entry.outcome { return true }
                return false
            }
            if unanswered { continue }
            switch store.abortUnfinishedUploads() {
            case .success(0): break
            case .success(let n): log.notice("store \(store.name): aborted \(n) unfinished multipart upload\(n == 1 ? "" : "s") an hsmd that stopped mid-archive left under \(store.settings.prefix)objects/")
            case .failure(let e): log.warning("cannot abort unfinished multipart uploads: \(e); their parts stay in the bucket until the next start")
            }
        }
    }

    /// Where a store keeps its identity, for the log.
    private func where_(_ store: String) -> String {
        switch filesystems.unwrappedStores.first(where: { $0.name == store }) {
        case let s3 as S3Store: return "\(s3.settings.prefix)\(StoreIdentity.fileName) in bucket \(s3.settings.bucket)"
        default: return StoreIdentity.fileName
        }
    }

    private func store(named name: String) -> (any ObjectStore)? {
        filesystems.stores.first { $0.name == name }
    }

    /// The file a note names, opened (by handle, so a rename does not lose it). nil with
    /// `gone` true: it no longer exists; nil with `gone` false: it cannot be reached now.
    private func openNoted(_ entry: InProgress.Entry, _ flags: FileDescriptor.OpenFlags) -> (fd: FileDescriptor?, gone: Bool, why: String) {
        guard let fs = filesystems.filesystem(device: entry.device) else {
            return (nil, false, "its filesystem is not managed now")
        }
        if let hex = entry.handle, let handle = InodeHandle(hex: hex) {
            let mount: FileDescriptor
            do { mount = try FileDescriptor.open(fs.path, [.directory]) } catch { return (nil, false, "\(error)") }
            defer { mount.close() }
            do {
                let fd = try handle.open(mountFD: mount.rawValue, flags.union([.nonBlocking]), path: entry.path)
                return (FileDescriptor(rawValue: fd.rawValue, path: FileDescriptor.currentPath(of: fd.rawValue)), false, "")
            } catch {
                if error.errno == ESTALE { return (nil, true, "deleted") }
                return (nil, false, "\(error)")
            }
        }
        // No handle (the filesystem gave none): the path, if it is still the same inode.
        do {
            let fd = try FileDescriptor.open(entry.path, flags.union([.noFollow, .nonBlocking]))
            if let st = try? fd.stat(), st.device == entry.device && st.inode == entry.inode { return (fd, false, "") }
            fd.close()
            return (nil, false, "\(entry.path) is another file now")
        } catch {
            return (nil, error.errno == ENOENT, "\(error)")
        }
    }

    /// An archive stopped before its marker named the new object: delete the object. If
    /// the marker does name it (stopped just after), keep it and delete the old one.
    private func undoArchive(_ entry: InProgress.Entry, _ object: ObjectID) -> Bool {
        guard let store = store(named: entry.store) else {
            log.warning("interrupted archive of \(entry.path): store \(entry.store) is not configured now; object \(object) left in place")
            return true
        }
        if let problem = store.healthProblem() {
            log.error("interrupted archive of \(entry.path): cannot clean up object \(object) now: \(problem); kept for the next start")
            return false
        }
        let (opened, gone, why) = openNoted(entry, [.readOnly])
        var named = false
        if let fd = opened {
            defer { fd.close() }
            guard let st = try? fd.stat() else { return false }
            return locks.withLock(st.inodeKey) { () -> Bool in
                let marker = (try? fd.xattr(Marker.xattrName)).flatMap { $0 }.flatMap { try? MarkerCodec.decode($0) }
                named = marker?.object == object
                if named {
                    if let previous = entry.previous.flatMap(ObjectID.init(hex:)) { deletePrevious(previous, of: fd, from: store) }
                    log.notice("interrupted archive of \(fd.path): its marker names object \(object) already; kept")
                    return true
                }
                return delete(object, from: store, archiveOf: fd.path)
            }
        }
        guard gone else {
            log.error("interrupted archive of \(entry.path): cannot check the file (\(why)); object \(object) kept for the next start")
            return false
        }
        return delete(object, from: store, archiveOf: entry.path)
    }

    private func delete(_ object: ObjectID, from store: any ObjectStore, archiveOf path: String) -> Bool {
        do { try store.delete(object) } catch {
            log.error("interrupted archive of \(path): cannot delete its unfinished object \(object): \(error)")
            return false
        }
        log.notice("interrupted archive of \(path): removed its unfinished object \(object) from store \(store.name)")
        return true
    }

    /// A release stopped between its marker and its end: the punched blocks are holes,
    /// the others still local, and the mtime is the punch's. If every local block still
    /// matches the stored checksums and every offline one is still a hole, nothing has
    /// changed the file since: make the marker say exactly which blocks are offline and
    /// give the file its mtime and privileges back. Anything else is a real change, and stays `dirty`.
    private func finishRelease(_ entry: InProgress.Entry, _ object: ObjectID) -> Bool {
        let (opened, gone, why) = openNoted(entry, [.readWrite])
        guard let fd = opened else {
            if gone { return true }
            log.error("interrupted release of \(entry.path): cannot open it (\(why)); its state may show dirty until the next start")
            return false
        }
        defer { fd.close() }
        guard let st = try? fd.stat(), let fs = filesystems.filesystem(device: st.device) else { return false }
        return locks.withLock(st.inodeKey) { () -> Bool in
            // A mark the dead release left would hide later accesses from recall.
            try? group.stopIgnoring(fileAt: fd.rawValue, path: fd.path)
            guard let raw = try? fd.xattr(Marker.xattrName), var marker = try? MarkerCodec.decode(raw), marker.object == object else {
                return true  // re-archived or no longer managed since: nothing of this release is left
            }
            guard st.size == marker.size else {
                log.notice("interrupted release of \(fd.path): its size changed since; it stays dirty")
                return true
            }
            let record: ObjectRecord
            do { record = try fs.store.storedRecord(object) } catch {
                log.error("interrupted release of \(fd.path): cannot read object \(object)'s record (\(error)); kept for the next start")
                return false
            }
            guard record.blockShift == marker.blockShift, record.size == marker.size, record.checksums.count == marker.offline.count else {
                log.error("interrupted release of \(fd.path): object \(object) does not match the marker; left as it is")
                return true
            }
            switch verifyAfterInterruptedRelease(fd, &marker, record) {
            case .changed(let why):
                log.notice("interrupted release of \(fd.path): \(why) since; it stays dirty")
                return true
            case .failed(let why):
                log.error("interrupted release of \(fd.path): \(why); kept for the next start")
                return false
            case .unchanged:
                break
            }
            marker.releasedBlocks = UInt32(marker.offline.setCount)
            do {
                try fd.setXattr(Marker.xattrName, MarkerCodec.encode(marker))
                try fd.setModificationTime(marker.mtimeNs)
                // What the punches took (the note kept it from before the first one).
                try entry.privileges?.restore(fd)
                // Durable before the note goes: a few files, once per start.
                try fd.sync()
            } catch {
                log.error("interrupted release of \(fd.path): cannot correct its marker, mtime or privileges: \(error); kept for the next start")
                return false
            }
            log.notice("interrupted release of \(fd.path) finished: \(marker.offline.setCount) of \(marker.offline.count) blocks offline, the rest verified local, mtime\(entry.privileges.map { " and \($0.description)" } ?? "") restored")
            return true
        }
    }

    /// A remove stopped after it noted the object: if the marker no longer names it (the
    /// removal happened), make that durable and delete the object; if it still does, the
    /// remove did not happen and the object stays.
    private func finishRemove(_ entry: InProgress.Entry, _ object: ObjectID) -> Bool {
        guard let store = store(named: entry.store) else {
            log.warning("interrupted remove of \(entry.path): store \(entry.store) is not configured now; object \(object) left in place")
            return true
        }
        if let problem = store.healthProblem() {
            log.error("interrupted remove of \(entry.path): cannot delete object \(object) now: \(problem); kept for the next start")
            return false
        }
        let (opened, gone, why) = openNoted(entry, [.readOnly])
        if let fd = opened {
            defer { fd.close() }
            guard let st = try? fd.stat() else { return false }
            return locks.withLock(st.inodeKey) { () -> Bool in
                let marker = (try? fd.xattr(Marker.xattrName)).flatMap { $0 }.flatMap { try? MarkerCodec.decode($0) }
                if marker?.object == object {
                    log.notice("interrupted remove of \(fd.path): its marker still names object \(object); nothing was removed")
                    return true
                }
                do { try fd.sync() } catch {
                    log.error("interrupted remove of \(fd.path): cannot make its marker's removal durable (\(error)); object \(object) kept for the next start")
                    return false
                }
                return deleteRemoved(object, from: store, path: fd.path)
            }
        }
        guard gone else {
            log.error("interrupted remove of \(entry.path): cannot check the file (\(why)); object \(object) kept for the next start")
            return false
        }
        return deleteRemoved(object, from: store, path: entry.path)
    }

    private func deleteRemoved(_ object: ObjectID, from store: any ObjectStore, path: String) -> Bool {
        do { try store.delete(object) } catch {
            log.error("interrupted remove of \(path): cannot delete object \(object): \(error)")
            return false
        }
        log.notice("interrupted remove of \(path) finished: object \(object) deleted from store \(store.name)")
        return true
    }

    private enum Verification {
        case unchanged
        case changed(String)
        case failed(String)
    }

    /// Clears the offline bit of every block that is local and verified; reports a change
    /// for any byte that is not what the store holds.
    private func verifyAfterInterruptedRelease(_ fd: FileDescriptor, _ marker: inout Marker, _ record: ObjectRecord) -> Verification {
        let layout = marker.layout
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
        defer { buffer.deallocate() }
        for b in 0..<marker.offline.count {
            let r = layout.range(ofBlock: b)
            let data: [Range<Int64>]
            do { data = try fd.dataExtents(in: r) } catch { return .failed("\(error)") }
            guard let expected = record.checksums[b] else {
                // Release never writes where the file had a hole.
                if !data.isEmpty { return .changed("data appeared in block \(b), a hole when archived") }
                continue
            }
            if data.isEmpty {
                // Punched and still a hole: offline, as the marker says. A resident block
                // that became a hole was punched by someone else.
                if marker.offline[b] { continue }
                return .changed("block \(b) became a hole")
            }
            let len = Int(r.upperBound - r.lowerBound)
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<len])
            let n: Int
            do { n = try fd.read(into: view, at: r.lowerBound) } catch { return .failed("\(error)") }
            guard n == len, CRC32C.checksum(UnsafeRawBufferPointer(view)) == expected else {
                return .changed("block \(b) differs from the stored copy")
            }
            marker.offline[b] = false
        }
        return .unchanged
    }
}
