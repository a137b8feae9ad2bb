import Glibc
import HSMCore
import HSMKernel
import HSMStores

/// `hsmctl remove` (Lustre's hsm_remove): a resident or archived file loses its stored
/// copy and becomes a plain unmanaged file. Order of durability (invariant 8): the marker
/// goes and that is made durable before the object is deleted, so a crash leaves at worst
/// an orphan (deleted at the next start, or by hsmctl gc), never a marker naming a missing
/// object.
extension Archiver {
    /// What one remove did, for the one place that records it.
    struct RemoveOutcome {
        var result: FileResult
        /// The object the marker named, and its store, when the marker was removed.
        var object: ObjectID?
        var store: String?
        /// The object is gone from the store (false: left as an orphan).
        var objectDeleted = false
    }

    /// `recall`: bring back released data first instead of refusing.
    func remove(_ path: String, recall: Bool) -> FileResult {
        let outcome: RemoveOutcome
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite])
            defer { fd.close() }
            outcome = try locks.withLock(st.inodeKey) { () throws(Refusal) -> RemoveOutcome in try removeLocked(fd, st, fs, recall: recall) }
        } catch let r as Refusal {
            outcome = RemoveOutcome(result: r.result)
        } catch {
            outcome = RemoveOutcome(result: FileResult(path: path, outcome: .failed, reason: "\(error)"))
        }
        return removed(outcome)
    }

    /// Every remove's outcome passes here once (the catalog records it here).
    private func removed(_ outcome: RemoveOutcome) -> FileResult {
        if outcome.objectDeleted, let object = outcome.object { catalog?.enqueue(.deleteObject(object.hex)) }
        return outcome.result
    }

    /// Under the inode lock, which every recall and release of the file also holds: no
    /// block can go offline or come back meanwhile. No lease is needed: nothing is punched,
    /// and a program writing the file meanwhile writes a file whose data is all local.
    private func removeLocked(_ fd: FileDescriptor, _ initial: FileStat, _ fs: ManagedFilesystem, recall: Bool) throws(Refusal) -> RemoveOutcome {
        func fail(_ reason: String, _ state: HSMState? = nil) -> Refusal {
            Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: reason, state: state))
        }
        var st = initial
        guard var marker = try readMarker(fd) else {
            return RemoveOutcome(result: FileResult(path: fd.path, outcome: .done, reason: "not archived: no stored copy to remove", state: .resident))
        }
        // Blocks past the end of a truncated file hold nothing anyone can read.
        func offlineBlocks(_ m: Marker, _ size: Int64) -> Int {
            m.offline.setIndices().filter { m.layout.range(ofBlock: $0).lowerBound < size }.count
        }
        if offlineBlocks(marker, st.size) > 0 {
            let state = statusOf(fd.path, st, marker, fs).state
            guard recall else {
                throw fail("\(state.rawValue): part of its data is only in the store; nothing removed (recall it first: hsmctl remove --recall, or hsmctl recall)", state)
            }
            do { _ = try engine.recall(fd, range: .wholeFile, key: st.inodeKey, store: fs.store, readahead: false) } catch {
                throw fail("cannot recall its data: \(error); nothing removed", state)
            }
            do { st = try fd.stat() } catch { throw fail("\(error); nothing removed") }
            guard let now = try readMarker(fd) else {
                return RemoveOutcome(result: FileResult(path: fd.path, outcome: .done, reason: "recalled; not archived any more", state: .resident))
            }
            marker = now
            if offlineBlocks(marker, st.size) > 0 { throw fail("blocks are still offline after the recall; nothing removed", state) }
        }
        // Deleting from a store that does not prove its identity could miss the object
        // (not mounted) and report it gone.
        if let problem = fs.store.healthProblem() { throw fail("\(problem); nothing removed") }
        let note = try noteInProgress(.remove, fd, st, object: marker.object, store: fs.store)
        defer { inProgress.end(note) }
        do { try fd.removeXattr(Marker.xattrName) } catch { throw fail("removing its marker: \(error); nothing removed") }
        // The row says unmanaged now; the object's row goes once the object is deleted.
        catalog?.noteFile(fd, fs: fs, marker: nil, path: fd.path)
        var outcome = RemoveOutcome(result: FileResult(path: fd.path, outcome: .done, reason: "stored copy removed", state: .resident, object: marker.object.hex),
                                    object: marker.object, store: fs.store.name)
        // An xattr change is inode metadata: an fsync of the file makes it durable.
        do { try fd.sync() } catch {
            log.warning("\(fd.path): its marker's removal could not be made durable (\(error)); object \(marker.object) kept")
            outcome.result.outcome = .failed
            outcome.result.reason = "its marker is removed but that could not be made durable (\(error)); object \(marker.object) kept in store \(fs.store.name) (hsmctl gc deletes it once orphaned past the grace)"
            return outcome
        }
        do { try fs.store.delete(marker.object) } catch {
            log.warning("\(fd.path): marker removed, but deleting object \(marker.object) failed: \(error)")
            outcome.result.outcome = .failed
            outcome.result.reason = "its marker is removed, but deleting object \(marker.object) from store \(fs.store.name) failed: \(error) (an orphan now; hsmctl gc deletes it past the grace)"
            return outcome
        }
        outcome.objectDeleted = true
        log.info("removed the stored copy of \(fd.path) (object \(marker.object), store \(fs.store.name))")
        return outcome
    }
}
