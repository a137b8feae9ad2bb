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
