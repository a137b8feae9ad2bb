import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores

/// `hsmctl gc`: deletes objects that no marker on any managed filesystem names, no
/// operation in progress uses, and that were archived longer ago than the grace (a file
/// restored from a backup with its marker still needs its object).
///
/// Order: each store's listing first, then the in-progress notes, the walk, the change
/// journal's record of what moved during the walk, and the notes again. An object listed
/// was put before the listing; its archive's note lives until its marker is set, so it is
/// either in the notes or its marker is there for the walk to see. A file moved during
/// the walk into a directory already walked is in one the journal says changed, which is
/// scanned again. Anything that cannot be read, or a journal that cannot vouch for the
/// walk, and nothing is deleted.
struct GarbageCollector {
    let archiver: Archiver
    let journal: Journal?

    struct Outcome {
        var files: [FileResult] = []
        var notes: [String] = []
    }

    func run(graceSeconds: Int64, dryRun: Bool) -> Outcome {
        var out = Outcome()
        let filesystems = archiver.filesystems
        var listings: [(store: any ObjectStore, ids: [ObjectID])] = []
        for store in filesystems.stores {
            if let problem = store.healthProblem() {
                out.files.append(FileResult(path: "store \(store.name)", outcome: .failed, reason: "\(problem); nothing deleted from it"))
                continue
            }
            do { listings.append((store, try store.list())) } catch {
                out.files.append(FileResult(path: "store \(store.name)", outcome: .failed, reason: "cannot list its objects: \(error); nothing deleted from it"))
            }
        }

        // The journal's epoch begins before the walk: what changes from here on is recorded.
        var epochs: [(fs: ManagedFilesystem, index: Int, epoch: Int64)] = []
        var unvouched: [(path: String, why: String)] = []
        for fs in filesystems.all {
            guard let journal, let i = journal.index(of: fs.path) else {
                unvouched.append((fs.path, "the change journal is off (journal = false): a file moved during the walk could be missed"))
                continue
            }
            guard journal.sync() else { unvouched.append((fs.path, "the change journal did not catch up in time")); continue }
            epochs.append((fs, i, journal.snapshot(i)))
        }
        var inUse = objectsInProgress()
        var scan = MarkerScan()
        for fs in filesystems.all { scan.walk(fs.path, device: fs.device) }
        if let journal {
            let caughtUp = journal.sync()
            for (fs, i, epoch) in epochs {
                guard caughtUp else { unvouched.append((fs.path, "the change journal did not catch up in time")); continue }
                do {
                    if let problem = JournalRules.rangeProblem(since: epoch, epochs: try journal.epochs(i)) {
                        unvouched.append((fs.path, "the change journal cannot vouch for the walk: \(problem)"))
                        continue
                    }
                    for entry in try journal.changes(i, since: epoch, under: fs.path) where !entry.deleted {
                        if let dir = entry.path { scan.scanOne(dir) }
                    }
                    for tree in try journal.movedTrees(i, since: epoch, under: fs.path) { scan.walk(tree, device: fs.device) }
                } catch {
                    unvouched.append((fs.path, "the change journal cannot be read: \(error)"))
                }
            }
        }
        inUse.formUnion(objectsInProgress())
        let complete = scan.failures.isEmpty && unvouched.isEmpty
        out.files += scan.failures
        for u in unvouched { out.files.append(FileResult(path: u.path, outcome: .failed, reason: u.why)) }
        if !complete { out.notes.append("the walk of the managed filesystems is incomplete (see above): nothing is deleted") }

        let now = Int64(Date().timeIntervalSince1970)
        for (store, ids) in listings {
            var named = 0, busy = 0, deleted = 0, kept = 0, candidates = 0, failed = 0
            var freed: Int64 = 0
            for id in ids.sorted(by: { $0.hex < $1.hex }) {
                if scan.named[id] != nil { named += 1; continue }
                if inUse.contains(id) { busy += 1; continue }
                let r = decide(id, store: store, now: now, graceSeconds: graceSeconds, dryRun: dryRun || !complete, complete: complete)
                let deletedNow = r.outcome == .done && !dryRun && complete
                switch r.outcome {
                case .done: candidates += 1; if !dryRun && complete { deleted += 1; freed += r.bytesFreed }
                case .skipped: kept += 1
                case .failed: failed += 1
                }
                out.files.append(collected(r, object: id, store: store, deleted: deletedNow))
            }
            let action = dryRun ? "would delete" : (complete ? "deleted" : "would delete (not deleted)")
            out.notes.append("store \(store.name): \(ids.count) object(s): \(named) named by markers, \(busy) in use by an operation in progress; "
                + "\(action) \(dryRun || !complete ? candidates : deleted) orphan(s)\(freed > 0 ? " (\(Units.formatBytes(freed)))" : ""), kept \(kept) within the grace (\(Units.formatDuration(graceSeconds)))"
                + (failed > 0 ? ", \(failed) not done" : ""))
        }
        out.notes.append("\(scan.files) file(s) walked on \(filesystems.all.count) managed filesystem(s)")
        return out
    }

    /// Every orphan gc decides about passes here once (the catalog records it here):
    /// `deleted` true when the object is gone from `store`.
    private func collected(_ r: FileResult, object: ObjectID, store: any ObjectStore, deleted: Bool) -> FileResult {
        if deleted { archiver.catalog?.enqueue(.deleteObject(object.hex)) }
        return r
    }

    /// One orphan: deleted (done), kept (skipped) or not deleted (failed). `dryRun`
    /// includes an incomplete walk, which deletes nothing.
    private func decide(_ id: ObjectID, store: any ObjectStore, now: Int64, graceSeconds: Int64, dryRun: Bool, complete: Bool) -> FileResult {
        let record: ObjectRecord
        do { record = try store.storedRecord(id) } catch {
            return FileResult(path: "store \(store.name)", outcome: .skipped, reason: "kept: its record cannot be read (\(error)), so its archive time is unknown", object: id.hex)
        }
        let age = now - record.archivedAt
        let ago = age >= 0 ? "archived \(Self.formatAge(age)) ago" : "archived in the future (\(record.archivedAt))"
        guard age >= graceSeconds else {
            return FileResult(path: record.path, outcome: .skipped, reason: "kept: orphan \(ago), within the grace (\(Units.formatDuration(graceSeconds)))", object: id.hex)
        }
        if dryRun {
            let why = complete ? "would delete" : "would delete, but the walk is incomplete"
            return FileResult(path: record.path, outcome: .done, reason: "\(why): orphan \(ago), store \(store.name)", object: id.hex, bytesFreed: record.storedBytes)
        }
        do { try store.delete(id) } catch {
            return FileResult(path: record.path, outcome: .failed, reason: "deleting it from store \(store.name) failed: \(error)", object: id.hex)
        }
        archiver.log.info("gc: deleted orphan object \(id) (\(record.path), \(ago)) from store \(store.name)")
        return FileResult(path: record.path, outcome: .done, reason: "deleted: orphan \(ago), store \(store.name)", object: id.hex, bytesFreed: record.storedBytes)
    }

    /// The objects the in-progress notes name (new and previous ones).
    private func objectsInProgress() -> Set<ObjectID> {
        var out = Set<ObjectID>()
        for (_, entry) in archiver.inProgress.pending() {
            guard let entry else { continue }
            if let id = ObjectID(hex: entry.object) { out.insert(id) }
            if let p = entry.previous, let id = ObjectID(hex: p) { out.insert(id) }
        }
        return out
    }

    /// 3700 → "1h"; the largest whole unit.
    static func formatAge(_ seconds: Int64) -> String {
        for (unit, n) in [("d", Int64(86400)), ("h", 3600), ("m", 60)] where seconds >= n { return "\(seconds / n)\(unit)" }
        return "\(seconds)s"
    }
}
