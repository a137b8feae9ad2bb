import Glibc
import HSMKernel

/// Which files `hsmctl migrate` moves: old enough, big enough, not excluded.
public struct MigrationPolicy: Sendable, Equatable {
    /// Minimum age; a file's age counts from its most recent access or modification.
    public var olderThanSeconds: Int64?
    public var minSize: Int64?
    /// Globs: one with a "/" matches the whole path, one without matches the file name.
    public var exclude: [String]

    public init(olderThanSeconds: Int64? = nil, minSize: Int64? = nil, exclude: [String] = []) {
        self.olderThanSeconds = olderThanSeconds
        self.minSize = minSize
        self.exclude = exclude
    }

    /// nil when the file should migrate; otherwise why not.
    public func skipReason(path: String, stat: FileStat, nowNs: Int64) -> String? {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        for glob in exclude {
            let subject = glob.contains("/") ? path : name
            if fnmatch(glob, subject, 0) == 0 { return "excluded by \(glob)" }
        }
        if let minSize, stat.size < minSize { return "smaller than \(Units.formatBytes(minSize))" }
        if let olderThanSeconds {
            let last = max(stat.atimeNs, stat.mtimeNs)
            // Times far from now (btrfs keeps any 64-bit second) overflow the age: such a
            // file is as old, or as new, as can be.
            let (age, overflow) = nowNs.subtractingReportingOverflow(last)
            let ageSeconds = overflow ? (last > nowNs ? Int64.min : Int64.max) : age / 1_000_000_000
            if ageSeconds < olderThanSeconds { return "used in the last \(Units.formatDuration(olderThanSeconds))" }
        }
        return nil
    }
}
