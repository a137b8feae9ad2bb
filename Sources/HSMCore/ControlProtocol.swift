import Foundation

/// hsmctl → hsmd: one JSON object per line on the control socket. hsmd answers with zero
/// or more `progress` lines and then exactly one `result` or `error` line.
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable, CaseIterable {
        case ping, archive, release, migrate, recall, status
        case journalStatus = "journal_status", journalSnapshot = "journal_snapshot"
        case journalList = "journal_list", journalChanged = "journal_changed"
        case remove, gc, pin, unpin
        case importStore = "import"
        case queue, cancel, metrics
        case report, check
    }

    public var op: Operation
    public var paths: [String]
    /// recall: [offset, length]
    public var range: [Int64]?
    public var olderThanSeconds: Int64?
    public var minSize: Int64?
    public var exclude: [String]
    public var dryRun: Bool
    public var jobs: Int
    public var progress: Bool
    /// journal list/changed: the first epoch of the range (default: the current one).
    public var since: Int64?
    /// migrate: scan only directories the change journal lists since the last run.
    public var incremental: Bool?
    /// remove: recall released data first instead of refusing.
    public var recall: Bool?
    /// gc: keep orphans archived less than this long ago (default 30 days).
    public var graceSeconds: Int64?
    /// import: the store to rebuild from, and the directory to put the files under.
    public var store: String?
    public var into: String?
    /// migrate: the [[policy]] of hsmd's config that gives the age, size and excludes.
    public var policy: String?
    /// cancel: the job's id (hsmctl queue lists them).
    public var id: Int64?
    /// check: read every stored block (scrub), rebuild the catalog (repair), scrub's rate
    /// limit in bytes per second.
    public var scrub: Bool?
    public var repair: Bool?
    public var rate: Int64?

    public init(op: Operation, paths: [String] = [], range: [Int64]? = nil, olderThanSeconds: Int64? = nil,
                minSize: Int64? = nil, exclude: [String] = [], dryRun: Bool = false, jobs: Int = 1, progress: Bool = false,
                since: Int64? = nil, incremental: Bool? = nil, policy: String? = nil, id: Int64? = nil) {
        self.op = op; self.paths = paths; self.range = range; self.olderThanSeconds = olderThanSeconds
        self.minSize = minSize; self.exclude = exclude; self.dryRun = dryRun; self.jobs = jobs; self.progress = progress
        self.since = since; self.incremental = incremental; self.policy = policy; self.id = id
    }

    /// hsmctl gc's default grace: a file restored from a backup with its marker still
    /// needs its object.
    public static let defaultGraceSeconds: Int64 = 30 * 86400
}

/// What happened to one file.
public struct FileResult: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable { case done, skipped, failed }
    public var path: String
    public var outcome: Outcome
    /// Why it was skipped or failed, or a note ("already archived").
    public var reason: String?
    public var state: HSMState?
    public var object: String?
    public var bytesArchived: Int64
    public var bytesFreed: Int64
    public var bytesRecalled: Int64

    public init(path: String, outcome: Outcome, reason: String? = nil, state: HSMState? = nil, object: String? = nil,
                bytesArchived: Int64 = 0, bytesFreed: Int64 = 0, bytesRecalled: Int64 = 0) {
        self.path = path; self.outcome = outcome; self.reason = reason; self.state = state; self.object = object
        self.bytesArchived = bytesArchived; self.bytesFreed = bytesFreed; self.bytesRecalled = bytesRecalled
    }
}

/// One row of `hsmctl status`.
public struct StatusRow: Codable, Sendable, Equatable {
    public var path: String
    public var state: HSMState
    public var size: Int64
    public var offlineBytes: Int64
    public var object: String?
    /// Why a file is damaged; not part of the --json row.
    public var detail: String?
    /// hsmctl pin keeps it local (absent from an older hsmd's rows: not pinned).
    public var pinned: Bool?

    public init(path: String, state: HSMState, size: Int64, offlineBytes: Int64, object: String?, detail: String? = nil, pinned: Bool = false) {
        self.path = path; self.state = state; self.size = size; self.offlineBytes = offlineBytes
        self.object = object; self.detail = detail; self.pinned = pinned ? true : nil
    }
}

public struct ProgressReport: Codable, Sendable, Equatable {
    public var scanned: Int
    public var done: Int
    public var skipped: Int
    public var failed: Int
    public var bytesArchived: Int64
    public var bytesFreed: Int64

    public init(scanned: Int = 0, done: Int = 0, skipped: Int = 0, failed: Int = 0, bytesArchived: Int64 = 0, bytesFreed: Int64 = 0) {
        self.scanned = scanned; self.done = done; self.skipped = skipped; self.failed = failed
        self.bytesArchived = bytesArchived; self.bytesFreed = bytesFreed
    }
}

public struct ControlReply: Codable, Sendable {
    /// `files` lines carry part of a long result, so no reply is one huge line.
    public enum Kind: String, Codable, Sendable { case progress, files, result, error }
    public var type: Kind
    public var message: String?
    public var files: [FileResult]?
    public var status: [StatusRow]?
    public var progress: ProgressReport?
    public var info: [String: String]?
    /// Lines for the operator (e.g. migrate --incremental falling back to a full scan).
    public var notes: [String]?
    /// journal status, and journal snapshot (the filesystems and their new epochs).
    public var journal: [JournalFilesystemStatus]?
    /// journal list.
    public var changes: [JournalEntry]?
    /// journal changed.
    public var verdict: JournalVerdict?
    /// queue.
    public var queue: QueueSnapshot?
    /// metrics: Prometheus's text exposition.
    public var text: String?
    /// report.
    public var catalog: CatalogReport?
    /// check.
    public var check: CheckReport?

    public init(type: Kind, message: String? = nil, files: [FileResult]? = nil, status: [StatusRow]? = nil,
                progress: ProgressReport? = nil, info: [String: String]? = nil, notes: [String]? = nil,
                journal: [JournalFilesystemStatus]? = nil, changes: [JournalEntry]? = nil, verdict: JournalVerdict? = nil) {
        self.type = type; self.message = message; self.files = files; self.status = status
        self.progress = progress; self.info = info; self.notes = notes
        self.journal = journal; self.changes = changes; self.verdict = verdict
    }
}

public enum ControlCodec {
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? [UInt8](e.encode(value))) ?? Array("{}".utf8)
    }

    public static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(type, from: Data(bytes))
    }
}
