import HSMCore

extension ProgressReport {
    /// Counts one file's outcome and bytes (a job's and a migrate's running totals).
    mutating func count(_ r: FileResult) {
        switch r.outcome {
        case .done: done += 1
        case .skipped: skipped += 1
        case .failed: failed += 1
        }
        bytesArchived += r.bytesArchived
        bytesFreed += r.bytesFreed
    }
}
