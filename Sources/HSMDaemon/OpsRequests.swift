import HSMCore

/// What hsmctl's queue, cancel and metrics requests read: the job table, and closures the
/// daemon fills in at start (the recall engine and the metrics live there).
struct OpsContext: Sendable {
    var jobs = JobTable()
    var queue: @Sendable () -> (recalls: [QueueRecall], queuedAccesses: Int) = { ([], 0) }
    var metrics: @Sendable () -> String = { "" }
}

/// Serves `queue`, `cancel` and `metrics`.
struct OpsRequests {
    let ops: OpsContext

    func serve(_ request: ControlRequest, uid: UInt32) -> ControlReply {
        switch request.op {
        case .queue:
            let q = ops.queue()
            var r = ControlReply(type: .result)
            r.queue = QueueSnapshot(recalls: q.recalls, jobs: ops.jobs.rows(), queuedAccesses: q.queuedAccesses)
            return r
        case .cancel:
            guard let id = request.id, let job = ops.jobs.cancel(id, reason: "cancelled by hsmctl cancel (uid \(uid))") else {
                return ControlReply(type: .error, message: "no job \(request.id ?? 0) is running (hsmctl queue lists the running jobs)")
            }
            return ControlReply(type: .result, message: "job \(job.id) (\(job.op) \(job.path)) is stopping: files in progress finish, no new file starts")
        case .metrics:
            var r = ControlReply(type: .result)
            r.text = ops.metrics()
            return r
        default:
            return ControlReply(type: .error, message: "\(request.op.rawValue) is not an operations request")
        }
    }
}
