import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// hsmd's catalog: the database plus the one thread that writes it. Archive, release and
/// recall only queue what they changed (never waiting for SQLite); the writer makes the
/// markers of a batch durable (one syncfs per filesystem touched) and then commits the
/// batch in one transaction, so a catalog row never runs ahead of its marker. The catalog
/// is an index: when its file is lost or damaged hsmd sets it aside, starts an empty one
/// and rebuilds it from the markers and the stores (`hsmctl check --repair` does the same).
final class Catalog: Sendable {
    enum Update: Sendable {
        case file(CatalogFile)
        case object(CatalogObject)
        case deleteObject(String)
    }

    private struct Queue {
        var items: [(update: Update, syncFD: Int32?)] = []
        var enqueued: UInt64 = 0
        var applied: UInt64 = 0
        /// Rebuilds under way: queued updates wait until the rebuilt rows are in, so
        /// that nothing newer than the walk is overwritten by it.
        var holds = 0
        var dropped: UInt64 = 0
        var failure: String?
        var stopping = false
    }

    /// The database; replaced by an empty one when it turns out damaged.
    var database: CatalogDatabase { current.withLock { $0 } }
    private let current: Mutex<CatalogDatabase>
    let log: Logger
    /// Why the catalog had to be started empty at this start (nil: it was fine).
    let startProblem: String?
    private let queue = Mutex(Queue())
    private let wake = DispatchSemaphore(value: 0)
    /// Cuts the writer's gathering short: a flush (report, check) or a stop is waiting.
    private let urgent = DispatchSemaphore(value: 0)
    /// How long the writer gathers updates before one syncfs and one commit: the catalog
    /// may be this far behind the markers, and a recall stream costs one syncfs per
    /// filesystem this often instead of one per marker it writes.
    static let gatherSeconds = 1.0
    private let finished = DispatchSemaphore(value: 0)
    /// Queued updates beyond this are dropped (and said so): the writer is stuck.
    static let maxQueued = 1_000_000
    static let fileName = "catalog.sqlite"

    init(database: CatalogDatabase, log: Logger, startProblem: String? = nil) {
        current = Mutex(database)
        self.log = log
        self.startProblem = startProblem
    }

    /// Opens state_dir/catalog.sqlite; a missing, damaged or unknown-version file is set
    /// aside (`.damaged-<time>`) and an empty catalog started, with `startProblem` saying
    /// why (the caller then rebuilds it). nil only when not even an empty one can be made.
    static func open(stateDir: String, log: Logger) -> Catalog? {
        let path = stateDir + "/" + fileName
        let existed = access(path, F_OK) == 0
        do {
            let db = try CatalogDatabase(path: path)
            // A rebuild that did not finish (hsmd stopped meanwhile) left it incomplete.
            let unfinished = (try? db.meta(Self.rebuildPendingKey)) != nil
            return Catalog(database: db, log: log, startProblem: !existed ? "missing" : (unfinished ? "left incomplete by a rebuild that did not finish" : nil))
        } catch {
            let aside = setAside(path)
            do {
                let db = try CatalogDatabase(path: path)
                return Catalog(database: db, log: log, startProblem: "\(error); set aside as \(aside)")
            } catch {
                log.error("catalog \(path): cannot be created (\(error)); hsmd runs without a catalog (report and check --repair are refused)")
                return nil
            }
        }
    }

    /// Renames the database and its companions out of the way; returns the new name.
    private static func setAside(_ path: String) -> String {
        let aside = path + ".damaged-\(Int(Date().timeIntervalSince1970))"
        for suffix in ["", "-wal", "-shm"] where access(path + suffix, F_OK) == 0 {
            _ = rename(path + suffix, aside + suffix)
        }
        return aside
    }

    // MARK: Queueing (any thread; never blocks on the database)

    /// `syncFD`: a descriptor on the filesystem whose marker this update reflects; it is
    /// synced (syncfs) before the update is committed.
    func enqueue(_ update: Update, syncFD: Int32? = nil) {
        let wasEmpty = queue.withLock { q -> Bool in
            guard q.items.count < Self.maxQueued else {
                q.dropped += 1
                return false
            }
            q.items.append((update, syncFD))
            q.enqueued += 1
            return q.items.count == 1
        }
        if wasEmpty { wake.signal() }
    }

    /// Queues the row of the file open as `fd`, whose marker (`marker`) is written:
    /// state and offline bytes from the marker and the size. Called under the inode's
    /// lock, so a file's updates queue in the order its marker changed. `path`: its
    /// path now, when known (nil keeps the row's).
    /// `pinned`: the pin just set or cleared (nil keeps the row's).
    func noteFile(_ fd: FileDescriptor, fs: ManagedFilesystem, marker: Marker?, path: String?, stat: FileStat? = nil, pinned: Bool? = nil) {
        guard let st = stat ?? (try? fd.stat()), let handle = try? InodeHandle.of(fd: fd.rawValue, path: fd.path) else { return }
        noteFile(handle, fs: fs, marker: marker, path: path, stat: st, pinned: pinned)
    }

    /// The same, for a caller that knows the file's handle and stat already (recall: the
    /// event log recorded the handle), so that queueing costs no syscall.
    func noteFile(_ handle: InodeHandle, fs: ManagedFilesystem, marker: Marker?, path: String?, stat st: FileStat, pinned: Bool? = nil) {
        let s = FileStatus.derive(stat: st, marker: marker, objectExists: { _ in true })
        enqueue(.file(CatalogFile(fs: fs.path, handle: handle.encoded, path: path, state: s.state, size: st.size,
                                  offlineBytes: s.offlineBytes, object: marker?.object.hex, updatedAt: unixMillis(), pinned: pinned)),
                syncFD: fs.rootFD)
    }

    // MARK: The writer

    /// Starts the writer. `rebuild` rebuilds the catalog from the markers and the stores
    /// (CatalogCheck with repair); it runs on a thread of its own at idle priority when
    /// the catalog was missing or damaged at open, or turns out damaged later (quick_check
    /// after start, or a statement meeting damage).
    func start(rebuild: (@Sendable () -> Void)? = nil) {
        if let problem = startProblem, let rebuild { rebuildInBackground(why: "was \(problem)", rebuild) }
        startThread("hsmd-catalog") { self.writerLoop(rebuild) }
        // After start, not before: it reads every page, and hsmd must answer accesses first.
        if startProblem == nil {
            startThread("hsmd-catalog-check") {
                try? setThreadIdlePriority()
                if let problem = CatalogDatabase.quickCheck(path: self.database.path) { self.replaceDamaged(problem, rebuild) }
            }
        }
    }

    static let rebuildPendingKey = "rebuild_pending"

    private func rebuildInBackground(why: String, _ rebuild: @escaping @Sendable () -> Void) {
        try? database.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in try w.setMeta(Self.rebuildPendingKey, "1") }
        log.notice("catalog \(database.path) \(why): rebuilding it from the markers and the stores in the background (hsmctl report says when it is done)")
        holdUpdates()
        startThread("hsmd-catalog-rebuild") {
            defer { self.releaseHold() }
            try? setThreadIdlePriority()
            rebuild()
        }
    }

    /// Sets a damaged database aside and carries on with an empty one, rebuilt in the background.
    private func replaceDamaged(_ problem: String, _ rebuild: (@Sendable () -> Void)?) {
        let path = database.path
        let aside = Self.setAside(path)
        do {
            let fresh = try CatalogDatabase(path: path)
            current.withLock { $0 = fresh }
        } catch {
            log.error("catalog \(path) is damaged (\(problem)) and a new one cannot be created (\(error)); report and check --repair fail until hsmd restarts")
            return
        }
        if let rebuild { rebuildInBackground(why: "was damaged (\(problem)); set aside as \(aside)", rebuild) }
    }

    /// Writes what is queued, then ends the writer.
    func stop() {
        queue.withLock { $0.stopping = true }
        urgent.signal()
        wake.signal()
        _ = finished.wait(timeout: .now() + 20)
    }

    private func writerLoop(_ rebuild: (@Sendable () -> Void)?) {
        defer { finished.signal() }
        while true {
            wake.wait()
            // Gather for a moment: one syncfs and one commit for many updates.
            _ = urgent.wait(timeout: .now() + Self.gatherSeconds)
            while true {
                let (batch, stopping) = queue.withLock { q -> ([(update: Update, syncFD: Int32?)], Bool) in
                    guard q.holds == 0 else { return ([], q.stopping) }
                    let b = q.items
                    q.items.removeAll(keepingCapacity: false)
                    return (b, q.stopping)
                }
                if !batch.isEmpty { write(batch, rebuild) }
                if batch.isEmpty {
                    if stopping { return }
                    break
                }
            }
        }
    }

    private func write(_ batch: [(update: Update, syncFD: Int32?)], _ rebuild: (@Sendable () -> Void)?) {
        // The markers first: a row must never say more than a durable marker does.
        for fd in Set(batch.compactMap(\.syncFD)) {
            if syncFilesystem(fd: fd) != 0 { log.debug("catalog: syncfs before a commit failed; committing anyway (an index: check --repair corrects what a lost marker makes wrong)") }
        }
        do {
            try database.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in
                for item in batch {
                    switch item.update {
                    case .file(let f): try w.file(f)
                    case .object(let o): try w.object(o)
                    case .deleteObject(let id): try w.deleteObject(id)
                    }
                }
            }
        } catch {
            if CatalogDatabase.meansDamaged(error) {
                // The batch is lost with the damaged file; the rebuild walks what it said.
                replaceDamaged("\(error)", rebuild)
                queue.withLock { $0.applied += UInt64(batch.count) }
                return
            }
            let first = queue.withLock { q -> Bool in
                defer { q.failure = "\(error)" }
                return q.failure == nil
            }
            if first { log.error("catalog: a write failed (\(error)); its figures are behind until hsmctl check --repair") }
        }
        queue.withLock { $0.applied += UInt64(batch.count) }
    }

    /// Waits (up to `timeout` seconds) until everything queued before the call is written.
    @discardableResult
    func flush(timeout: Double = 10) -> Bool {
        let target = queue.withLock { $0.enqueued }
        urgent.signal()
        wake.signal()
        let deadline = monotonicNanos() + UInt64(timeout * 1e9)
        while monotonicNanos() < deadline {
            let (applied, held) = queue.withLock { ($0.applied, $0.holds > 0) }
            if applied >= target || held { return applied >= target }
            usleep(2_000)
        }
        return false
    }

    /// Lines for the operator about figures that may be behind.
    var notes: [String] {
        queue.withLock { q in
            var out: [String] = []
            if q.holds > 0 { out.append("the catalog is being rebuilt from the markers and the stores; figures are incomplete until it ends") }
            if q.dropped > 0 { out.append("\(q.dropped) catalog update(s) were dropped (the writer fell behind); run hsmctl check --repair") }
            if let f = q.failure { out.append("a catalog write failed (\(f)); run hsmctl check --repair") }
            return out
        }
    }

    // MARK: Rebuild

    /// Holds queued updates back until `replaceAll` (or `release`) is called.
    func holdUpdates() { queue.withLock { $0.holds += 1 } }

    func releaseHold() {
        queue.withLock { $0.holds = max(0, $0.holds - 1) }
        wake.signal()
    }

    /// Replaces every row with a rebuild's (then lets the held updates, all newer than
    /// what the rebuild saw, go in after it).
    func replaceAll(files: [CatalogFile], objects: [CatalogObject]) throws(DatabaseError) {
        defer { releaseHold() }
        try database.transaction(replaceAll: true) { (w: CatalogDatabase.Writer) throws(DatabaseError) in
            for f in files { try w.file(f) }
            for o in objects { try w.object(o) }
            try w.setMeta("rebuilt_at", "\(Int64(Date().timeIntervalSince1970))")
            try w.deleteMeta(Self.rebuildPendingKey)
        }
        queue.withLock { $0.failure = nil; $0.dropped = 0 }
    }
}

/// Milliseconds since 1970: when a catalog row was written (compared with a check's start).
func unixMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

/// syncfs on a raw descriptor (the filesystem's root fd, kept open for hsmd's life).
func syncFilesystem(fd: Int32) -> Int32 {
    (try? FileDescriptor(rawValue: fd, path: "").syncFilesystem()) == nil ? -1 : 0
}
