import Foundation
import Glibc
import XCTest
@testable import HSMCore
@testable import HSMStores

/// First use versus wrong store, decided from the store directory and state_dir's memory.
final class StoreIdentityTests: XCTestCase {
    private var base = ""
    private var store: String { base + "/store" }
    private var state: String { base + "/state" }

    override func setUp() {
        base = FileManager.default.temporaryDirectory.appendingPathComponent("hsmd-identity-\(UUID().uuidString)").path
        for d in [base, store, state] { XCTAssertEqual(mkdir(d, 0o700), 0) }
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: base)
    }

    private func identity(_ name: String = "tier1", stateDir: String? = nil) -> StoreIdentity {
        StoreIdentity(storeName: name, root: store, stateDir: stateDir ?? state)
    }

    private func refusal(_ outcome: StoreIdentity.Outcome) -> String? {
        if case .refused(let why) = outcome { return why }
        return nil
    }

    func testFirstUseWritesAPrivateIdentityAndRemembersIt() throws {
        guard case .initialised(let id) = identity().establish() else { return XCTFail("not initialised") }
        var st = stat()
        XCTAssertEqual(stat(store + "/" + StoreIdentity.fileName, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(identity().establish(), .verified(id: id))
        XCTAssertNil(identity().problem())
    }

    func testAnEmptyDirectoryForARememberedStoreIsNotInitialised() throws {
        guard case .initialised = identity().establish() else { return XCTFail("not initialised") }
        unlink(store + "/" + StoreIdentity.fileName)
        let why = try XCTUnwrap(refusal(identity().establish()))
        XCTAssertTrue(why.contains("no identity file"), why)
        XCTAssertFalse(FileManager.default.fileExists(atPath: store + "/" + StoreIdentity.fileName))
    }

    func testAnotherStoresIdentityIsRefused() throws {
        guard case .initialised = identity().establish() else { return XCTFail("not initialised") }
        // The same directory initialised by another hsmd (another state_dir) is another store.
        let other = base + "/other-state"
        XCTAssertEqual(mkdir(other, 0o700), 0)
        unlink(store + "/" + StoreIdentity.fileName)
        guard case .initialised = identity(stateDir: other).establish() else { return XCTFail("not initialised") }
        let why = try XCTUnwrap(refusal(identity().establish()))
        XCTAssertTrue(why.contains("holds store id"), why)
    }

    func testAStoreOfAnotherNameIsRefused() throws {
        guard case .initialised = identity("tier1").establish() else { return XCTFail("not initialised") }
        let why = try XCTUnwrap(refusal(identity("tier2", stateDir: base).establish()))
        XCTAssertTrue(why.contains("holds store \"tier1\""), why)
    }

    func testANonEmptyDirectoryWithoutIdentityIsNotAStore() throws {
        XCTAssertTrue(FileManager.default.createFile(atPath: store + "/unrelated", contents: Data("x".utf8)))
        let why = try XCTUnwrap(refusal(identity().establish()))
        XCTAssertTrue(why.contains("not empty"), why)
    }

    func testAStoreFromBeforeIdentityFilesIsAdopted() throws {
        XCTAssertEqual(mkdir(store + "/objects", 0o700), 0)
        XCTAssertEqual(mkdir(store + "/lost+found", 0o700), 0)
        guard case .adopted = identity().establish() else { return XCTFail("not adopted") }
        XCTAssertNil(identity().problem())
    }

    func testAnExistingIdentityIsAdoptedWhenStateDirForgotIt() throws {
        guard case .initialised(let id) = identity().establish() else { return XCTFail("not initialised") }
        unlink(state + "/" + StoreIdentity.memoryName)
        XCTAssertEqual(identity().establish(), .adopted(id: id, why: "its identity file was not yet remembered in \(state)/\(StoreIdentity.memoryName)"))
    }

    func testAMovedStoreIsFollowedAndAnEmptyNewPathIsRefused() throws {
        guard case .initialised(let id) = identity().establish() else { return XCTFail("not initialised") }
        let moved = base + "/moved"
        XCTAssertEqual(rename(store, moved), 0)
        XCTAssertEqual(StoreIdentity(storeName: "tier1", root: moved, stateDir: state).establish(), .verified(id: id))
        let memory = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: state + "/" + StoreIdentity.memoryName)))
        XCTAssertEqual(((memory as? [String: Any])?["tier1"] as? [String: Any])?["path"] as? String, moved)
        let empty = base + "/empty"
        XCTAssertEqual(mkdir(empty, 0o700), 0)
        let why = try XCTUnwrap(refusal(StoreIdentity(storeName: "tier1", root: empty, stateDir: state).establish()))
        XCTAssertTrue(why.contains("at \(moved)"), why)
    }

    func testAGarbledMemoryIsAnErrorNotAFirstUse() throws {
        XCTAssertTrue(FileManager.default.createFile(atPath: state + "/" + StoreIdentity.memoryName, contents: Data("{".utf8)))
        XCTAssertNotNil(refusal(identity().establish()))
        XCTAssertFalse(FileManager.default.fileExists(atPath: store + "/" + StoreIdentity.fileName))
    }

    func testAChangedIdentityFileFailsTheCheck() throws {
        let i = identity()
        guard case .initialised = i.establish() else { return XCTFail("not initialised") }
        XCTAssertNil(i.problem())
        XCTAssertTrue(FileManager.default.createFile(atPath: store + "/" + StoreIdentity.fileName, contents: Data("{}".utf8)))
        XCTAssertNotNil(i.problem())
    }

    func testARefusedStoreIsAcceptedOnceItProvesItself() throws {
        guard case .initialised = identity().establish() else { return XCTFail("not initialised") }
        let saved = try Data(contentsOf: URL(fileURLWithPath: store + "/" + StoreIdentity.fileName))
        unlink(store + "/" + StoreIdentity.fileName)
        let i = identity()
        XCTAssertNotNil(refusal(i.establish()))
        XCTAssertNotNil(i.problem())
        XCTAssertTrue(FileManager.default.createFile(atPath: store + "/" + StoreIdentity.fileName, contents: saved))
        XCTAssertNil(i.problem())
    }
}

/// The same rules for a store whose identity is an object (as s3's): a location in
/// memory, whose object can vanish or change between checks.
final class ObjectIdentityTests: XCTestCase {
    final class Bucket: IdentityLocation, @unchecked Sendable {
        // @unchecked: the tests touch it from one thread.
        var object: [UInt8]?
        var objectsBefore = false
        var down = false
        var writes = 0
        var place: String { "bucket b at http://s3" }
        var kind: String { "bucket" }
        var identityNoun: String { "identity object" }
        var identityName: String { "the identity object hsmd-store.json in bucket b" }
        var absentHint: String { "was the bucket emptied" }
        var wrongStoreRemedy: String { "point it at the right bucket" }
        var goneHint: String { " (gone hint)" }
        var initialisesOnCheck: Bool { true }
        func placeMark() -> Result<PlaceMark?, PlaceProblem> { .success(nil) }
        func placeMoved(pinned: PlaceMark, now: PlaceMark) -> String { "" }
        func readIdentity() -> IdentityRead { down ? .unreadable("cannot be reached") : object.map { .present($0) } ?? .missing }
        func writeIdentity(_ bytes: [UInt8]) -> String? {
            if down { return "cannot be reached" }
            writes += 1
            object = bytes
            return nil
        }
        func firstUse() -> FirstUse { objectsBefore ? .preIdentity : .empty }
    }

    private var state = ""

    override func setUp() {
        state = FileManager.default.temporaryDirectory.appendingPathComponent("hsmd-objident-\(UUID().uuidString)").path
        XCTAssertEqual(mkdir(state, 0o700), 0)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: state) }

    private func refusal(_ outcome: StoreIdentity.Outcome) -> String? {
        if case .refused(let why) = outcome { return why }
        return nil
    }

    func testFirstUseWritesTheObjectAndABucketEmptiedLaterIsRefused() throws {
        let bucket = Bucket()
        let i = StoreIdentity(storeName: "cold", location: bucket, stateDir: state)
        guard case .initialised(let id) = i.establish() else { return XCTFail("not initialised") }
        XCTAssertEqual(i.id, id)
        XCTAssertNil(i.problem())
        XCTAssertNil(i.problem(readingFile: false))
        let saved = try XCTUnwrap(bucket.object)
        bucket.object = nil
        let gone = try XCTUnwrap(i.problem())
        XCTAssertTrue(gone.contains("of store \(id) is gone") && gone.contains("gone hint"), gone)
        // A restart: remembered, absent: refused, and nothing written.
        let again = StoreIdentity(storeName: "cold", location: bucket, stateDir: state)
        let why = try XCTUnwrap(refusal(again.establish()))
        XCTAssertTrue(why.contains("has no identity object, but hsmd archived to store id \(id)") && why.contains("bucket b at http://s3"), why)
        XCTAssertNotNil(again.problem())
        XCTAssertNil(bucket.object)
        XCTAssertEqual(bucket.writes, 1)
        // The right object back: accepted without a restart.
        bucket.object = saved
        XCTAssertNil(again.problem())
        XCTAssertEqual(again.id, id)
    }

    func testAnotherIdIsRefusedNamingBothIds() throws {
        let bucket = Bucket()
        let i = StoreIdentity(storeName: "cold", location: bucket, stateDir: state)
        guard case .initialised(let id) = i.establish() else { return XCTFail("not initialised") }
        let other = ObjectID.random().hex
        let text = String(decoding: try XCTUnwrap(bucket.object), as: UTF8.self).replacingOccurrences(of: id, with: other)
        bucket.object = Array(text.utf8)
        let now = try XCTUnwrap(i.problem())
        XCTAssertTrue(now.contains("now names store id \(other)") && now.contains("verified store id \(id)"), now)
        let why = try XCTUnwrap(refusal(StoreIdentity(storeName: "cold", location: bucket, stateDir: state).establish()))
        XCTAssertTrue(why.contains("holds store id \(other), but hsmd archived to store id \(id)") && why.contains("point it at the right bucket"), why)
    }

    func testAServiceDownAtStartIsInitialisedAtTheFirstCheckItAnswers() throws {
        let bucket = Bucket()
        bucket.down = true
        let i = StoreIdentity(storeName: "cold", location: bucket, stateDir: state)
        let why = try XCTUnwrap(refusal(i.establish()))
        XCTAssertTrue(why.contains("cannot be reached"), why)
        XCTAssertNotNil(i.problem())
        bucket.down = false
        XCTAssertNil(i.problem())
        XCTAssertNotNil(i.id)
        XCTAssertEqual(bucket.writes, 1)
        // Pinned: a service down now is a problem that names the store's id.
        bucket.down = true
        let id = try XCTUnwrap(i.id)
        let down = try XCTUnwrap(i.problem())
        XCTAssertTrue(down.contains("cannot be read (cannot be reached)") && down.contains(id), down)
    }

    func testObjectsFromBeforeIdentitiesAreAdopted() throws {
        let bucket = Bucket()
        bucket.objectsBefore = true
        guard case .adopted = StoreIdentity(storeName: "cold", location: bucket, stateDir: state).establish() else { return XCTFail("not adopted") }
        XCTAssertNotNil(bucket.object)
    }
}
