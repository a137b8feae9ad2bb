import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// `hsmctl migrate`: walk the given trees, pick files by policy, archive and release
/// them on `jobs` threads of hsmd's own.
struct Migrator: Sendable {
    let archiver: Archiver

    func run(_ request: ControlRequest, progress: @escaping @Sendable (ProgressReport) -> Void) -> [FileResult] {
        let policy = MigrationPolicy(olderThanSeconds: request.olderThanSeconds, minSize: request.minSize, exclude: request.exclude)
        let now = Int64(Date().timeIntervalSince1970 * 1e9)
        var results: [FileResult] = []
        var candidates: [String] = []
        let report = Mutex(ProgressReport())

        func consider(_ path: String, _ st: FileStat, named: Bool) {
            report.withLock { $0.scanned += 1 }
            guard st.fileType == .regular else {
                results.append(FileResult(path: path, outcome: named ? .failed : .skipped, reason: "\(st.fileType.rawValue): not a regular file, skipped"))
                return
            }
            if let why = policy.skipReason(path: path, stat: st, nowNs: now) {
                results.append(FileResult(path: path, outcome: .skipped, reason: why))
            } else {
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
                TreeWalker.walk(path, device: st.device, onError: { dir, error in
                    results.append(FileResult(path: dir, outcome: .failed, reason: "cannot read directory: \(error)"))
                }) { p, s in consider(p, s, named: false) }
            } else {
                consider(path, st, named: true)
            }
        }

        let record: @Sendable (FileResult) -> Void = { r in
            let snapshot = report.withLock { p -> ProgressReport in
                switch r.outcome {
                case .done: p.done += 1
                case .skipped: p.skipped += 1
                case .failed: p.failed += 1
                }
                p.bytesArchived += r.bytesArchived
                p.bytesFreed += r.bytesFreed
                return p
            }
            progress(snapshot)
        }
        let jobs = max(1, min(request.jobs, 64))
        if request.dryRun {
            results += candidates.map { p in
                let r = dryRun(p)
                record(r)
                return r
            }
        } else {
            results += archiver.archiveMany(candidates, jobs: jobs, release: true, onResult: record)
        }
        return results.sorted { $0.path < $1.path }
    }

    private func dryRun(_ path: String) -> FileResult {
        let size = (try? FileStat.of(path: path).size) ?? 0
        return FileResult(path: path, outcome: .done, reason: "dry run: would migrate", bytesArchived: size)
    }
}
