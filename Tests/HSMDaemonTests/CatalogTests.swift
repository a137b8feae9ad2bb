import Foundation
import HSMCore
import Logging
import XCTest

@testable import HSMDaemon

/// The catalog's database and writer, on real SQLite files in a temporary folder.
final class CatalogTests: XCTestCase {
    private var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "hsmd-catalog-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private var path: String { dir + "/catalog.sqlite" }

    /// An object id (32 hex digits) made of one repeated pair.
    private func id(_ pair: String) -> String { String(repeating: pair, count: 16) }

    private func file(_ n: UInt8, _ state: HSMState, size: Int64 = 100, offline: Int64 = 0, object: String? = nil, fs: String = "/fs") -> CatalogFile {
        CatalogFile(fs: fs, handle: [1, 0, 0, 0, n], path: "/fs/f\(n)", state: state, size: size, offlineBytes: offline,
                    object: object, updatedAt: unixMillis())
    }

    private func object(_ id: String, archivedAt: Int64 = 1000, stored: Int64 = 100) -> CatalogObject {
        CatalogObject(id: id, store: "tier1", handle: nil, fs: "/fs", path: "/fs/x", size: stored, storedBytes: stored, archivedAt: archivedAt)
    }

    func testANewCatalogIsAtTheCurrentVersion() throws {
        let db = try CatalogDatabase(path: path)
        XCTAssertEqual(try db.schemaVersion(), CatalogDatabase.currentVersion)
        XCTAssertEqual(CatalogDatabase.migrations.count, CatalogDatabase.currentVersion)
    }

    func testAnOlderCatalogIsMigratedStepByStepAndKeepsItsRows() throws {
        do {
            // Version 1's own statement: today's writer names columns v1 does not have.
            _ = try CatalogDatabase(path: path, migrations: Array(CatalogDatabase.migrations.prefix(1)))
            let v1 = try SQLiteConnection(path: path)
            try v1.run("INSERT INTO filesystem(id, path) VALUES(1, '/fs')")
            try v1.run("INSERT INTO file(fs, handle, path, state, size, offline_bytes, object, updated_at) VALUES(1, x'0100000001', '/fs/f1', 'released', 100, 100, NULL, 0)")
        }
        let laterStep = "CREATE TABLE scrub_run(started INTEGER NOT NULL);"
        let later = try CatalogDatabase(path: path, migrations: CatalogDatabase.migrations + [laterStep])
        XCTAssertEqual(try later.schemaVersion(), CatalogDatabase.currentVersion + 1)
        XCTAssertEqual(try later.files(fs: "/fs").map(\.state), [.released])
        XCTAssertEqual(try later.files(fs: "/fs").map(\.pinned), [false], "a row from before pins is not pinned")
    }

    func testPinnedRowsAreCountedAndAnUpdateWithoutAPinKeepsTheRowsOwn() throws {
        let db = try CatalogDatabase(path: path)
        var pinned = file(1, .resident, size: 300)
        pinned.pinned = true
        var unpinnedLater = file(2, .resident, size: 50)
        unpinnedLater.pinned = true
        try db.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in
            try w.file(pinned)
            try w.file(unpinnedLater)
            try w.file(file(3, .released, offline: 100))
        }
        var r = try db.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(r.filesystems.first?.pinned, .init(files: 2, bytes: 350))
        // A recall or an archive queues its row with no pin: the pin stays, the size follows.
        try db.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in
            try w.file(file(1, .archived, size: 400, object: id("ab")))
            var off = file(2, .resident, size: 50)
            off.pinned = false
            try w.file(off)
        }
        r = try db.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(r.filesystems.first?.pinned, .init(files: 1, bytes: 400))
        XCTAssertEqual(try db.files(fs: "/fs").sorted { $0.handle.lexicographicallyPrecedes($1.handle) }.map(\.pinned), [true, false, false])
        // A rebuild starts the totals again from its rows.
        try db.transaction(replaceAll: true) { (w: CatalogDatabase.Writer) throws(DatabaseError) in try w.file(unpinnedLater) }
        r = try db.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(r.filesystems.first?.pinned, .init(files: 1, bytes: 50))
        try db.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in try w.deleteFile(fs: "/fs", handle: unpinnedLater.handle) }
        r = try db.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(r.filesystems.first?.pinned, .init(files: 0, bytes: 0))
    }

    func testACatalogFromANewerHsmdIsRefusedWithAClearMessage() throws {
        _ = try CatalogDatabase(path: path, migrations: CatalogDatabase.migrations + ["CREATE TABLE later(x INTEGER);"])
        XCTAssertThrowsError(try CatalogDatabase(path: path)) { error in
            guard case CatalogDatabase.OpenProblem.newerVersion(CatalogDatabase.currentVersion + 1) = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("newer than this hsmd knows (\(CatalogDatabase.currentVersion))"), "\(error)")
        }
    }

    func testAFailedMigrationStepChangesNothing() throws {
        _ = try CatalogDatabase(path: path)
        XCTAssertThrowsError(try CatalogDatabase(path: path, migrations: CatalogDatabase.migrations + ["CREATE TABLE broken(;"]))
        XCTAssertEqual(try CatalogDatabase(path: path).schemaVersion(), CatalogDatabase.currentVersion)
    }

    func testGarbageIsDamagedAndSetAsideAtOpen() throws {
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try CatalogDatabase(path: path)) { error in
            guard case CatalogDatabase.OpenProblem.damaged = error else { return XCTFail("\(error)") }
        }
        let catalog = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
        XCTAssertTrue(catalog.startProblem?.contains("set aside as") ?? false, catalog.startProblem ?? "nil")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertTrue(names.contains { $0.hasPrefix("catalog.sqlite.damaged-") }, "\(names)")
        XCTAssertEqual(try catalog.database.schemaVersion(), CatalogDatabase.currentVersion)
        // A healthy one opens with no problem.
        XCTAssertNil(Catalog.open(stateDir: dir, log: Logger(label: "test"))?.startProblem)
    }

    func testDamageInsideTheFileIsFoundAfterStartAndRebuilt() throws {
        do {
            let db = try CatalogDatabase(path: path)
            try db.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in
                for n in 0..<2000 { try w.file(CatalogFile(fs: "/fs", handle: [1, 0, UInt8(n & 255), UInt8(n >> 8)], path: "/fs/a-long-name-to-fill-pages-\(n)", state: .archived, size: 1, offlineBytes: 0, object: nil, updatedAt: 0)) }
            }
            try db.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in try w.setMeta("x", "y") }
        }
        // Checkpoint the WAL into the file (a plain open and close does), then scribble
        // over the middle of it: the header stays sound, so the open succeeds.
        _ = try CatalogDatabase(path: path)
        let fd = open(path, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let size = lseek(fd, 0, SEEK_END)
        XCTAssertGreaterThan(size, 65536)
        // The last pages hold rows; the first ones hold the schema, which the open reads.
        let junk = [UInt8](repeating: 0xA5, count: 16384)
        XCTAssertEqual(pwrite(fd, junk, junk.count, size - 16384), junk.count)
        close(fd)
        let catalog = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
        XCTAssertNil(catalog.startProblem, "the damage is not at the start of the file")
        let rebuilt = DispatchSemaphore(value: 0)
        catalog.start(rebuild: { rebuilt.signal() })
        defer { catalog.stop() }
        XCTAssertEqual(rebuilt.wait(timeout: .now() + 10), .success, "no rebuild after quick_check found the damage")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertTrue(names.contains { $0.hasPrefix("catalog.sqlite.damaged-") }, "\(names)")
        XCTAssertEqual(try catalog.database.files(fs: "/fs"), [], "the new catalog starts empty")
        XCTAssertNil(CatalogDatabase.quickCheck(path: catalog.database.path))
    }

    func testARebuildThatDidNotFinishIsDoneAgainAtTheNextStart() throws {
        do {
            let catalog = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
            XCTAssertEqual(catalog.startProblem, "missing")
            // The rebuild never ends (hsmd stopped during its walk).
            catalog.start(rebuild: { usleep(200_000) })
            catalog.stop()
        }
        let again = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
        XCTAssertEqual(again.startProblem, "left incomplete by a rebuild that did not finish")
        again.holdUpdates()
        try again.replaceAll(files: [], objects: [])
        XCTAssertNil(Catalog.open(stateDir: dir, log: Logger(label: "test"))?.startProblem)
    }

    func testTheWriterAppliesUpdatesInOrderAndReportSumsThem() throws {
        let catalog = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
        XCTAssertEqual(catalog.startProblem, "missing")
        catalog.start()
        defer { catalog.stop() }
        catalog.enqueue(.object(object(id("aa"), archivedAt: 500, stored: 100)))
        catalog.enqueue(.object(object(id("bb"), archivedAt: 900, stored: 300)))
        catalog.enqueue(.object(object(id("cc"), archivedAt: 700, stored: 50)))
        catalog.enqueue(.file(file(1, .archived, size: 100, object: id("aa"))))
        catalog.enqueue(.file(file(1, .released, size: 100, offline: 100, object: id("aa"))))
        catalog.enqueue(.file(file(2, .partial, size: 300, offline: 200, object: id("bb"))))
        catalog.enqueue(.file(file(3, .resident, size: 7)))
        catalog.enqueue(.deleteObject(id("cc")))
        catalog.enqueue(.object(object(id("dd"), archivedAt: 100, stored: 40)))
        XCTAssertTrue(catalog.flush())
        let r = try catalog.database.report(filesystems: [("/fs", "tier1")])
        let fs = try XCTUnwrap(r.filesystems.first)
        XCTAssertEqual(fs.states["released"], .init(files: 1, bytes: 100))
        XCTAssertEqual(fs.states["partial"], .init(files: 1, bytes: 300))
        XCTAssertEqual(fs.states["resident"], .init(files: 1, bytes: 7))
        XCTAssertEqual(fs.states["archived"], .init(files: 0, bytes: 0))
        XCTAssertEqual(fs.files, 3)
        XCTAssertEqual(fs.offlineBytes, 300)
        XCTAssertEqual(fs.localBytes, 107)
        let store = try XCTUnwrap(r.stores.first)
        XCTAssertEqual(store.objects, 3)
        XCTAssertEqual(store.storedBytes, 440)
        XCTAssertEqual(store.orphans, 1)
        XCTAssertEqual(store.orphanBytes, 40)
        XCTAssertEqual(store.oldestArchive, 100)
        XCTAssertEqual(store.newestArchive, 900)

        // File 2 archived again as dd: bb is now the orphan; file 3 gone from the totals.
        catalog.enqueue(.file(file(2, .archived, size: 300, object: id("dd"))))
        try catalog.database.transaction { (w: CatalogDatabase.Writer) throws(DatabaseError) in try w.deleteFile(fs: "/fs", handle: [1, 0, 0, 0, 3]) }
        XCTAssertTrue(catalog.flush())
        let again = try catalog.database.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(again.filesystems.first?.states["archived"], .init(files: 1, bytes: 300))
        XCTAssertEqual(again.filesystems.first?.states["partial"], .init(files: 0, bytes: 0))
        XCTAssertEqual(again.filesystems.first?.states["resident"], .init(files: 0, bytes: 0))
        XCTAssertEqual(again.filesystems.first?.files, 2)
        XCTAssertEqual(again.stores.first?.orphans, 1)
        XCTAssertEqual(again.stores.first?.orphanBytes, 300)
    }

    func testUpdatesDuringARebuildGoInAfterIt() throws {
        let catalog = try XCTUnwrap(Catalog.open(stateDir: dir, log: Logger(label: "test")))
        catalog.start()
        defer { catalog.stop() }
        catalog.holdUpdates()
        // A release queued while the rebuild walked the file as archived: the newer wins.
        catalog.enqueue(.file(file(1, .released, offline: 100, object: id("aa"))))
        XCTAssertFalse(catalog.flush(timeout: 0.2), "held updates must wait for the rebuild")
        XCTAssertFalse(catalog.notes.isEmpty)
        try catalog.replaceAll(files: [file(1, .archived, object: id("aa")), file(2, .archived, object: id("bb"))],
                               objects: [object(id("aa")), object(id("bb"))])
        XCTAssertTrue(catalog.flush())
        let rows = try catalog.database.files(fs: "/fs").sorted { $0.handle.lexicographicallyPrecedes($1.handle) }
        XCTAssertEqual(rows.map(\.state), [.released, .archived])
        let r = try catalog.database.report(filesystems: [("/fs", "tier1")])
        XCTAssertNotNil(r.rebuiltAt)
        // The totals were started again by the rebuild, then moved by the held update.
        XCTAssertEqual(r.filesystems.first?.states["released"], .init(files: 1, bytes: 100))
        XCTAssertEqual(r.filesystems.first?.states["archived"], .init(files: 1, bytes: 100))
        XCTAssertEqual(r.filesystems.first?.files, 2)
        XCTAssertEqual(r.stores.first?.objects, 2)
        XCTAssertEqual(r.stores.first?.orphans, 0)
        // A second rebuild with fewer rows: nothing of the first is left in the totals.
        catalog.holdUpdates()
        try catalog.replaceAll(files: [file(9, .resident, size: 5)], objects: [object(id("ee"))])
        let r2 = try catalog.database.report(filesystems: [("/fs", "tier1")])
        XCTAssertEqual(r2.filesystems.first?.files, 1)
        XCTAssertEqual(r2.filesystems.first?.states["resident"], .init(files: 1, bytes: 5))
        XCTAssertEqual(r2.stores.first?.objects, 1)
        XCTAssertEqual(r2.stores.first?.orphans, 1)
        XCTAssertTrue(catalog.notes.isEmpty, "\(catalog.notes)")
    }
}
