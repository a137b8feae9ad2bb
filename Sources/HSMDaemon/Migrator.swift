import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// `hsmctl migrate`: walk the given trees, pick files by policy, archive and release
/// them on `jobs` threads of hsmd's own.
///
/// Memory stays bounded whatever the tree's size: the walk hands candidates to archive a
/// batch at a time (`batchSize`), and results go to `emit` as they come, in parts of at
/// most `ControlServer.filesPerLine`, never held for the whole run. Only a hard-linked
/// file (its inode, once) and, in an incremental run, each path considered are kept to
/// the end.
struct Migrator: Sendable {
    let archiver: Archiver
    var journal: Journal? = nil
    /// Candidates archived together: the walk pauses while a batch is archived.
    var batchSize = 1024
    var partSize = ControlServer.filesPerLine

    /// `notes` receives what an operator should know about the scan (incremental or full).
    /// `job`: the listed job (hsmctl queue); once it is cancelled the scan considers no
    /// more files and no further file is migrated. `emit` gets every file's result, in
    /// parts, in no particular order (hsmctl sorts). Returns the run's totals.
    func run(_ request: ControlRequest, notes: inout [String], job: Job? = nil,
             emit: ([FileResult]) -> Void,
             progress: @escaping @Sendable (ProgressReport) -> Void) -> ProgressReport {
        let policy = MigrationPolicy(olderThanSeconds: request.olderThanSeconds, minSize: request.minSize, exclude: request.exclude)
        let now = Int64(Date().timeIntervalSince1970 * 1e9)
        var pending: [FileResult] = []
        var totals = ProgressReport()
        var candidates: [String] = []
        var found = 0
        // Only an incremental scan can reach a path twice (a changed directory and a new
        // subtree holding it); only a hard-linked inode can be reached under two names.
        var considered = Set<String>()
        var seenLinked = Set<InodeKey>()
        var remember: [(fs: Int, path: String, epoch: Int64)] = []
        let report = Mutex(ProgressReport())
        var stopped = false
        let jobs = max(1, min(request.jobs, 64))

        func add(_ r: FileResult) {
            totals.count(r)
            pending.append(r)
            if pending.count >= partSize { flush() }
        }
        func flush() {
            guard !pending.isEmpty else { return }
            emit(pending)
            pending.removeAll(keepingCapacity: true)
        }
        let record: @Sendable (FileResult) -> Void = { r in
            let snapshot = report.withLock { p -> ProgressReport in
                p.count(r)
                return p
            }
            job?.setProgress(snapshot)
            progress(snapshot)
        }
        /// Archives and releases (or, in a dry run, sizes) the candidates found so far.
        func migrateBatch() {
            guard !candidates.isEmpty else { return }
            let batch = candidates
            candidates.removeAll(keepingCapacity: true)
            // hsmctl queue shows the scan so far while the batch is archived.
            job?.setProgress(report.withLock { $0 })
            if request.dryRun {
                for p in batch {
                    let r = dryRun(p)
                    record(r)
                    add(r)
                }
            } else {
                for r in archiver.archiveMany(batch, jobs: jobs, release: true, cancelled: { job?.isCancelled ?? false },
                                              onCopied: { job?.noteCopied() }, onResult: record) { add(r) }
            }
        }

        func consider(_ path: String, _ st: FileStat, named: Bool) {
            if request.incremental == true { guard considered.insert(path).inserted else { return } }
            let scanned = report.withLock { p -> Int in p.scanned += 1; return p.scanned }
            if let job, scanned % 256 == 0 {
                job.setProgress(report.withLock { $0 })
                if job.isCancelled { stopped = true }
            }
            if stopped { return }
            guard st.fileType == .regular else {
                add(FileResult(path: path, outcome: named ? .failed : .skipped, reason: "\(st.fileType.rawValue): not a regular file, skipped"))
                return
            }
            if let why = policy.skipReason(path: path, stat: st, nowNs: now) {
                add(FileResult(path: path, outcome: .skipped, reason: why))
            } else if Archiver.isPinned(path: path) {
                add(FileResult(path: path, outcome: .skipped, reason: "pinned (hsmctl unpin lets migrate free it)"))
            } else if st.linkCount > 1 && !seenLinked.insert(st.inodeKey).inserted {
                // Hard links: one inode, one archive (a dry run counts its bytes once too).
                // The reason names no path, so the summary counts these on one line.
                add(FileResult(path: path, outcome: .skipped, reason: "hard link: another name of a file done in this run"))
            } else {
                candidates.append(path)
                found += 1
                // The total grows while the walk goes on (hsmctl queue).
                job?.setTotal(found)
                if candidates.count >= batchSize { migrateBatch() }
            }
        }

        for path in Self.withoutOverlaps(request.paths) {
            let st: FileStat
            do { st = try FileStat.of(path: path) } catch {
                add(FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)"))
                continue
            }
            guard archiver.filesystems.filesystem(device: st.device) != nil else {
                add(FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(archiver.filesystems.pathsDescription))"))
                continue
            }
            if st.fileType == .directory {
                func walk(_ root: String) {
                    TreeWalker.walk(root, device: st.device, failed: {
                        add(FileResult(path: $0.path, outcome: .failed, reason: $0.reason))
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
        migrateBatch()
        flush()
        job?.setProgress(report.withLock { $0 })
        // Only a finished run moves the incremental starting point on.
        if stopped || job?.cancelReason != nil {
            notes.append("stopped: \(job?.cancelReason ?? "cancelled"); files not reached were not migrated")
            return totals
        }
        for r in remember { journal?.rememberMigrate(r.fs, path: r.path, epoch: r.epoch) }
        return totals
    }

    /// `paths` less those another of them already covers: a repeat, or a path inside a
    /// directory also named, on the same filesystem (a walk does not cross into another).
    /// Compared by their real paths, so `/mnt/./a` and a symlink to it count as `/mnt/a`.
    /// What cannot be resolved, and a named symlink (refused as not a regular file), is
    /// kept: its stat reports it.
    static func withoutOverlaps(_ paths: [String]) -> [String] {
        guard paths.count > 1 else { return paths }
        struct Root { let real: String; let device: UInt64; let isDirectory: Bool }
        let roots: [Root?] = paths.map { p in
            guard let st = try? FileStat.of(path: p), st.fileType != .symlink, let real = try? Filesystem.realPath(p) else { return nil }
            return Root(real: real, device: st.device, isDirectory: st.fileType == .directory)
        }
        return paths.indices.compactMap { i -> String? in
            guard let me = roots[i] else { return paths[i] }
            let covered = roots.indices.contains { j in
                guard j != i, let other = roots[j], other.device == me.device else { return false }
                if other.real == me.real { return j < i }
                return other.isDirectory && me.real.hasPrefix(other.real == "/" ? "/" : other.real + "/")
            }
            return covered ? nil : paths[i]
        }
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
