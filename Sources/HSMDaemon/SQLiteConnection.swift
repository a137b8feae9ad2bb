import CSQLite
import Foundation
import Synchronization

/// An SQLite failure: the result code, what was attempted, and the database file.
struct DatabaseError: Error, CustomStringConvertible {
    let code: Int32
    let operation: String
    let message: String
    var description: String { "\(operation): \(message) (sqlite \(code))" }

    /// True for the result codes of a file that is not, or no longer, a sound database.
    var meansDamaged: Bool { [SQLITE_NOTADB, SQLITE_CORRUPT].contains(code & 0xff) }

    /// A row just written that does not read back (another process edited the file?).
    static func notReadBack(_ operation: String) -> DatabaseError {
        DatabaseError(code: SQLITE_CORRUPT, operation: operation, message: "the new row cannot be read back")
    }
}

/// One connection to the system's SQLite, the only place the journal's and the catalog's
/// databases call its C API; each keeps its schema and queries in its own file. Statements
/// run under `locked`, so one thread at a time uses the connection.
final class SQLiteConnection: @unchecked Sendable {
    // @unchecked: `db` is a C handle (not Sendable). A read-write connection is opened
    // FULLMUTEX and its users go through `locked`; a read-only one stays with one caller.
    private let db: OpaquePointer
    private let lock = Mutex<Void>(())
    let path: String
    /// Whether error operations end with " (path)".
    private let namesPathInErrors: Bool

    enum Value { case int(Int64), real(Double), text(String?), blob([UInt8]?) }

    /// Opens `path` read-write (created if missing, FULLMUTEX), or read-only, with a busy
    /// timeout of 5 s. Pragmas and schema are the caller's.
    init(path: String, readOnly: Bool = false, namesPathInErrors: Bool = false) throws(DatabaseError) {
        self.path = path
        self.namesPathInErrors = namesPathInErrors
        var handle: OpaquePointer?
        let flags = readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let msg = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot allocate"
            if let handle { sqlite3_close(handle) }
            throw DatabaseError(code: rc, operation: "open \(path)", message: msg)
        }
        db = handle
        sqlite3_busy_timeout(db, 5000)
    }

    deinit { sqlite3_close(db) }

    /// Creates the file 0600 before SQLite opens it (SQLite gives its -wal and -shm files
    /// the database file's mode). `tightenExisting` also makes an existing file and its
    /// companions 0600 when an older hsmd left them readable.
    static func makePrivate(_ path: String, tightenExisting: Bool) throws(DatabaseError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw DatabaseError(code: SQLITE_CANTOPEN, operation: "open \(path)", message: String(cString: strerror(errno)))
        }
        close(fd)
        guard tightenExisting else { return }
        for p in [path, path + "-wal", path + "-shm"] {
            var st = stat()
            guard lstat(p, &st) == 0, st.st_mode & 0o077 != 0 else { continue }
            if chmod(p, 0o600) != 0 {
                throw DatabaseError(code: SQLITE_PERM, operation: "chmod 0600 \(p)", message: String(cString: strerror(errno)))
            }
        }
    }

    private func error(_ rc: Int32, _ op: String) -> DatabaseError {
        DatabaseError(code: rc, operation: namesPathInErrors ? "\(op) (\(path))" : op, message: String(cString: sqlite3_errmsg(db)))
    }

    func locked<T>(_ body: () throws(DatabaseError) -> T) throws(DatabaseError) -> T {
        try lock.withLock { _ throws(DatabaseError) -> T in try body() }
    }

    /// Runs `sql` (several statements allowed, no arguments). Caller holds the lock.
    func exec(_ sql: String) throws(DatabaseError) {
        let rc = sqlite3_exec(db, sql, nil, nil, nil)
        if rc != SQLITE_OK { throw error(rc, "execute") }
    }

    /// Runs one statement with `args`, calling `row` for every result row. Caller holds the lock.
    func run(_ sql: String, _ args: [Value] = [], row: (Row) -> Void = { _ in }) throws(DatabaseError) {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "prepare \(sql.prefix(40))") }
        defer { sqlite3_finalize(stmt) }
        bind(stmt, args)
        try rows(stmt, "step \(sql.prefix(40))", row)
    }

    private func rows(_ stmt: OpaquePointer, _ op: String, _ row: (Row) -> Void) throws(DatabaseError) {
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_ROW { row(Row(stmt: stmt)); continue }
            if rc == SQLITE_DONE { return }
            throw error(rc, op)
        }
    }

    private func bind(_ stmt: OpaquePointer, _ args: [Value]) {
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (i, a) in args.enumerated() {
            let k = Int32(i + 1)
            switch a {
            case .int(let v): sqlite3_bind_int64(stmt, k, v)
            case .real(let v): sqlite3_bind_double(stmt, k, v)
            case .text(let v?): sqlite3_bind_text(stmt, k, v, -1, transient)
            case .text(nil), .blob(nil): sqlite3_bind_null(stmt, k)
            case .blob(let v?): _ = v.withUnsafeBytes { sqlite3_bind_blob(stmt, k, $0.baseAddress, Int32($0.count), transient) }
            }
        }
    }

    /// Runs `body` between BEGIN IMMEDIATE and COMMIT, rolling back if it throws. Caller
    /// holds the lock.
    func inTransaction(_ body: () throws(DatabaseError) -> Void) throws(DatabaseError) {
        try run("BEGIN IMMEDIATE")
        do throws(DatabaseError) { try body() } catch {
            try? run("ROLLBACK")
            throw error
        }
        try run("COMMIT")
    }

    /// Rows the last statement changed.
    var changes: Int { Int(sqlite3_changes(db)) }
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(db) }

    /// One prepared statement run many times in a batch. It keeps its connection: SQLite
    /// does not close a connection with statements still open.
    final class Statement {
        fileprivate let stmt: OpaquePointer
        private let connection: SQLiteConnection
        fileprivate init(_ stmt: OpaquePointer, _ connection: SQLiteConnection) {
            self.stmt = stmt
            self.connection = connection
        }
        deinit { sqlite3_finalize(stmt) }
    }

    func prepare(_ sql: String) throws(DatabaseError) -> Statement {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "prepare \(sql.prefix(40))") }
        return Statement(stmt, self)
    }

    /// Runs `s` once with `args` (its result rows, if any, unread). Caller holds the lock.
    func step(_ s: Statement, _ args: [Value]) throws(DatabaseError) {
        sqlite3_reset(s.stmt)
        sqlite3_clear_bindings(s.stmt)
        bind(s.stmt, args)
        let rc = sqlite3_step(s.stmt)
        if rc != SQLITE_DONE && rc != SQLITE_ROW { throw error(rc, "step") }
    }

    /// Runs `s` (no arguments), calling `row` for every result row. Caller holds the lock.
    func rows(_ s: Statement, row: (Row) -> Void) throws(DatabaseError) {
        try rows(s.stmt, "step", row)
    }

    /// The current result row of a statement, read by column index.
    struct Row {
        fileprivate let stmt: OpaquePointer

        func int64(_ i: Int32) -> Int64 { sqlite3_column_int64(stmt, i) }
        func double(_ i: Int32) -> Double { sqlite3_column_double(stmt, i) }
        func isNull(_ i: Int32) -> Bool { sqlite3_column_type(stmt, i) == SQLITE_NULL }

        func text(_ i: Int32) -> String? {
            guard let p = sqlite3_column_text(stmt, i) else { return nil }
            return String(cString: p)
        }

        /// nil for NULL; an empty blob is [].
        func blob(_ i: Int32) -> [UInt8]? {
            if isNull(i) { return nil }
            let n = Int(sqlite3_column_bytes(stmt, i))
            guard n > 0, let p = sqlite3_column_blob(stmt, i) else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: n))
        }
    }
}
