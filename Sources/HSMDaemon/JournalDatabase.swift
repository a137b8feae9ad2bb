import CSQLite
import Foundation
import HSMCore
import HSMKernel
import Synchronization

/// An SQLite failure: the result code, what was attempted, and the database file.
struct DatabaseError: Error, CustomStringConvertible {
    let code: Int32
    let operation: String
    let message: String
    var description: String { "\(operation): \(message) (sqlite \(code))" }
}

/// The change journal's database (state_dir/journal.sqlite). One connection, serialized
/// by a lock: the journal's writer thread uses it for group commits, control threads
/// for short reads. WAL mode, synchronous=FULL: a commit is on disk when it returns
/// (except the writer's directory records, see `transaction(durable:)`).
final class JournalDatabase: @unchecked Sendable {
    private let db: OpaquePointer
    private let lock = Mutex<Void>(())
    let path: String

    static let schema = """
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS filesystem(
            id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, fsid INTEGER NOT NULL, current INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS epoch(
            fs INTEGER NOT NULL, epoch INTEGER NOT NULL, started REAL NOT NULL, ended REAL,
            complete INTEGER NOT NULL, reason TEXT, transactions INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY(fs, epoch));
        CREATE TABLE IF NOT EXISTS dir(
            fs INTEGER NOT NULL, epoch INTEGER NOT NULL, handle BLOB NOT NULL, path TEXT,
            PRIMARY KEY(fs, epoch, handle)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS dir_by_handle ON dir(fs, handle, epoch);
        CREATE TABLE IF NOT EXISTS moved(
            fs INTEGER NOT NULL, epoch INTEGER NOT NULL, handle BLOB NOT NULL, path TEXT,
            PRIMARY KEY(fs, epoch, handle)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS migrate_run(
            fs INTEGER NOT NULL, path TEXT NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY(fs, path));
        """

    init(path: String) throws(DatabaseError) {
        self.path = path
        try Self.makePrivate(path)
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nil)
        guard rc == SQLITE_OK, let handle else {
            let msg = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot allocate"
            if let handle { sqlite3_close(handle) }
            throw DatabaseError(code: rc, operation: "open \(path)", message: msg)
        }
        db = handle
        sqlite3_busy_timeout(db, 5000)
        try execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" + Self.schema)
    }

    deinit { sqlite3_close(db) }

    /// The database names every changed directory: root only. SQLite gives its -wal and
    /// -shm files the database file's mode, so the file is created 0600 before SQLite
    /// opens it, and one an older hsmd left readable is made 0600 (with its companions).
    private static func makePrivate(_ path: String) throws(DatabaseError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw DatabaseError(code: SQLITE_CANTOPEN, operation: "open \(path)", message: String(cString: strerror(errno)))
        }
        close(fd)
        for p in [path, path + "-wal", path + "-shm"] {
            var st = stat()
            guard lstat(p, &st) == 0, st.st_mode & 0o077 != 0 else { continue }
            if chmod(p, 0o600) != 0 {
                throw DatabaseError(code: SQLITE_PERM, operation: "chmod 0600 \(p)", message: String(cString: strerror(errno)))
            }
        }
    }

    // MARK: Primitives

    enum Value { case int(Int64), real(Double), text(String?), blob([UInt8]) }

    private func error(_ rc: Int32, _ op: String) -> DatabaseError {
        DatabaseError(code: rc, operation: op, message: String(cString: sqlite3_errmsg(db)))
    }

    private func execute(_ sql: String) throws(DatabaseError) {
        let rc = lock.withLock { _ in sqlite3_exec(db, sql, nil, nil, nil) }
        if rc != SQLITE_OK { throw error(rc, "execute") }
    }

    /// Runs one statement with `args`, calling `row` for every result row. Caller holds the lock.
    private func run(_ sql: String, _ args: [Value] = [], row: (OpaquePointer) -> Void = { _ in }) throws(DatabaseError) {
        var stmt: OpaquePointer?
        var rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "prepare \(sql.prefix(40))") }
        defer { sqlite3_finalize(stmt) }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (i, a) in args.enumerated() {
            let k = Int32(i + 1)
            switch a {
            case .int(let v): sqlite3_bind_int64(stmt, k, v)
            case .real(let v): sqlite3_bind_double(stmt, k, v)
            case .text(let v?): sqlite3_bind_text(stmt, k, v, -1, transient)
            case .text(nil): sqlite3_bind_null(stmt, k)
            case .blob(let v): _ = v.withUnsafeBytes { sqlite3_bind_blob(stmt, k, $0.baseAddress, Int32($0.count), transient) }
            }
        }
        while true {
            rc = sqlite3_step(stmt)
            if rc == SQLITE_ROW { row(stmt); continue }
            if rc == SQLITE_DONE { return }
            throw error(rc, "step \(sql.prefix(40))")
        }
    }

    private static func text(_ s: OpaquePointer, _ i: Int32) -> String? {
        guard let p = sqlite3_column_text(s, i) else { return nil }
        return String(cString: p)
    }

    private static func blob(_ s: OpaquePointer, _ i: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(s, i))
        guard n > 0, let p = sqlite3_column_blob(s, i) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    private func locked<T>(_ body: () throws(DatabaseError) -> T) throws(DatabaseError) -> T {
        try lock.withLock { _ throws(DatabaseError) -> T in try body() }
    }

    /// Runs `body` in one transaction (rolled back if it throws).
    /// `durable: false` commits without waiting for the disk (the WAL is synced later, at a
    /// checkpoint or the next durable commit); a power loss may then drop the commit. For
    /// directory records only: losing those can only happen with an unclean stop, which
    /// marks the epoch incomplete anyway (the running flag was committed durably at start).
    func transaction(durable: Bool = true, _ body: (Transaction) throws(DatabaseError) -> Void) throws(DatabaseError) {
        try locked { () throws(DatabaseError) in
            if !durable { try run("PRAGMA synchronous=NORMAL") }
            defer { if !durable { try? run("PRAGMA synchronous=FULL") } }
            try run("BEGIN IMMEDIATE")
            do throws(DatabaseError) { try body(Transaction(db: self)) } catch {
                try? run("ROLLBACK")
                throw error
            }
            try run("COMMIT")
        }
    }

    /// Statements usable inside `transaction`.
    struct Transaction {
        fileprivate let db: JournalDatabase

        /// Inserts directories not yet recorded in the epoch; returns how many were new.
        func record(fs: Int64, epoch: Int64, _ rows: [(handle: [UInt8], path: String?)]) throws(DatabaseError) -> Int {
            var added = 0
            for r in rows {
                try db.run("INSERT OR IGNORE INTO dir(fs, epoch, handle, path) VALUES(?, ?, ?, ?)",
                           [.int(fs), .int(epoch), .blob(r.handle), .text(r.path)])
                added += Int(sqlite3_changes(db.db))
            }
            if added > 0 {
                try db.run("UPDATE epoch SET transactions = transactions + 1 WHERE fs = ? AND epoch = ?", [.int(fs), .int(epoch)])
            }
            return added
        }

        /// Directories renamed or moved in the epoch (their whole subtree has new paths).
        func recordMoved(fs: Int64, epoch: Int64, _ rows: [(handle: [UInt8], path: String?)]) throws(DatabaseError) {
            for r in rows {
                try db.run("INSERT OR REPLACE INTO moved(fs, epoch, handle, path) VALUES(?, ?, ?, ?)",
                           [.int(fs), .int(epoch), .blob(r.handle), .text(r.path)])
            }
        }

        func markIncomplete(fs: Int64, epoch: Int64, reason: String) throws(DatabaseError) {
            try db.run("UPDATE epoch SET complete = 0, reason = COALESCE(reason, ?) WHERE fs = ? AND epoch = ?",
                       [.text(reason), .int(fs), .int(epoch)])
        }

        func beginEpoch(fs: Int64, epoch: Int64, at time: Double) throws(DatabaseError) {
            try db.run("UPDATE epoch SET ended = ? WHERE fs = ? AND epoch < ? AND ended IS NULL", [.real(time), .int(fs), .int(epoch)])
            try db.run("INSERT OR IGNORE INTO epoch(fs, epoch, started, complete) VALUES(?, ?, ?, 1)", [.int(fs), .int(epoch), .real(time)])
            try db.run("UPDATE filesystem SET current = ? WHERE id = ?", [.int(epoch), .int(fs)])
        }

        func setMeta(_ key: String, _ value: String) throws(DatabaseError) {
            try db.run("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [.text(key), .text(value)])
        }

        func setFsid(fs: Int64, fsid: UInt64) throws(DatabaseError) {
            try db.run("UPDATE filesystem SET fsid = ? WHERE id = ?", [.int(Int64(bitPattern: fsid)), .int(fs)])
        }

        func setMigrateEpoch(fs: Int64, path: String, epoch: Int64) throws(DatabaseError) {
            try db.run("INSERT INTO migrate_run(fs, path, epoch) VALUES(?, ?, ?) ON CONFLICT(fs, path) DO UPDATE SET epoch = excluded.epoch",
                       [.int(fs), .text(path), .int(epoch)])
        }
    }

    // MARK: Queries

    struct KnownFilesystem { let id: Int64; let path: String; let fsid: UInt64; let current: Int64 }

    func meta(_ key: String) throws(DatabaseError) -> String? {
        try locked { () throws(DatabaseError) -> String? in
            var v: String?
            try run("SELECT value FROM meta WHERE key = ?", [.text(key)]) { v = Self.text($0, 0) }
            return v
        }
    }

    func filesystems() throws(DatabaseError) -> [KnownFilesystem] {
        try locked { () throws(DatabaseError) -> [KnownFilesystem] in
            var out: [KnownFilesystem] = []
            try run("SELECT id, path, fsid, current FROM filesystem ORDER BY path") { s in
                out.append(KnownFilesystem(id: sqlite3_column_int64(s, 0), path: Self.text(s, 1) ?? "",
                                           fsid: UInt64(bitPattern: sqlite3_column_int64(s, 2)), current: sqlite3_column_int64(s, 3)))
            }
            return out
        }
    }

    /// The filesystem's row, created with a complete epoch 1 if it is new.
    func ensureFilesystem(path: String, fsid: UInt64, now: Double) throws(DatabaseError) -> KnownFilesystem {
        if let known = try filesystems().first(where: { $0.path == path }) { return known }
        try transaction { (_: Transaction) throws(DatabaseError) in
            try run("INSERT INTO filesystem(path, fsid, current) VALUES(?, ?, 1)", [.text(path), .int(Int64(bitPattern: fsid))])
            let id = sqlite3_last_insert_rowid(db)
            try run("INSERT INTO epoch(fs, epoch, started, complete) VALUES(?, 1, ?, 1)", [.int(id), .real(now)])
        }
        guard let row = try filesystems().first(where: { $0.path == path }) else {
            // The row just inserted did not read back (another process edited the file?).
            throw DatabaseError(code: SQLITE_CORRUPT, operation: "add filesystem \(path)", message: "the new row cannot be read back")
        }
        return row
    }

    func epochs(fs: Int64) throws(DatabaseError) -> [JournalEpoch] {
        try locked { () throws(DatabaseError) -> [JournalEpoch] in
            var out: [JournalEpoch] = []
            try run("""
                SELECT e.epoch, e.started, e.complete, e.reason, e.transactions,
                       (SELECT COUNT(*) FROM dir d WHERE d.fs = e.fs AND d.epoch = e.epoch)
                FROM epoch e WHERE e.fs = ? ORDER BY e.epoch
                """, [.int(fs)]) { s in
                out.append(JournalEpoch(epoch: sqlite3_column_int64(s, 0), started: sqlite3_column_double(s, 1),
                                        complete: sqlite3_column_int64(s, 2) != 0, reason: Self.text(s, 3),
                                        directories: Int(sqlite3_column_int64(s, 5)), transactions: Int(sqlite3_column_int64(s, 4))))
            }
            return out
        }
    }

    struct RecordedDirectory { let handle: [UInt8]; let path: String?; let epoch: Int64 }

    /// Every directory recorded in epochs ≥ `since`, once, with the latest epoch and the
    /// path it had when last recorded.
    func directories(fs: Int64, since: Int64) throws(DatabaseError) -> [RecordedDirectory] {
        try locked { () throws(DatabaseError) -> [RecordedDirectory] in
            var out: [RecordedDirectory] = []
            try run("""
                SELECT handle, path, MAX(epoch) FROM dir WHERE fs = ? AND epoch >= ? GROUP BY handle
                """, [.int(fs), .int(since)]) { s in
                out.append(RecordedDirectory(handle: Self.blob(s, 0), path: Self.text(s, 1), epoch: sqlite3_column_int64(s, 2)))
            }
            return out
        }
    }

    func movedDirectories(fs: Int64, since: Int64) throws(DatabaseError) -> [RecordedDirectory] {
        try locked { () throws(DatabaseError) -> [RecordedDirectory] in
            var out: [RecordedDirectory] = []
            try run("SELECT handle, path, MAX(epoch) FROM moved WHERE fs = ? AND epoch >= ? GROUP BY handle", [.int(fs), .int(since)]) { s in
                out.append(RecordedDirectory(handle: Self.blob(s, 0), path: Self.text(s, 1), epoch: sqlite3_column_int64(s, 2)))
            }
            return out
        }
    }

    func epochsMoved(fs: Int64, handle: [UInt8], since: Int64) throws(DatabaseError) -> [Int64] {
        try locked { () throws(DatabaseError) -> [Int64] in
            var out: [Int64] = []
            try run("SELECT epoch FROM moved WHERE fs = ? AND handle = ? AND epoch >= ?", [.int(fs), .blob(handle), .int(since)]) {
                out.append(sqlite3_column_int64($0, 0))
            }
            return out
        }
    }

    func epochsRecording(fs: Int64, handle: [UInt8], since: Int64) throws(DatabaseError) -> [Int64] {
        try locked { () throws(DatabaseError) -> [Int64] in
            var out: [Int64] = []
            try run("SELECT epoch FROM dir WHERE fs = ? AND handle = ? AND epoch >= ?", [.int(fs), .blob(handle), .int(since)]) {
                out.append(sqlite3_column_int64($0, 0))
            }
            return out
        }
    }

    func migrateEpoch(fs: Int64, path: String) throws(DatabaseError) -> Int64? {
        try locked { () throws(DatabaseError) -> Int64? in
            var v: Int64?
            try run("SELECT epoch FROM migrate_run WHERE fs = ? AND path = ?", [.int(fs), .text(path)]) { v = sqlite3_column_int64($0, 0) }
            return v
        }
    }
}
