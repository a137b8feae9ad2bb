import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

/// `hsmctl pin` and `unpin` (Lustre's `hsm_set --norelease`, a cloud-files "always keep on
/// this device"): a pinned file's data stays local. Release refuses it, so migrate and the
/// watermarks, which free space only through release, leave it too; pinning a file whose
/// data is already offline brings that data back. The pin is set and cleared under the
/// inode lock every release holds, so no release is halfway through when pin returns.
extension Archiver {
    func pin(_ path: String) -> FileResult {
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite])
            defer { fd.close() }
            return try locks.withLock(st.inodeKey) { () throws(Refusal) -> FileResult in try pinLocked(fd, st, fs) }
        } catch let r as Refusal {
            return r.result
        } catch {
            return FileResult(path: path, outcome: .failed, reason: "\(error)")
        }
    }

    func unpin(_ path: String) -> FileResult {
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite])
            defer { fd.close() }
            return try locks.withLock(st.inodeKey) { () throws(Refusal) -> FileResult in
                let state = statusOf(fd.path, st, try readMarker(fd), fs).state
                do {
                    guard try fd.xattr(Pin.xattrName) != nil else {
                        return FileResult(path: fd.path, outcome: .done, reason: "not pinned", state: state)
                    }
                    try fd.removeXattr(Pin.xattrName)
                } catch {
                    throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "removing its pin: \(error); still pinned", state: state))
                }
                catalog?.noteFile(fd, fs: fs, marker: try? readMarker(fd), path: fd.path, pinned: false)
                log.info("unpinned \(fd.path)")
                return FileResult(path: fd.path, outcome: .done, reason: "unpinned: release and migrate may free it again", state: state)
            }
        } catch let r as Refusal {
            return r.result
        } catch {
            return FileResult(path: path, outcome: .failed, reason: "\(error)")
        }
    }

    /// Whether `path` is pinned; a file whose xattrs cannot be read counts as pinned, so a
    /// walk never frees a file it could not check.
    static func isPinned(path: String) -> Bool {
        do { return try Xattr.get(path: path, Pin.xattrName) != nil } catch { return true }
    }

    private func pinLocked(_ fd: FileDescriptor, _ st: FileStat, _ fs: ManagedFilesystem) throws(Refusal) -> FileResult {
        let marker = try readMarker(fd)
        let before = statusOf(fd.path, st, marker, fs).state
        func fail(_ reason: String) -> Refusal {
            Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: reason, state: before))
        }
        let already: Bool
        do { already = try fd.xattr(Pin.xattrName) != nil } catch { throw fail("reading its pin: \(error); not pinned") }
        if !already {
            // Durable (an xattr is inode metadata: fsync) before it is reported, so no
            // release after a crash frees a file the administrator was told is pinned.
            do {
                try fd.setXattr(Pin.xattrName, Pin.value)
                try fd.sync()
            } catch { throw fail("setting its pin: \(error); not pinned") }
            log.info("pinned \(fd.path)")
        }
        // The row even when already pinned: a catalog rebuilt meanwhile learns it here too.
        catalog?.noteFile(fd, fs: fs, marker: marker, path: fd.path, stat: st, pinned: true)
        guard let marker, marker.offline.setIndices().contains(where: { marker.layout.range(ofBlock: $0).lowerBound < st.size }) else {
            return FileResult(path: fd.path, outcome: .done, reason: already ? "already pinned" : "pinned", state: before, object: marker?.object.hex)
        }
        // Data already offline comes back now: pinned means local.
        let bytes: Int64
        let ticket = engine.inFlight.begin(path: { [path = fd.path] in path }, pid: 0, kind: "hsmctl pin")
        defer { engine.inFlight.end(ticket) }
        do { bytes = try engine.recall(fd, range: .wholeFile, key: st.inodeKey, store: fs.store, readahead: false, ticket: ticket) } catch {
            log.error("pin of \(fd.path): recall failed: \(error)")
            throw fail("pinned, but recalling its offline data failed: \(error); hsmctl recall brings it back once the store can be read")
        }
        let now = (try? fd.stat()) ?? st
        let after = statusOf(fd.path, now, try readMarker(fd), fs)
        return FileResult(path: fd.path, outcome: .done, reason: "pinned; its offline data recalled", state: after.state,
                          object: after.object?.hex, bytesRecalled: bytes)
    }
}
