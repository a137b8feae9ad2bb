import Foundation
import HSMCore

/// The change journal's database (state_dir/journal.sqlite). One connection, serialized
/// by a lock: the journal's writer thread uses it for group commits, control threads
/// for short reads. WAL mode, synchronous=FULL: a commit is on disk when it returns
/// (except the writer's directory records, see `transaction(durable:)`).
final class JournalDatabase: Sendable {
    private let db: SQLiteConnection
    var path: String { db.path }

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
        // The database names every changed directory: root only.
        try SQLiteConnection.makePrivate(path, tightenExisting: true)
        db = try SQLiteConnection(path: path)
        try db.locked { () throws(DatabaseError) in try db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" + Self.schema) }
    }

    /// Runs `body` in one transaction (rolled back if it throws).
    /// `durable: false` commits without waiting for the disk (the WAL is synced later, at a
    /// checkpoint or the next durable commit); a power loss may then drop the commit. For
    /// directory records only: losing those can only happen with an unclean stop, which
    /// marks the epoch incomplete anyway (the running flag was committed durably at start).
    func transaction(durable: Bool = true, _ body: (Transaction) throws(DatabaseError) -> Void) throws(DatabaseError) {
        try db.locked { () throws(DatabaseError) in
            if !durable { try db.run("PRAGMA synchronous=NORMAL") }
            defer { if !durable { try? db.run("PRAGMA synchronous=FULL") } }
            try db.inTransaction { () throws(DatabaseError) in try body(Transaction(db: db)) }
        }
    }

    /// Statements usable inside `transaction`.
    struct Transaction {
        fileprivate let db: SQLiteConnection

        /// Inserts directories not yet recorded in the epoch; returns how many were new.
        func record(fs: Int64, epoch: Int64, _ rows: [(handle: [UInt8], path: String?)]) throws(DatabaseError) -> Int {
            var added = 0
            for r in rows {
                try db.run("INSERT OR IGNORE INTO dir(fs, epoch, handle, path) VALUES(?, ?, ?, ?)",
                           [.int(fs), .int(epoch), .blob(r.handle), .text(r.path)])
                added += db.changes
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
        try db.locked { () throws(DatabaseError) -> String? in
            var v: String?
            try db.run("SELECT value FROM meta WHERE key = ?", [.text(key)]) { v = $0.text(0) }
            return v
        }
    }

    func filesystems() throws(DatabaseError) -> [KnownFilesystem] {
        try db.locked { () throws(DatabaseError) -> [KnownFilesystem] in
            var out: [KnownFilesystem] = []
            try db.run("SELECT id, path, fsid, current FROM filesystem ORDER BY path") { s in
                out.append(KnownFilesystem(id: s.int64(0), path: s.text(1) ?? "",
                                           fsid: UInt64(bitPattern: s.int64(2)), current: s.int64(3)))
            }
            return out
        }
    }

    /// The filesystem's row, created with a complete epoch 1 if it is new.
    func ensureFilesystem(path: String, fsid: UInt64, now: Double) throws(DatabaseError) -> KnownFilesystem {
        if let known = try filesystems().first(where: { $0.path == path }) { return known }
        try transaction { (_: Transaction) throws(DatabaseError) in
            try db.run("INSERT INTO filesystem(path, fsid, current) VALUES(?, ?, 1)", [.text(path), .int(Int64(bitPattern: fsid))])
            let id = db.lastInsertRowID
            try db.run("INSERT INTO epoch(fs, epoch, started, complete) VALUES(?, 1, ?, 1)", [.int(id), .real(now)])
        }
        guard let row = try filesystems().first(where: { $0.path == path }) else {
            throw .notReadBack("add filesystem \(path)")
        }
        return row
    }

    func epochs(fs: Int64) throws(DatabaseError) -> [JournalEpoch] {
        try db.locked { () throws(DatabaseError) -> [JournalEpoch] in
            var out: [JournalEpoch] = []
            try db.run("""
                SELECT e.epoch, e.started, e.complete, e.reason, e.transactions,
                       (SELECT COUNT(*) FROM dir d WHERE d.fs = e.fs AND d.epoch = e.epoch)
                FROM epoch e WHERE e.fs = ? ORDER BY e.epoch
                """, [.int(fs)]) { s in
                out.append(JournalEpoch(epoch: s.int64(0), started: s.double(1),
                                        complete: s.int64(2) != 0, reason: s.text(3),
                                        directories: Int(s.int64(5)), transactions: Int(s.int64(4))))
            }
            return out
        }
    }

    struct RecordedDirectory { let handle: [UInt8]; let path: String?; let epoch: Int64 }

    /// Every directory recorded in epochs ≥ `since`, once, with the latest epoch and the
    /// path it had when last recorded.
    func directories(fs: Int64, since: Int64) throws(DatabaseError) -> [RecordedDirectory] {
        try db.locked { () throws(DatabaseError) -> [RecordedDirectory] in
            var out: [RecordedDirectory] = []
            try db.run("""
                SELECT handle, path, MAX(epoch) FROM dir WHERE fs = ? AND epoch >= ? GROUP BY handle
                """, [.int(fs), .int(since)]) { s in
                out.append(RecordedDirectory(handle: s.blob(0) ?? [], path: s.text(1), epoch: s.int64(2)))
            }
            return out
        }
    }

    func movedDirectories(fs: Int64, since: Int64) throws(DatabaseError) -> [RecordedDirectory] {
        try db.locked { () throws(DatabaseError) -> [RecordedDirectory] in
            var out: [RecordedDirectory] = []
            try db.run("SELECT handle, path, MAX(epoch) FROM moved WHERE fs = ? AND epoch >= ? GROUP BY handle", [.int(fs), .int(since)]) { s in
                out.append(RecordedDirectory(handle: s.blob(0) ?? [], path: s.text(1), epoch: s.int64(2)))
            }
            return out
        }
    }

    func epochsMoved(fs: Int64, handle: [UInt8], since: Int64) throws(DatabaseError) -> [Int64] {
        try db.locked { () throws(DatabaseError) -> [Int64] in
            var out: [Int64] = []
            try db.run("SELECT epoch FROM moved WHERE fs = ? AND handle = ? AND epoch >= ?", [.int(fs), .blob(handle), .int(since)]) {
                out.append($0.int64(0))
            }
            return out
        }
    }

    func epochsRecording(fs: Int64, handle: [UInt8], since: Int64) throws(DatabaseError) -> [Int64] {
        try db.locked { () throws(DatabaseError) -> [Int64] in
            var out: [Int64] = []
            try db.run("SELECT epoch FROM dir WHERE fs = ? AND handle = ? AND epoch >= ?", [.int(fs), .blob(handle), .int(since)]) {
                out.append($0.int64(0))
            }
            return out
        }
    }

    func migrateEpoch(fs: Int64, path: String) throws(DatabaseError) -> Int64? {
        try db.locked { () throws(DatabaseError) -> Int64? in
            var v: Int64?
            try db.run("SELECT epoch FROM migrate_run WHERE fs = ? AND path = ?", [.int(fs), .text(path)]) { v = $0.int64(0) }
            return v
        }
    }
}
