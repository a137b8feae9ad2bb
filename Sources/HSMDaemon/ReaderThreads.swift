import Dispatch
import Synchronization

/// The threads that run `BlockPipeline`'s store reads ("hsmd-prefetch"), kept for the
/// process's life: a sequential recall runs one pipeline per read-ahead window, and
/// starting its readers anew each window cost thread starts every 64 MiB.
///
/// A pipeline takes its threads with `claim`, which never waits: it gets idle ones, and
/// new ones are started while the pool holds fewer than `limit`; past that it gets fewer
/// than it asked for, or none (it then reads on its own thread). Every claimed thread runs
/// one of that pipeline's readers from the start, so a pipeline's progress never depends
/// on another one giving threads back, and any number of concurrent pipelines (one per
/// recall worker, releases) cannot deadlock. A queue of reader jobs could: two pipelines
/// each with some readers running and the others queued behind the other's, the running
/// ones waiting for their consumer to empty a slot, each consumer waiting for a queued one.
///
/// Threads are started lazily, so a single recall at a time keeps only as many as its
/// reader asks for (4 at most: S3; 1: posix).
final class ReaderThreads: Sendable {
    /// Up to four pipelines of the widest reader (S3, 4 reads in flight) at full width:
    /// the default recall_threads. Past that pipelines run narrower, which costs overlap,
    /// not correctness; the S3 client's `connections` bound the GETs in flight anyway.
    static let shared = ReaderThreads(limit: 16)

    /// One kept thread; it sleeps on `wake` until it is given a job.
    final class Worker: Sendable {
        fileprivate let wake = DispatchSemaphore(value: 0)
        fileprivate let job = Mutex<(run: @Sendable () -> Void, done: DispatchSemaphore)?>(nil)
    }

    private struct State {
        var idle: [Worker] = []
        var started = 0
    }

    let limit: Int
    private let state = Mutex(State())

    init(limit: Int) { self.limit = max(0, limit) }

    /// Threads started so far (they never end).
    var threadCount: Int { state.withLock { $0.started } }
    /// Threads waiting for a job.
    var idleCount: Int { state.withLock { $0.idle.count } }

    /// Up to `n` threads, idle ones first; never waits. Each must be given one job
    /// (`start`), which is how it comes back.
    func claim(upTo n: Int) -> [Worker] {
        let (taken, fresh) = state.withLock { s -> ([Worker], Int) in
            let reused = min(max(0, n), s.idle.count)
            // The most recently idle first: their stacks are still warm.
            let taken = Array(s.idle.suffix(reused).reversed())
            s.idle.removeLast(reused)
            let fresh = max(0, min(n - reused, limit - s.started))
            s.started += fresh
            return (taken, fresh)
        }
        var workers = taken
        for _ in 0..<fresh {
            let w = Worker()
            startThread("hsmd-prefetch") { self.serve(w) }
            workers.append(w)
        }
        return workers
    }

    /// Runs `job` on a claimed thread. `done` is signalled after `job` returned and the
    /// thread is idle again, so that a pipeline that waited for all its `done`s leaves its
    /// threads to the next one (consecutive windows reuse the same threads).
    func start(_ worker: Worker, done: DispatchSemaphore, _ job: @escaping @Sendable () -> Void) {
        worker.job.withLock { $0 = (job, done) }
        worker.wake.signal()
    }

    private func serve(_ worker: Worker) {
        while true {
            worker.wake.wait()
            guard let taken = worker.job.withLock({ j in defer { j = nil }; return j }) else { continue }
            taken.run()
            let done = taken.done
            state.withLock { $0.idle.append(worker) }
            done.signal()
        }
    }
}
