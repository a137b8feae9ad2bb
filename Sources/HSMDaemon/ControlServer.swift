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
    let catalog: Catalog?
    let log: Logger
    let info: @Sendable () -> [String: String]
    static let filesPerLine = 512
    static let trimAfterFiles = 1000
    static let requestTimeoutSeconds = 20

    init(socketPath: String, archiver: Archiver, journal: Journal? = nil, catalog: Catalog? = nil, log: Logger,
         info: @escaping @Sendable () -> [String: String]) throws(SystemError) {
        listener = try UnixListener.listen(socketPath, mode: 0o600)
        self.archiver = archiver
        self.journal = journal
        self.catalog = catalog
        self.log = log
        self.info = info
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
        let level: Logger.Level = [.ping, .status, .journalStatus, .journalList, .journalChanged, .report].contains(request.op) ? .debug : .info
        log.log(level: level, "\(request.op.rawValue) requested for \(request.paths.count) path(s) by uid \(uid)")
        switch request.op {
        case .ping:
            reply(ControlReply(type: .result, info: info()))
        case .archive:
            reply(ControlReply(type: .result, files: archiver.archiveMany(request.paths, jobs: request.jobs, release: false)))
        case .release:
            reply(ControlReply(type: .result, files: request.paths.map(archiver.release)))
        case .recall:
            let range = request.recallRange
            reply(ControlReply(type: .result, files: request.paths.map { archiver.recall($0, range: range) }))
        case .status:
            var rows: [StatusRow] = [], problems: [FileResult] = []
            for p in request.paths {
                let s = archiver.status(p)
                rows += s.rows
                problems += s.problems
            }
            reply(ControlReply(type: .result, files: problems, status: rows))
        case .migrate:
            let lastSent = Mutex<UInt64>(0)
            let sendProgress = request.progress
            let writer = LineWriter(fd: conn.fd)
            var notes: [String] = []
            let files = Migrator(archiver: archiver, journal: journal).run(request, notes: &notes) { p in
                guard sendProgress else { return }
                let now = monotonicNanos()
                let due = lastSent.withLock { last -> Bool in
                    guard now - last > 250_000_000 else { return false }
                    last = now
                    return true
                }
                if due { try? writer.writeLine(ControlCodec.encode(ControlReply(type: .progress, progress: p))) }
            }
            let done = files.filter { $0.outcome == .done }
            log.info("migrate: \(done.count) files, \(Units.formatBytes(files.reduce(0) { $0 + $1.bytesArchived })) archived, \(Units.formatBytes(files.reduce(0) { $0 + $1.bytesFreed })) freed, \(files.filter { $0.outcome == .failed }.count) not done")
            reply(ControlReply(type: .result, files: files, notes: notes.isEmpty ? nil : notes))
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
