import Foundation
import HSMCore

/// The catalog's database (state_dir/catalog.sqlite): one row per object and per managed
/// file, an index of what the markers and the stores say (never the truth). The system's
/// SQLite through SQLiteConnection, like the journal (no GRDB: its clean build would add
/// minutes on a small build machine for a dozen statements). One connection, serialized by
/// its lock: the catalog's writer thread commits batches, control threads read.
final class CatalogDatabase: @unchecked Sendable {
    // @unchecked: `ids` is mutable, and only touched under `db.locked` (the connection's
    // lock), so no two threads ever use it at once.
    private let db: SQLiteConnection
    var path: String { db.path }
    /// Filesystem paths and store names → their row ids; only touched under `db.locked`.
    private var ids: [String: Int64] = [:]

    /// The schema version this hsmd writes.
    static let currentVersion = 2

    /// `migrations[i]` takes a database from version i to i + 1. Never edit a shipped
    /// step: add one.
    static let migrations: [String] = [
        // Filesystems and stores by number, object ids as their 16 bytes.
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE filesystem(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
        CREATE TABLE store(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
        CREATE TABLE object(
            id BLOB PRIMARY KEY, store INTEGER NOT NULL, handle BLOB, fs INTEGER, path TEXT NOT NULL,
            size INTEGER NOT NULL, stored_bytes INTEGER NOT NULL, archived_at INTEGER NOT NULL,
            refs INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
        CREATE INDEX object_by_store ON object(store, archived_at);
        CREATE INDEX object_by_fs ON object(fs, archived_at);
        CREATE INDEX object_orphans ON object(store, stored_bytes) WHERE refs = 0;
        CREATE TABLE file(
            fs INTEGER NOT NULL, handle BLOB NOT NULL, path TEXT, state TEXT NOT NULL, size INTEGER NOT NULL,
            offline_bytes INTEGER NOT NULL, object BLOB, updated_at INTEGER NOT NULL, PRIMARY KEY(fs, handle)) WITHOUT ROWID;
        CREATE INDEX file_by_object ON file(object);
        -- Running totals, kept by the triggers below in the same transactions as the rows,
        -- so that report reads a few rows whatever the number of files.
        CREATE TABLE file_totals(fs INTEGER NOT NULL, state TEXT NOT NULL, files INTEGER NOT NULL,
            bytes INTEGER NOT NULL, offline_bytes INTEGER NOT NULL, PRIMARY KEY(fs, state)) WITHOUT ROWID;
        CREATE TABLE object_totals(kind TEXT NOT NULL, id INTEGER NOT NULL, objects INTEGER NOT NULL,
            stored_bytes INTEGER NOT NULL, PRIMARY KEY(kind, id)) WITHOUT ROWID;
        CREATE TRIGGER file_added AFTER INSERT ON file BEGIN
            INSERT INTO file_totals VALUES(NEW.fs, NEW.state, 1, NEW.size, NEW.offline_bytes)
                ON CONFLICT(fs, state) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes,
                offline_bytes = offline_bytes + excluded.offline_bytes;
            UPDATE object SET refs = refs + 1 WHERE NEW.object IS NOT NULL AND id = NEW.object;
        END;
        CREATE TRIGGER file_removed AFTER DELETE ON file BEGIN
            UPDATE file_totals SET files = files - 1, bytes = bytes - OLD.size, offline_bytes = offline_bytes - OLD.offline_bytes
                WHERE fs = OLD.fs AND state = OLD.state;
            UPDATE object SET refs = refs - 1 WHERE OLD.object IS NOT NULL AND id = OLD.object;
        END;
        CREATE TRIGGER file_changed AFTER UPDATE ON file BEGIN
            UPDATE file_totals SET files = files - 1, bytes = bytes - OLD.size, offline_bytes = offline_bytes - OLD.offline_bytes
                WHERE fs = OLD.fs AND state = OLD.state;
            INSERT INTO file_totals VALUES(NEW.fs, NEW.state, 1, NEW.size, NEW.offline_bytes)
                ON CONFLICT(fs, state) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes,
                offline_bytes = offline_bytes + excluded.offline_bytes;
            UPDATE object SET refs = refs - 1 WHERE OLD.object IS NOT NULL AND id = OLD.object AND OLD.object IS NOT NEW.object;
            UPDATE object SET refs = refs + 1 WHERE NEW.object IS NOT NULL AND id = NEW.object AND OLD.object IS NOT NEW.object;
        END;
        CREATE TRIGGER object_added AFTER INSERT ON object BEGIN
            UPDATE object SET refs = (SELECT COUNT(*) FROM file WHERE file.object = NEW.id) WHERE id = NEW.id;
            INSERT INTO object_totals VALUES('store', NEW.store, 1, NEW.stored_bytes)
                ON CONFLICT(kind, id) DO UPDATE SET objects = objects + 1, stored_bytes = stored_bytes + excluded.stored_bytes;
            INSERT INTO object_totals SELECT 'fs', NEW.fs, 1, NEW.stored_bytes WHERE NEW.fs IS NOT NULL
                ON CONFLICT(kind, id) DO UPDATE SET objects = objects + 1, stored_bytes = stored_bytes + excluded.stored_bytes;
        END;
        CREATE TRIGGER object_removed AFTER DELETE ON object BEGIN
            UPDATE object_totals SET objects = objects - 1, stored_bytes = stored_bytes - OLD.stored_bytes
                WHERE (kind = 'store' AND id = OLD.store) OR (kind = 'fs' AND id = OLD.fs);
        END;
        CREATE TRIGGER object_changed AFTER UPDATE OF store, fs, stored_bytes ON object BEGIN
            UPDATE object_totals SET objects = objects - 1, stored_bytes = stored_bytes - OLD.stored_bytes
                WHERE (kind = 'store' AND id = OLD.store) OR (kind = 'fs' AND id = OLD.fs);
            INSERT INTO object_totals VALUES('store', NEW.store, 1, NEW.stored_bytes)
                ON CONFLICT(kind, id) DO UPDATE SET objects = objects + 1, stored_bytes = stored_bytes + excluded.stored_bytes;
            INSERT INTO object_totals SELECT 'fs', NEW.fs, 1, NEW.stored_bytes WHERE NEW.fs IS NOT NULL
                ON CONFLICT(kind, id) DO UPDATE SET objects = objects + 1, stored_bytes = stored_bytes + excluded.stored_bytes;
        END;
        """,
        // Pinned files (`hsmctl pin`): a flag per row and a running total per filesystem,
        // so that report says how much space pins hold without a walk.
        """
        ALTER TABLE file ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE pinned_totals(fs INTEGER PRIMARY KEY, files INTEGER NOT NULL, bytes INTEGER NOT NULL);
        CREATE TRIGGER file_pinned_added AFTER INSERT ON file WHEN NEW.pinned BEGIN
            INSERT INTO pinned_totals VALUES(NEW.fs, 1, NEW.size)
                ON CONFLICT(fs) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
        END;
        CREATE TRIGGER file_pinned_removed AFTER DELETE ON file WHEN OLD.pinned BEGIN
            UPDATE pinned_totals SET files = files - 1, bytes = bytes - OLD.size WHERE fs = OLD.fs;
        END;
        CREATE TRIGGER file_pinned_changed AFTER UPDATE ON file WHEN OLD.pinned OR NEW.pinned BEGIN
            UPDATE pinned_totals SET files = files - 1, bytes = bytes - OLD.size WHERE OLD.pinned AND fs = OLD.fs;
            INSERT INTO pinned_totals SELECT NEW.fs, 1, NEW.size WHERE NEW.pinned
                ON CONFLICT(fs) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
        END;
        """,
    ]

    /// The per-row removal triggers, recreated after a rebuild empties the tables, with
    /// the migration step that made each.
    static let removalTriggerNames = [(0, "file_removed"), (0, "object_removed"), (1, "file_pinned_removed")]

    static var removalTriggers: String {
        removalTriggerNames.compactMap { step, name -> String? in
            let sql = migrations[step]
            guard let a = sql.range(of: "CREATE TRIGGER \(name) "), let b = sql.range(of: "END;", range: a.upperBound..<sql.endIndex) else { return nil }
            return String(sql[a.lowerBound..<b.upperBound])
        }.joined(separator: "\n")
    }

    /// Why a catalog file cannot be used as it is (then it is set aside and rebuilt).
    enum OpenProblem: Error, CustomStringConvertible {
        case damaged(String)
        case newerVersion(Int)
        case badVersion(String)
        case io(DatabaseError)

        var description: String {
            switch self {
            case .damaged(let why): return "damaged (\(why))"
            case .newerVersion(let v):
                return "schema version \(v) is newer than this hsmd knows (\(CatalogDatabase.currentVersion)): a newer hsmd wrote it"
            case .badVersion(let why): return "unreadable schema version (\(why))"
            case .io(let e): return "\(e)"
            }
        }
    }

    /// Opens (creating, or migrating to `migrations.count`) the database at `path`.
    init(path: String, migrations: [String] = CatalogDatabase.migrations) throws(OpenProblem) {
        // Created 0600 before SQLite opens it: it names every managed file.
        do { try SQLiteConnection.makePrivate(path, tightenExisting: false) } catch { throw .io(error) }
        let db: SQLiteConnection
        do { db = try SQLiteConnection(path: path, namesPathInErrors: true) } catch { throw .damaged("open: \(error.message)") }
        // On a throw below, `db` is released, which closes it.
        do {
            // A file that is not a database fails here, at its first read. Damage inside
            // it shows at quickCheck (which the writer runs after start, off the start
            // path: it reads every page) or at the first statement that meets it.
            try db.run("PRAGMA journal_mode=WAL")
            try db.run("PRAGMA synchronous=NORMAL")
            try db.run("PRAGMA journal_size_limit=67108864")
            try db.run("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
            var versions: [Int64] = []
            try db.run("SELECT version FROM schema_version") { versions.append($0.int64(0)) }
            guard versions.count <= 1 else { throw OpenProblem.badVersion("\(versions.count) rows in schema_version") }
            let version = Int(versions.first ?? 0)
            guard version >= 0 else { throw OpenProblem.badVersion("version \(version)") }
            guard version <= migrations.count else { throw OpenProblem.newerVersion(version) }
            if version < migrations.count {
                try db.inTransaction { () throws(DatabaseError) in
                    for step in migrations[version...] { try db.exec(step) }
                    try db.run("DELETE FROM schema_version")
                    try db.run("INSERT INTO schema_version(version) VALUES(?)", [.int(Int64(migrations.count))])
                }
            }
        } catch let e as OpenProblem {
            throw e
        } catch let e as DatabaseError {
            // SQLITE_NOTADB / SQLITE_CORRUPT: not a database, or a broken one.
            if e.meansDamaged { throw .damaged(e.description) }
            throw .io(e)
        } catch {
            throw .damaged("\(error)")
        }
        self.db = db
    }

    /// nil when SQLite's quick_check finds the file sound, else what it found. Reads every
    /// page (measured: 14 s for a catalog of a million files, 409 MiB, on a busy machine),
    /// through a read-only connection of its own, so writes and reports go on meanwhile (WAL).
    static func quickCheck(path: String) -> String? {
        let db: SQLiteConnection
        do { db = try SQLiteConnection(path: path, readOnly: true) } catch { return "open for quick_check: sqlite \(error.code)" }
        let check: SQLiteConnection.Statement
        do { check = try db.prepare("PRAGMA quick_check") } catch { return "quick_check: \(error.message)" }
        var verdict = ""
        do { try db.rows(check) { verdict += $0.text(0) ?? "" } } catch { return "quick_check: \(error.message) (sqlite \(error.code))" }
        return verdict == "ok" ? nil : "quick_check: \(verdict.prefix(200))"
    }

    /// True for the result codes of a file that is not, or no longer, a sound database.
    static func meansDamaged(_ e: DatabaseError) -> Bool { e.meansDamaged }

    /// The version recorded in the file (for tests and messages).
    func schemaVersion() throws(DatabaseError) -> Int {
        try db.locked { () throws(DatabaseError) -> Int in
            var v: Int64 = 0
            try db.run("SELECT version FROM schema_version") { v = $0.int64(0) }
            return Int(v)
        }
    }

    // MARK: Writing

    /// Runs `body` in one transaction (rolled back if it throws). `replaceAll` empties
    /// both tables first (a rebuild).
    func transaction(replaceAll: Bool = false, _ body: (Writer) throws(DatabaseError) -> Void) throws(DatabaseError) {
        try db.locked { () throws(DatabaseError) in
            try db.inTransaction { () throws(DatabaseError) in
                if replaceAll {
                    // Triggers are per row: emptying the tables is quicker without them,
                    // and the totals start again from nothing.
                    for (_, name) in Self.removalTriggerNames { try db.run("DROP TRIGGER IF EXISTS \(name)") }
                    try db.run("DELETE FROM file")
                    try db.run("DELETE FROM object")
                    try db.run("DELETE FROM file_totals")
                    try db.run("DELETE FROM object_totals")
                    try db.run("DELETE FROM pinned_totals")
                    try db.exec(Self.removalTriggers)
                }
                let w = Writer(catalog: self,
                               upsertFile: try db.prepare("""
                                   INSERT INTO file(fs, handle, path, state, size, offline_bytes, object, updated_at, pinned)
                                     VALUES(?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?9, 0))
                                   ON CONFLICT(fs, handle) DO UPDATE SET path = COALESCE(excluded.path, path), state = excluded.state,
                                     size = excluded.size, offline_bytes = excluded.offline_bytes, object = excluded.object,
                                     updated_at = excluded.updated_at, pinned = COALESCE(?9, pinned)
                                   """),
                               upsertObject: try db.prepare("""
                                   INSERT INTO object(id, store, handle, fs, path, size, stored_bytes, archived_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?)
                                   ON CONFLICT(id) DO UPDATE SET store = excluded.store, handle = COALESCE(excluded.handle, handle),
                                     fs = COALESCE(excluded.fs, fs), path = excluded.path, size = excluded.size,
                                     stored_bytes = excluded.stored_bytes, archived_at = excluded.archived_at
                                   """),
                               deleteObject: try db.prepare("DELETE FROM object WHERE id = ?"),
                               deleteFile: try db.prepare("DELETE FROM file WHERE fs = ? AND handle = ?"))
                try body(w)
            }
        }
    }

    /// The oldest and newest archive time of a store's or filesystem's objects (from the
    /// index on that column: two lookups). Caller holds the lock.
    private func archiveRange(_ column: String, _ id: Int64) throws(DatabaseError) -> (Int64?, Int64?) {
        var oldest: Int64?, newest: Int64?
        try db.run("SELECT MIN(archived_at) FROM object WHERE \(column) = ?", [.int(id)]) { s in
            if !s.isNull(0) { oldest = s.int64(0) }
        }
        try db.run("SELECT MAX(archived_at) FROM object WHERE \(column) = ?", [.int(id)]) { s in
            if !s.isNull(0) { newest = s.int64(0) }
        }
        return (oldest, newest)
    }

    struct Writer {
        fileprivate let catalog: CatalogDatabase
        fileprivate let upsertFile: SQLiteConnection.Statement
        fileprivate let upsertObject: SQLiteConnection.Statement
        fileprivate let deleteObject: SQLiteConnection.Statement
        fileprivate let deleteFile: SQLiteConnection.Statement

        func file(_ f: CatalogFile) throws(DatabaseError) {
            try catalog.db.step(upsertFile, [.int(try catalog.nameID("filesystem", "path", f.fs)), .blob(f.handle), .text(f.path),
                                             .text(f.state.rawValue), .int(f.size), .int(f.offlineBytes),
                                             .blob(f.object.flatMap(CatalogDatabase.idBytes)), .int(f.updatedAt),
                                             f.pinned.map { .int($0 ? 1 : 0) } ?? .blob(nil)])
        }

        func object(_ o: CatalogObject) throws(DatabaseError) {
            guard let id = CatalogDatabase.idBytes(o.id) else { return }
            var fs = SQLiteConnection.Value.blob(nil)
            if let path = o.fs { fs = .int(try catalog.nameID("filesystem", "path", path)) }
            try catalog.db.step(upsertObject, [.blob(id), .int(try catalog.nameID("store", "name", o.store)), .blob(o.handle), fs,
                                               .text(o.path), .int(o.size), .int(o.storedBytes), .int(o.archivedAt)])
        }

        func deleteObject(_ id: String) throws(DatabaseError) {
            guard let id = CatalogDatabase.idBytes(id) else { return }
            try catalog.db.step(deleteObject, [.blob(id)])
        }

        func deleteFile(fs: String, handle: [UInt8]) throws(DatabaseError) {
            try catalog.db.step(deleteFile, [.int(try catalog.nameID("filesystem", "path", fs)), .blob(handle)])
        }

        func deleteMeta(_ key: String) throws(DatabaseError) { try catalog.db.run("DELETE FROM meta WHERE key = ?", [.text(key)]) }

        func setMeta(_ key: String, _ value: String) throws(DatabaseError) {
            try catalog.db.run("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                               [.text(key), .text(value)])
        }
    }

    static func idBytes(_ hex: String) -> [UInt8]? { ObjectID(hex: hex)?.bytes }
    static func idHex(_ bytes: [UInt8]?) -> String? { bytes.flatMap { ObjectID(bytes: $0)?.hex } }

    /// The row id of a filesystem path or store name, added if new. Caller holds the lock.
    fileprivate func nameID(_ table: String, _ column: String, _ name: String) throws(DatabaseError) -> Int64 {
        let key = table + "\u{0}" + name
        if let id = ids[key] { return id }
        try db.run("INSERT OR IGNORE INTO \(table)(\(column)) VALUES(?)", [.text(name)])
        var id: Int64?
        try db.run("SELECT id FROM \(table) WHERE \(column) = ?", [.text(name)]) { id = $0.int64(0) }
        guard let id else { throw .notReadBack("add \(table) \(name)") }
        ids[key] = id
        return id
    }

    /// The row id of a name, or nil when the catalog has none. Caller holds the lock.
    private func existingID(_ table: String, _ column: String, _ name: String) throws(DatabaseError) -> Int64? {
        var id: Int64?
        try db.run("SELECT id FROM \(table) WHERE \(column) = ?", [.text(name)]) { id = $0.int64(0) }
        return id
    }

    // MARK: Reading

    func meta(_ key: String) throws(DatabaseError) -> String? {
        try db.locked { () throws(DatabaseError) -> String? in
            var v: String?
            try db.run("SELECT value FROM meta WHERE key = ?", [.text(key)]) { v = $0.text(0) }
            return v
        }
    }

    func files(fs: String) throws(DatabaseError) -> [CatalogFile] {
        try db.locked { () throws(DatabaseError) -> [CatalogFile] in
            var out: [CatalogFile] = []
            guard let fsID = try existingID("filesystem", "path", fs) else { return [] }
            try db.run("SELECT handle, path, state, size, offline_bytes, object, updated_at, pinned FROM file WHERE fs = ?", [.int(fsID)]) { s in
                guard let state = s.text(2).flatMap(HSMState.init(rawValue:)) else { return }
                out.append(CatalogFile(fs: fs, handle: s.blob(0) ?? [], path: s.text(1), state: state,
                                       size: s.int64(3), offlineBytes: s.int64(4),
                                       object: Self.idHex(s.blob(5)), updatedAt: s.int64(6), pinned: s.int64(7) != 0))
            }
            return out
        }
    }

    func objects(store: String) throws(DatabaseError) -> [CatalogObject] {
        try db.locked { () throws(DatabaseError) -> [CatalogObject] in
            var out: [CatalogObject] = []
            guard let storeID = try existingID("store", "name", store) else { return [] }
            try db.run("""
                SELECT o.id, o.handle, f.path, o.path, o.size, o.stored_bytes, o.archived_at
                FROM object o LEFT JOIN filesystem f ON f.id = o.fs WHERE o.store = ?
                """, [.int(storeID)]) { s in
                guard let id = Self.idHex(s.blob(0)) else { return }
                out.append(CatalogObject(id: id, store: store, handle: s.blob(1), fs: s.text(2),
                                         path: s.text(3) ?? "", size: s.int64(4),
                                         storedBytes: s.int64(5), archivedAt: s.int64(6)))
            }
            return out
        }
    }

    /// Figures for `hsmctl report`, from the indexes (no walk): files and bytes by state
    /// per filesystem, objects and orphans per store.
    func report(filesystems: [(path: String, store: String)]) throws(DatabaseError) -> CatalogReport {
        try db.locked { () throws(DatabaseError) -> CatalogReport in
            var report = CatalogReport()
            for fs in filesystems {
                var r = CatalogReport.Filesystem(path: fs.path, store: fs.store)
                defer { report.filesystems.append(r) }
                guard let fsID = try existingID("filesystem", "path", fs.path) else { continue }
                try db.run("SELECT state, files, bytes, offline_bytes FROM file_totals WHERE fs = ? AND files > 0", [.int(fsID)]) { s in
                    guard let state = s.text(0).flatMap(HSMState.init(rawValue:)) else { return }
                    let files = s.int64(1), size = s.int64(2)
                    r.states[state.rawValue] = .init(files: files, bytes: size)
                    r.files += files
                    r.bytes += size
                    r.offlineBytes += s.int64(3)
                }
                r.localBytes = r.bytes - r.offlineBytes
                try db.run("SELECT objects, stored_bytes FROM object_totals WHERE kind = 'fs' AND id = ?", [.int(fsID)]) { s in
                    r.objects = s.int64(0)
                    r.storedBytes = s.int64(1)
                }
                try db.run("SELECT files, bytes FROM pinned_totals WHERE fs = ?", [.int(fsID)]) { s in
                    r.pinned = .init(files: s.int64(0), bytes: s.int64(1))
                }
                (r.oldestArchive, r.newestArchive) = try archiveRange("fs", fsID)
            }
            var seen = Set<String>()
            for name in filesystems.map(\.store) where seen.insert(name).inserted {
                var r = CatalogReport.Store(name: name)
                defer { report.stores.append(r) }
                guard let storeID = try existingID("store", "name", name) else { continue }
                try db.run("SELECT objects, stored_bytes FROM object_totals WHERE kind = 'store' AND id = ?", [.int(storeID)]) { s in
                    r.objects = s.int64(0)
                    r.storedBytes = s.int64(1)
                }
                (r.oldestArchive, r.newestArchive) = try archiveRange("store", storeID)
                try db.run("SELECT COUNT(*), TOTAL(stored_bytes) FROM object WHERE store = ? AND refs = 0", [.int(storeID)]) { s in
                    r.orphans = s.int64(0)
                    r.orphanBytes = Int64(s.double(1))
                }
            }
            var v: String?
            try db.run("SELECT value FROM meta WHERE key = 'rebuilt_at'") { v = $0.text(0) }
            report.rebuiltAt = v.flatMap { Int64($0) }
            return report
        }
    }
}

/// One managed file as the catalog last saw it.
struct CatalogFile: Sendable, Equatable {
    var fs: String
    var handle: [UInt8]
    var path: String?
    var state: HSMState
    var size: Int64
    var offlineBytes: Int64
    var object: String?
    /// Unix milliseconds when the row was queued (just after its marker was written).
    var updatedAt: Int64
    /// Whether it is pinned (`hsmctl pin`); nil in an update: the row keeps what it has
    /// (only pin, unpin and a rebuild know, the rest of hsmd never reads the pin).
    var pinned: Bool? = nil
}

/// One object in a store.
struct CatalogObject: Sendable, Equatable {
    var id: String
    var store: String
    var handle: [UInt8]?
    var fs: String?
    var path: String
    var size: Int64
    var storedBytes: Int64
    var archivedAt: Int64
}
