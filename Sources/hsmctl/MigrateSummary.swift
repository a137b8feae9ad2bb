import HSMCore

/// What `hsmctl migrate` prints without --json, counted as the results arrive: totals,
/// skips by reason, the files not done, and (for -v and --dry-run) the files done.
struct MigrateSummary {
    let keepDone: Bool
    private(set) var doneCount = 0
    private(set) var bytesArchived: Int64 = 0
    private(set) var bytesFreed: Int64 = 0
    private(set) var skipped: [String: Int] = [:]
    private(set) var notDone: [FileResult] = []
    private(set) var done: [FileResult] = []

    init(keepDone: Bool) { self.keepDone = keepDone }

    mutating func add(_ part: [FileResult]) {
        for f in part {
            bytesArchived += f.bytesArchived
            bytesFreed += f.bytesFreed
            switch f.outcome {
            case .done:
                doneCount += 1
                if keepDone { done.append(f) }
            case .skipped: skipped[f.reason ?? "skipped", default: 0] += 1
            case .failed: notDone.append(f)
            }
        }
    }
}
