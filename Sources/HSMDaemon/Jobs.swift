import Foundation
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// One running archive, release, recall or migrate request, for `hsmctl queue` and
/// `hsmctl cancel`.
final class Job: Sendable {
    static let cancelledReason = "not done: the job was cancelled"

    let id: Int64
    let op: String
    let path: String
    let paths: Int
    let uid: UInt32
    let startedNanos = monotonicNanos()
    /// The requesting hsmctl's connection: once it is closed, the job stops.
    private let clientFD: Int32?
    private let progressBox = Mutex(ProgressReport())
    private let totalBox = Atomic<Int>(0)
    private let copiedBox = Atomic<Int>(0)
    private let stopReason = Mutex<String?>(nil)
    private let stopping = Atomic<Bool>(false)

    init(id: Int64, request: ControlRequest, uid: UInt32, clientFD: Int32?) {
        self.id = id
        op = request.op.rawValue
        path = request.paths.first ?? ""
        paths = request.paths.count
        self.uid = uid
        self.clientFD = clientFD
        if request.op != .migrate { totalBox.store(request.paths.count, ordering: .relaxed) }
    }

    func cancel(_ reason: String) {
        stopReason.withLock { if $0 == nil { $0 = reason } }
        if !stopping.exchange(true, ordering: .relaxed) { DaemonMetrics.shared.jobsCancelled.add() }
    }

    /// Asked between files: a cancelled job, or one whose hsmctl closed its connection
    /// (one poll of the socket, no wait), does not start another file.
    var isCancelled: Bool {
        if stopping.load(ordering: .relaxed) { return true }
        if let fd = clientFD, LineChannel.peerHasClosed(fd: fd) {
            cancel("its hsmctl went away (connection closed)")
            return true
        }
        return false
    }

    var cancelReason: String? { stopReason.withLock { $0 } }

    func record(_ r: FileResult) {
        progressBox.withLock { p in p.count(r) }
    }

    func recorded(_ r: FileResult) -> FileResult {
        record(r)
        return r
    }

    /// Migrate reports its whole progress (scan included) itself.
    func setProgress(_ p: ProgressReport) { progressBox.withLock { $0 = p } }
    func setTotal(_ n: Int) { totalBox.store(n, ordering: .relaxed) }
    /// Archive copies a chunk of files before it commits any: this counts the copies.
    func noteCopied() { copiedBox.add(1, ordering: .relaxed) }

    func row(now: UInt64) -> QueueJob {
        QueueJob(id: id, op: op, path: path, paths: paths, uid: uid, ageSeconds: Double(now &- startedNanos) / 1e9,
                 progress: progressBox.withLock { $0 }, total: totalBox.load(ordering: .relaxed),
                 copied: copiedBox.load(ordering: .relaxed), cancelled: cancelReason)
    }
}

/// The jobs running now. A lock per job start and end, never per file.
final class JobTable: Sendable {
    private let jobs = Mutex<[Int64: Job]>([:])
    private let nextID = Atomic<Int64>(1)

    /// Runs `body` as a listed job.
    /// Runs `body` as a listed job; a job that was cancelled says so in the log at its end.
    func run<R>(_ request: ControlRequest, uid: UInt32, clientFD: Int32?, log: Logger, _ body: (Job) -> R) -> R {
        let job = Job(id: nextID.add(1, ordering: .relaxed).oldValue, request: request, uid: uid, clientFD: clientFD)
        jobs.withLock { $0[job.id] = job }
        defer {
            jobs.withLock { _ = $0.removeValue(forKey: job.id) }
            if let why = job.cancelReason {
                let p = job.row(now: monotonicNanos()).progress
                log.notice("job \(job.id) (\(job.op) \(job.path)) stopped: \(why); \(p.done) file(s) done, the files not started were left as they were")
            }
        }
        return body(job)
    }

    /// nil when no such job runs.
    func cancel(_ id: Int64, reason: String) -> Job? {
        guard let job = jobs.withLock({ $0[id] }) else { return nil }
        job.cancel(reason)
        return job
    }

    var count: Int { jobs.withLock { $0.count } }

    func rows(now: UInt64 = monotonicNanos()) -> [QueueJob] {
        jobs.withLock { Array($0.values) }.sorted { $0.id < $1.id }.map { $0.row(now: now) }
    }
}
