import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// Serves hsmctl on a root-only Unix socket: one request line in, progress lines and one
/// result line out. Each connection gets its own thread; long operations never block
/// event handling.
final class ControlServer: Sendable {
    let listener: UnixListener
    let archiver: Archiver
    let journal: Journal?
    let settings: PolicySettings
    let catalog: Catalog?
    let log: Logger
    let info: @Sendable () -> [String: String]
    /// Jobs, queue and metrics (hsmctl queue, cancel, metrics).
    let ops: OpsContext
    static let filesPerLine = 512
    static let trimAfterFiles = 1000
    static let requestTimeoutSeconds = 20

    init(socketPath: String, archiver: Archiver, journal: Journal? = nil, catalog: Catalog? = nil, settings: PolicySettings = PolicySettings(),
         log: Logger, ops: OpsContext = OpsContext(),
         info: @escaping @Sendable () -> [String: String]) throws(SystemError) {
        listener = try UnixListener.listen(socketPath, mode: 0o600)
        self.archiver = archiver
        self.journal = journal
        self.settings = settings
        self.catalog = catalog
        self.log = log
        self.info = info
        self.ops = ops
    }

    func start() {
        startThread("hsmd-control") {
            while let conn = self.listener.accept() {
                let fd = conn.fd
                startThread("hsmd-client") { self.serve(LineChannel(fd: fd)) }
            }
        }
    }

    func stop() { listener.shutdown() }

    private func serve(_ conn: LineChannel) {
        var filesHandled = 0
        defer {
            conn.close()
            // After thousands of files the arenas hold freed holes: give them back, so the
            // next operation's peak does not stack on this one's leftovers.
            if filesHandled >= Self.trimAfterFiles { Memory.returnFreePages() }
        }
        func reply(_ r: ControlReply) {
            filesHandled += (r.files?.count ?? 0) + (r.status?.count ?? 0)
            // Long file lists go out in parts: encoding 10,000 results in one go cost
            // hsmd tens of MiB of transient memory.
            var r = r
            if let files = r.files, files.count > Self.filesPerLine {
                var start = 0
                while files.count - start > Self.filesPerLine {
                    let part = Array(files[start..<start + Self.filesPerLine])
                    try? conn.writeLine(ControlCodec.encode(ControlReply(type: .files, files: part)))
                    start += Self.filesPerLine
                }
                r.files = Array(files[start...])
            }
            try? conn.writeLine(ControlCodec.encode(r))
        }
        // A client that connects and then sends nothing must not hold a thread forever.
        try? conn.setReceiveTimeout(seconds: Self.requestTimeoutSeconds)
        let line: [UInt8]
        switch conn.readRequest(limit: ControlRequestLimits.maxLineBytes) {
        case .line(let l): line = l
        case .closed: return
        case .unterminated(let n):
            reply(ControlReply(type: .error, message: "request cut off: \(n) bytes without the newline that ends a request; nothing was done"))
            return
        case .tooLong(let limit):
            reply(ControlReply(type: .error, message: "request line longer than \(limit >> 20) MiB; name fewer paths per request"))
            return
        case .timedOut:
            reply(ControlReply(type: .error, message: "no complete request line within \(Self.requestTimeoutSeconds) s; closing"))
            return
        case .failed(let e):
            log.debug("control connection: \(e)")
            return
        }
        // Every number is range-checked here, before anything computes with it.
        let request: ControlRequest
        do { request = try ControlRequest.decode(line: line) } catch {
            log.debug("refused a control request: \(error)")
            reply(ControlReply(type: .error, message: error.message))
            return
        }
        let uid = (try? conn.peerUID()) ?? UInt32.max
        if uid != 0 && request.op != .ping {
            reply(ControlReply(type: .error, message: "permission denied: \(request.op.rawValue) needs root (caller uid \(uid))"))
            return
        }
        // Requests that change files are worth an operator's line; lookups are not.
        let level: Logger.Level = [.ping, .status, .journalStatus, .journalList, .journalChanged, .queue, .metrics, .report].contains(request.op) ? .debug : .info
        log.log(level: level, "\(request.op.rawValue) requested for \(request.paths.count) path(s) by uid \(uid)")
        switch request.op {
        case .ping:
            reply(ControlReply(type: .result, info: info()))
        case .archive:
            let files = ops.jobs.run(request, uid: uid, clientFD: conn.fd, log: log) { job in
                archiver.archiveMany(request.paths, jobs: request.jobs, release: false, cancelled: { job.isCancelled }, onCopied: job.noteCopied, onResult: job.record)
            }
            reply(ControlReply(type: .result, files: files))
        case .release:
            reply(ControlReply(type: .result, files: ops.jobs.run(request, uid: uid, clientFD: conn.fd, log: log) { job in
                request.paths.map { p in job.isCancelled ? FileResult(path: p, outcome: .failed, reason: Job.cancelledReason) : job.recorded(archiver.release(p)) }
            }))
        case .recall:
            let range = request.recallRange
            reply(ControlReply(type: .result, files: ops.jobs.run(request, uid: uid, clientFD: conn.fd, log: log) { job in
                request.paths.map { p in job.isCancelled ? FileResult(path: p, outcome: .failed, reason: Job.cancelledReason) : job.recorded(archiver.recall(p, range: range)) }
            }))
        case .queue, .cancel, .metrics:
            reply(OpsRequests(ops: ops).serve(request, uid: uid))
        case .status:
            // Rows go out in parts as the walk reads them: a tree of millions of files
            // is never held (nor encoded) whole.
            var rows: [StatusRow] = [], problems: [FileResult] = []
            for p in request.paths {
                archiver.status(p, row: { r in
                    rows.append(r)
                    if rows.count >= Self.filesPerLine {
                        filesHandled += rows.count
                        try? conn.writeLine(ControlCodec.encode(ControlReply(type: .files, status: rows)))
                        rows.removeAll(keepingCapacity: true)
                    }
                }, problem: { problems.append($0) })
            }
            reply(ControlReply(type: .result, files: problems, status: rows))
        case .migrate:
            // A named policy is looked up now, in the settings of this moment (a reload
            // may change them; this request keeps what it started with).
            let policies = settings.snapshot.policies
            let resolved: ControlRequest
            do { resolved = try request.resolvingPolicy(policies, defaultPaths: archiver.filesystems.all.map(\.path)) } catch {
                reply(ControlReply(type: .error, message: error.message))
                return
            }
            let lastSent = Mutex<UInt64>(0)
            let sendProgress = request.progress
            let writer = LineWriter(fd: conn.fd)
            var notes: [String] = []
            if let name = request.policy, let p = policies.first(where: { $0.name == name }) {
                notes.append("policy \(name): \(p.policy.summary); \(resolved.paths.joined(separator: ", "))")
            }
            // Results go out as the run makes them (a `files` line per part), so hsmd
            // holds no list of a whole tree's files.
            let totals = ops.jobs.run(resolved, uid: uid, clientFD: conn.fd, log: log) { job in
                Migrator(archiver: archiver, journal: journal).run(resolved, notes: &notes, job: job, emit: { part in
                    filesHandled += part.count
                    try? writer.writeLine(ControlCodec.encode(ControlReply(type: .files, files: part)))
                }) { p in
                guard sendProgress else { return }
                let now = monotonicNanos()
                let due = lastSent.withLock { last -> Bool in
                    guard now - last > 250_000_000 else { return false }
                    last = now
                    return true
                }
                if due { try? writer.writeLine(ControlCodec.encode(ControlReply(type: .progress, progress: p))) }
                }
            }
            log.info("migrate\(request.policy.map { " (policy \($0))" } ?? ""): \(totals.done) files, \(Units.formatBytes(totals.bytesArchived)) archived, \(Units.formatBytes(totals.bytesFreed)) freed, \(totals.failed) not done")
            reply(ControlReply(type: .result, notes: notes.isEmpty ? nil : notes))
        case .remove:
            let recall = request.recall ?? false
            reply(ControlReply(type: .result, files: request.paths.map { archiver.remove($0, recall: recall) }))
        case .pin:
            reply(ControlReply(type: .result, files: request.paths.map { archiver.pin($0) }))
        case .unpin:
            reply(ControlReply(type: .result, files: request.paths.map { archiver.unpin($0) }))
        case .gc:
            let grace = request.graceSeconds ?? ControlRequest.defaultGraceSeconds
            switch StoreMaintenance.exclusively("gc", { GarbageCollector(archiver: archiver, journal: journal).run(graceSeconds: grace, dryRun: request.dryRun) }) {
            case .success(let o): reply(ControlReply(type: .result, files: o.files, notes: o.notes))
            case .failure(let e): reply(ControlReply(type: .error, message: e.description))
            }
        case .importStore:
            let outcome = StoreMaintenance.exclusively("import") {
                Importer(archiver: archiver).run(storeName: request.store ?? "", into: request.into, dryRun: request.dryRun)
            }
            switch outcome {
            case .success(.success(let o)): reply(ControlReply(type: .result, files: o.files, notes: o.notes))
            case .success(.failure(let e)): reply(ControlReply(type: .error, message: e.description))
            case .failure(let e): reply(ControlReply(type: .error, message: e.description))
            }
        case .journalStatus, .journalSnapshot, .journalList, .journalChanged:
            guard let journal else {
                reply(ControlReply(type: .error, message: "the change journal is off (journal = false in hsmd's config)"))
                return
            }
            reply(JournalRequests(journal: journal).serve(request))
        case .report, .check:
            reply(CatalogRequests(catalog: catalog, filesystems: archiver.filesystems, log: log).serve(request))
        }
    }
}
