/// What `hsmctl queue` shows: hsmd's recalls in flight and its running jobs.
public struct QueueRecall: Codable, Sendable, Equatable {
    public var path: String
    /// The accessing process; 0 for hsmctl recall (or a reader outside hsmd's pid namespace).
    public var pid: Int32
    /// Its /proc/PID/comm name, empty when unknown.
    public var program: String
    /// "access" (a read or write), "open" (whole file at open) or "hsmctl".
    public var kind: String
    /// Bytes written back so far.
    public var bytes: Int64
    public var ageSeconds: Double

    public init(path: String, pid: Int32, program: String, kind: String, bytes: Int64, ageSeconds: Double) {
        self.path = path; self.pid = pid; self.program = program; self.kind = kind; self.bytes = bytes; self.ageSeconds = ageSeconds
    }
}

public struct QueueJob: Codable, Sendable, Equatable {
    /// What `hsmctl cancel` takes.
    public var id: Int64
    /// archive, release, recall or migrate.
    public var op: String
    /// The first path asked for.
    public var path: String
    /// How many paths the request named.
    public var paths: Int
    public var uid: UInt32
    public var ageSeconds: Double
    public var progress: ProgressReport
    /// Files the job knows it will handle (archive: the paths named; migrate: the
    /// candidates once its scan is done, until then 0).
    public var total: Int
    /// archive and migrate: files copied to the store so far (a chunk of files is copied,
    /// then committed and released, so `progress.done` moves in steps).
    public var copied: Int
    /// Why it is stopping, once cancelled.
    public var cancelled: String?

    public init(id: Int64, op: String, path: String, paths: Int, uid: UInt32, ageSeconds: Double, progress: ProgressReport,
                total: Int, copied: Int = 0, cancelled: String? = nil) {
        self.id = id; self.op = op; self.path = path; self.paths = paths; self.uid = uid; self.ageSeconds = ageSeconds
        self.progress = progress; self.total = total; self.copied = copied; self.cancelled = cancelled
    }
}

public struct QueueSnapshot: Codable, Sendable, Equatable {
    public var recalls: [QueueRecall]
    public var jobs: [QueueJob]
    /// Accesses taken from the kernel and not answered yet (recalls waiting included).
    public var queuedAccesses: Int

    public init(recalls: [QueueRecall], jobs: [QueueJob], queuedAccesses: Int) {
        self.recalls = recalls; self.jobs = jobs; self.queuedAccesses = queuedAccesses
    }
}
