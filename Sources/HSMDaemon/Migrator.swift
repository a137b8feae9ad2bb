import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// `hsmctl migrate`: walk the given trees, pick files by policy, archive and release
/// them on `jobs` threads of hsmd's own.
struct Migrator: Sendable {
    let archiver: Archiver
    var journal: Journal? = nil

    func run(_ request: ControlRequest, progress: @escaping @Sendable (ProgressReport) -> Void) -> [FileResult] {
        var notes: [String] = []
        return run(request, notes: &notes, progress: progress)
    }

    /// `notes` receives what an operator should know about the scan (incremental or full).
    /// `job`: the listed job (hsmctl queue); once it is cancelled the scan considers no
    /// more files and no further file is migrated.
    func run(_ request: ControlRequest, notes: inout [String], job: Job? = nil, progress: @escaping @Sendable (ProgressReport) -> Void) -> [FileResult] {
        let policy = MigrationPolicy(olderThanSeconds: request.olderThanSeconds, minSize: request.minSize, exclude: request.exclude)
        let now = Int64(Date().timeIntervalSince1970 * 1e9)
        var results: [FileResult] = []
        var candidates: [String] = []
        var considered = Set<String>()
        var seenInodes = Set<InodeKey>()
        var remember: [(fs: Int, path: String, epoch: Int64)] = []
        let report = Mutex(ProgressReport())
        var stopped = false

        func consider(_ path: String, _ st: FileStat, named: Bool) {
            // An incremental scan may reach a file twice (a changed directory and a new
            // subtree holding it); consider it once.
            guard considered.insert(path).inserted else { return }
            let scanned = report.withLock { p -> Int in p.scanned += 1; return p.scanned }
            if let job, scanned % 256 == 0 {
                job.setProgress(report.withLock { $0 })
                if job.isCancelled { stopped = true }
            }
            if stopped { return }
            guard st.fileType == .regular else {
                results.append(FileResult(path: path, outcome: named ? .failed : .skipped, reason: "\(st.fileType.rawValue): not a regular file, skipped"))
                return
            }
            if let why = policy.skipReason(path: path, stat: st, nowNs: now) {
                results.append(FileResult(path: path, outcome: .skipped, reason: why))
            } else if Archiver.isPinned(path: path) {
                results.append(FileResult(path: path, outcome: .skipped, reason: "pinned (hsmctl unpin lets migrate free it)"))
            } else if seenInodes.contains(st.inodeKey) {
                // Hard links: one inode, one archive (a dry run counts its bytes once too).
                // The reason names no path, so the summary counts these on one line.
                results.append(FileResult(path: path, outcome: .skipped, reason: "hard link: another name of a file done in this run"))
            } else {
                seenInodes.insert(st.inodeKey)
                candidates.append(path)
            }
        }

        for path in request.paths {
            let st: FileStat
            do { st = try FileStat.of(path: path) } catch {
                results.append(FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)"))
                continue
            }
            guard archiver.filesystems.filesystem(device: st.device) != nil else {
                results.append(FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(archiver.filesystems.pathsDescription))"))
                continue
            }
            if st.fileType == .directory {
                let walk = { (root: String) in
                    TreeWalker.walk(root, device: st.device, failed: {
                        results.append(FileResult(path: $0.path, outcome: .failed, reason: $0.reason))
                    }) { p, s in consider(p, s, named: false) }
                }
                if request.incremental == true {
                    let plan = incrementalPlan(path, dryRun: request.dryRun)
                    notes.append(plan.note)
                    if let r = plan.remember { remember.append(r) }
                    if let dirs = plan.directories {
                        for dir in dirs { scanOneDirectory(dir, consider: { consider($0, $1, named: false) }) }
                        // A tree moved in from elsewhere holds files this path never saw.
                        for tree in plan.movedTrees { walk(tree) }
                        continue
                    }
                }
                walk(path)
            } else {
                consider(path, st, named: true)
            }
        }

        let record: @Sendable (FileResult) -> Void = { r in
            let snapshot = report.withLock { p -> ProgressReport in
                p.count(r)
                return p
            }
            job?.setProgress(snapshot)
            progress(snapshot)
        }
        job?.setTotal(candidates.count)
        job?.setProgress(report.withLock { $0 })
        let jobs = max(1, min(request.jobs, 64))
        if request.dryRun {
            results += candidates.map { p in
                let r = dryRun(p)
                record(r)
                return r
            }
        } else {
            results += archiver.archiveMany(candidates, jobs: jobs, release: true,
                                            cancelled: { job?.isCancelled ?? false }, onCopied: { job?.noteCopied() }, onResult: record)
        }
        // Only a finished run moves the incremental starting point on.
        if stopped || job?.cancelReason != nil {
            notes.append("stopped: \(job?.cancelReason ?? "cancelled"); files not reached were not migrated")
            return results.sorted { $0.path < $1.path }
        }
        for r in remember { journal?.rememberMigrate(r.fs, path: r.path, epoch: r.epoch) }
        return results.sorted { $0.path < $1.path }
    }

    struct IncrementalPlan {
        let note: String
        /// The changed directories to scan; nil: scan the whole tree.
        var directories: [String]?
        /// Directories moved or renamed into the tree since then: walked whole.
        var movedTrees: [String] = []
        var remember: (fs: Int, path: String, epoch: Int64)?
    }

    /// What an incremental run of `path` must scan. Every run starts a new epoch and
    /// remembers it, so the next run reads what changed from then on (changes made during
    /// this run included). A range with an incomplete epoch, or no earlier run, means a
    /// full scan.
    private func incrementalPlan(_ path: String, dryRun: Bool) -> IncrementalPlan {
        guard let journal else { return IncrementalPlan(note: "incremental: \(path): full scan: the change journal is off") }
        guard let fs = journal.filesystem(containing: path) else { return IncrementalPlan(note: "incremental: \(path): full scan: no journal for its filesystem") }
        do {
            guard journal.sync() else { return IncrementalPlan(note: "incremental: \(path): full scan: the change journal did not catch up in time") }
            let last = try journal.migrateEpoch(fs, path: path)
            var remember: (fs: Int, path: String, epoch: Int64)?
            if !dryRun {
                remember = (fs, path, journal.snapshot(fs))
                _ = journal.sync()
            }
            guard let last else {
                return IncrementalPlan(note: "incremental: \(path): full scan: no earlier incremental run", remember: remember)
            }
            let epochs = try journal.epochs(fs)
            if let problem = JournalRules.rangeProblem(since: last, epochs: epochs) {
                return IncrementalPlan(note: "incremental: \(path): full scan: \(problem)", remember: remember)
            }
            let dirs = try journal.changes(fs, since: last, under: path).filter { !$0.deleted }.compactMap(\.path)
            let moved = try journal.movedTrees(fs, since: last, under: path)
            let movedNote = moved.isEmpty ? "" : ", \(moved.count) moved-in tree\(moved.count == 1 ? "" : "s") walked whole"
            return IncrementalPlan(note: "incremental: \(path): \(dirs.count) changed director\(dirs.count == 1 ? "y" : "ies") since epoch \(last)\(movedNote)",
                                   directories: dirs, movedTrees: moved, remember: remember)
        } catch {
            return IncrementalPlan(note: "incremental: \(path): full scan: the journal cannot be read: \(error)")
        }
    }

    /// The files directly in a changed directory. Its subdirectories are listed on their
    /// own when anything in them changed (ancestors are always recorded).
    private func scanOneDirectory(_ dir: String, consider: (String, FileStat) -> Void) {
        guard let names = try? Directory.entries(dir).sorted() else { return }
        for name in names {
            let p = dir == "/" ? "/" + name : dir + "/" + name
            guard let st = try? FileStat.of(path: p), st.fileType != .directory else { continue }
            consider(p, st)
        }
    }

    private func dryRun(_ path: String) -> FileResult {
        let size = (try? FileStat.of(path: path).size) ?? 0
        return FileResult(path: path, outcome: .done, reason: "dry run: would migrate", bytesArchived: size)
    }
}
