import Foundation

/// One epoch of one filesystem's change journal, as hsmd reports it.
public struct JournalEpoch: Codable, Sendable, Equatable {
    public var epoch: Int64
    /// Seconds since 1970.
    public var started: Double
    public var complete: Bool
    /// Why the epoch is incomplete (overflow, unclean stop, not watched).
    public var reason: String?
    /// Directories recorded in this epoch.
    public var directories: Int
    /// Database transactions that wrote this epoch's records.
    public var transactions: Int

    public init(epoch: Int64, started: Double, complete: Bool, reason: String? = nil, directories: Int = 0, transactions: Int = 0) {
        self.epoch = epoch; self.started = started; self.complete = complete; self.reason = reason
        self.directories = directories; self.transactions = transactions
    }
}

/// `hsmctl journal status`: one row per filesystem, its current epoch.
public struct JournalFilesystemStatus: Codable, Sendable, Equatable {
    public var path: String
    public var current: JournalEpoch

    public init(path: String, current: JournalEpoch) { self.path = path; self.current = current }
}

/// `hsmctl journal list`: one changed directory, resolved to its path now.
public struct JournalEntry: Codable, Sendable, Equatable {
    /// The path now; for a deleted directory the last path hsmd knew (nil if none).
    public var path: String?
    /// The latest epoch in the range in which it changed.
    public var epoch: Int64
    public var deleted: Bool

    public init(path: String?, epoch: Int64, deleted: Bool) { self.path = path; self.epoch = epoch; self.deleted = deleted }
}

/// `hsmctl journal changed`: the answer and its one-line reason.
public struct JournalVerdict: Codable, Sendable, Equatable {
    public enum Answer: String, Codable, Sendable { case changed, unchanged, unknown }
    public var answer: Answer
    public var reason: String

    public init(answer: Answer, reason: String) { self.answer = answer; self.reason = reason }

    /// hsmctl's exit status: 0 changed, 1 nothing changed, 3 unknown.
    public var exitCode: Int32 {
        switch answer {
        case .changed: return 0
        case .unchanged: return 1
        case .unknown: return 3
        }
    }
}

/// The rules that turn journal records into answers; pure, so they are unit-tested.
public enum JournalRules {
    /// Whether the epochs `since...current` can be trusted: nil when every one of them is
    /// complete and known, else why not. `epochs` are the filesystem's epochs in any order.
    public static func rangeProblem(since: Int64, epochs: [JournalEpoch]) -> String? {
        guard let current = epochs.map(\.epoch).max(), let first = epochs.map(\.epoch).min() else {
            return "the journal has no epochs for this filesystem yet"
        }
        if since > current { return "epoch \(since) has not begun (the current epoch is \(current))" }
        if since < first { return "epoch \(since) predates the journal of this filesystem (its first epoch is \(first))" }
        let byNumber = Dictionary(epochs.map { ($0.epoch, $0) }, uniquingKeysWith: { a, _ in a })
        for n in since...current {
            guard let e = byNumber[n] else { return "epoch \(n) is missing from the journal" }
            if !e.complete { return "epoch \(n) is incomplete: \(e.reason ?? "reason not recorded")" }
        }
        return nil
    }

    /// The answer to "did anything under PATH change since epoch `since`?". Because every
    /// recorded directory comes with all its ancestors, `pathRecordedIn` (the epochs in
    /// range that recorded PATH's directory itself) decides it without a walk.
    public static func verdict(path: String, since: Int64, epochs: [JournalEpoch], pathRecordedIn: [Int64]) -> JournalVerdict {
        if let problem = rangeProblem(since: since, epochs: epochs) {
            return JournalVerdict(answer: .unknown, reason: "unknown: \(problem); scan \(path) in full")
        }
        let current = epochs.map(\.epoch).max() ?? since
        let span = since == current ? "in epoch \(since)" : "since epoch \(since) (epochs \(since)-\(current))"
        if let last = pathRecordedIn.filter({ $0 >= since }).max() {
            return JournalVerdict(answer: .changed, reason: "changed: something under \(path) changed \(span), last in epoch \(last)")
        }
        return JournalVerdict(answer: .unchanged, reason: "unchanged: nothing under \(path) changed \(span)")
    }

    /// Inode timestamps come from the kernel's coarse clock, which lags the real time by
    /// up to a timer tick: a ctime up to this much before an epoch began may still be from
    /// inside it. Counting it in errs towards "changed", the safe side.
    public static let ctimeSlackSeconds = 0.05

    /// Whether an inode whose ctime is `ctimeNs` may have changed after `epochStart`.
    public static func ctimeWithin(_ ctimeNs: Int64, epochStart: Double) -> Bool {
        Double(ctimeNs) / 1e9 >= epochStart - ctimeSlackSeconds
    }

    /// True when `path` is `root` or lies below it (string paths, already absolute).
    public static func isUnder(_ path: String, _ root: String) -> Bool {
        if root == "/" { return path.hasPrefix("/") }
        return path == root || path.hasPrefix(root + "/")
    }

    /// Why an epoch must be marked incomplete when hsmd starts, per filesystem:
    /// - the previous run did not stop cleanly (its running flag is still set), so events
    ///   it had taken from the kernel may never have been written;
    /// - a filesystem with a journal is absent from this run: nobody watches it now, so
    ///   its epoch cannot vouch for this time;
    /// - the filesystem at a path is not the one the journal knew (another fsid);
    /// - its notification group was not kept across the stop (`held`: fsids whose group
    ///   systemd's fd store handed back), so changes between the two runs were not seen.
    public static func incompleteAtStart(previousRunUnclean: Bool, known: [(path: String, fsid: UInt64)],
                                         watched: [(path: String, fsid: UInt64)], held: Set<UInt64>, now: String) -> [String: String] {
        var out: [String: String] = [:]
        let watchedByPath = Dictionary(watched.map { ($0.path, $0.fsid) }, uniquingKeysWith: { a, _ in a })
        for k in known {
            if let fsid = watchedByPath[k.path] {
                if fsid != k.fsid {
                    out[k.path] = "a different filesystem is mounted at \(k.path) since \(now)"
                } else if previousRunUnclean {
                    out[k.path] = "hsmd did not stop cleanly before \(now) (killed or crashed): events may be lost"
                } else if !held.contains(fsid) {
                    out[k.path] = "not watched between hsmd's last stop and its start at \(now) (the change journal's group was not kept in systemd's fd store)"
                }
            } else {
                out[k.path] = "not watched by hsmd from \(now) (missing from the config or the journal was off)"
            }
        }
        return out
    }
}
