import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

// The change journal's control operations (sync, status, queries), called on control threads.
extension Journal {
    /// Waits until every event queued in the kernel before this call is read and its
    /// directories are committed, so an answer reflects all changes made before it.
    func sync(timeoutSeconds: Int = 60) -> Bool {
        let b = Barrier()
        pendingBarriers.withLock { $0.append(b) }
        var one: UInt8 = 1
        _ = write(wakePipe.write, &one, 1)
        let extra = pauseFile == nil ? 1 : Journal.pauseCapSeconds + 1
        return b.done.wait(timeout: .now() + .seconds(timeoutSeconds + extra)) == .success
    }

    func index(of path: String) -> Int? { watched.firstIndex { $0.path == path } }

    /// The index of the managed filesystem holding `path`.
    func filesystem(containing path: String) -> Int? {
        guard let st = try? FileStat.of(path: path, followLinks: true) else {
            return watched.indices.filter { JournalRules.isUnder(path, watched[$0].path) }.max { watched[$0].path.count < watched[$1].path.count }
        }
        return watched.firstIndex { (try? FileStat.of(path: $0.path, followLinks: true).device) == st.device }
    }

    func epochs(_ fs: Int) throws(DatabaseError) -> [JournalEpoch] { try db.epochs(fs: watched[fs].id) }

    func status() throws(DatabaseError) -> [JournalFilesystemStatus] {
        var out: [JournalFilesystemStatus] = []
        for (i, w) in watched.enumerated() {
            let all = try epochs(i)
            if let cur = all.last { out.append(JournalFilesystemStatus(path: w.path, current: cur)) }
        }
        return out
    }

    /// Closes the current epoch of `fs` and starts the next; returns its number.
    func snapshot(_ fs: Int) -> Int64 {
        let w = watched[fs]
        let now = Date().timeIntervalSince1970
        let epoch = state.withLock { s -> Int64 in
            // Flush first, under the lock: from here on every change reaches us again,
            // and whatever the reader takes after the lock is released counts in the new
            // epoch (a change from just before may count in both: never in neither).
            do { try w.group.flushInodeMarks() } catch {
                log.error("change journal: \(error); ignore marks stay, so the epoch may miss changes")
            }
            s[fs].epoch += 1
            s[fs].seen.removeAll(keepingCapacity: true)
            s[fs].remarking.removeAll()
            // Queued under the lock, so no record of the new epoch is queued before it.
            enqueue(.beginEpoch(fs: fs, epoch: s[fs].epoch, time: now))
            return s[fs].epoch
        }
        log.info("change journal: \(w.path) epoch \(epoch) begins; change journal: \(eventsRead.load(ordering: .relaxed)) events read so far, \(transactions.load(ordering: .relaxed)) transactions")
        return epoch
    }

    func currentEpoch(_ fs: Int) -> Int64 { state.withLock { $0[fs].epoch } }

    /// Records (after everything queued before it) the epoch an incremental migrate began in.
    func rememberMigrate(_ fs: Int, path: String, epoch: Int64) {
        enqueue(.migrateEpoch(fs: fs, path: path, epoch: epoch))
    }

    func migrateEpoch(_ fs: Int, path: String) throws(DatabaseError) -> Int64? {
        try db.migrateEpoch(fs: watched[fs].id, path: path)
    }

    /// Changed directories since `since`, resolved to their paths now, under `root`.
    func changes(_ fs: Int, since: Int64, under root: String?) throws(DatabaseError) -> [JournalEntry] {
        let w = watched[fs]
        var out: [JournalEntry] = []
        for d in try db.directories(fs: w.id, since: since) {
            var entry = JournalEntry(path: d.path, epoch: d.epoch, deleted: true)
            if let h = InodeHandle(encoded: d.handle), let fd = try? h.openPath(mountFD: w.mountFD, what: w.path) {
                let p = FileDescriptor.currentPath(of: fd)
                close(fd)
                if p.hasSuffix(" (deleted)") { entry.path = String(p.dropLast(10)) } else { entry.path = p; entry.deleted = false }
            }
            if let root {
                guard let p = entry.path, JournalRules.isUnder(p, root) else { continue }
            }
            out.append(entry)
        }
        return out.sorted { ($0.path ?? "", $0.deleted ? 1 : 0) < ($1.path ?? "", $1.deleted ? 1 : 0) }
    }

    /// Directories renamed or moved since `since` that are now at or below `root`:
    /// their subtrees have new paths, so a scan of `root` must walk them whole.
    func movedTrees(_ fs: Int, since: Int64, under root: String) throws(DatabaseError) -> [String] {
        let w = watched[fs]
        var out: [String] = []
        for d in try db.movedDirectories(fs: w.id, since: since) {
            guard let h = InodeHandle(encoded: d.handle), let fd = try? h.openPath(mountFD: w.mountFD, what: w.path) else { continue }
            let p = FileDescriptor.currentPath(of: fd)
            close(fd)
            if !p.hasSuffix(" (deleted)") && JournalRules.isUnder(p, root) { out.append(p) }
        }
        return out.sorted()
    }

    /// "Did anything under `path` change since `since`?" PATH's own directory (a file's
    /// parent) is looked up by handle; its ctime also counts, so a directory renamed or
    /// recreated into place after the epoch began reads as changed.
    func changed(_ fs: Int, path: String, since: Int64) throws(DatabaseError) -> JournalVerdict {
        let w = watched[fs]
        var dir = path
        if let st = try? FileStat.of(path: path), st.fileType != .directory { dir = (path as NSString).deletingLastPathComponent }
        let all = try epochs(fs)
        let handle: InodeHandle
        let st: FileStat
        do { handle = try InodeHandle.of(path: dir); st = try FileStat.of(path: dir) } catch {
            return JournalVerdict(answer: .changed, reason: "changed: \(dir) cannot be looked up now (\(error))")
        }
        var recorded = try db.epochsRecording(fs: w.id, handle: handle.encoded, since: since)
        recorded += try db.epochsMoved(fs: w.id, handle: handle.encoded, since: since)
        if let start = all.first(where: { $0.epoch == since })?.started, JournalRules.ctimeWithin(st.ctimeNs, epochStart: start) {
            recorded.append(all.last?.epoch ?? since)
        }
        return JournalRules.verdict(path: path, since: since, epochs: all, pathRecordedIn: recorded)
    }
}
