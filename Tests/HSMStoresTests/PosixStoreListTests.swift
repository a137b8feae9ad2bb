import Foundation
import Glibc
import XCTest
import HSMCore
import HSMKernel
@testable import HSMStores

/// PosixStore.list(): what gc deletes against and import rebuilds from, so a listing that
/// cannot read part of the store must fail, never come back short.
final class PosixStoreListTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("hsmd-list-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/store", withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func testListsRecordsAndIsEmptyBeforeTheFirstObject() throws {
        let store = PosixStore(name: "t", root: dir + "/store")
        XCTAssertEqual(try store.list(), [])
        let a = ObjectID(hex: "ab112233445566778899aabbccddeeff")!, b = ObjectID(hex: "cd112233445566778899aabbccddeeff")!
        for id in [a, b] {
            try FileManager.default.createDirectory(atPath: (store.recordPath(id) as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            XCTAssertTrue(FileManager.default.createFile(atPath: store.recordPath(id), contents: Data("{}".utf8)))
        }
        // A partial record and a stray file are not objects.
        XCTAssertTrue(FileManager.default.createFile(atPath: store.recordPath(a) + ".partial", contents: nil))
        XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/store/objects/README", contents: nil))
        XCTAssertEqual(Set(try store.list()), [a, b])
    }

    func testAnUnreadablePartFailsTheListing() throws {
        let store = PosixStore(name: "t", root: dir + "/store")
        try FileManager.default.createDirectory(atPath: dir + "/store/objects", withIntermediateDirectories: true)
        // Where put makes a directory, a file: its objects cannot be listed.
        XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/store/objects/ab", contents: nil))
        XCTAssertThrowsError(try store.list()) { e in
            guard case StoreError.io(let s) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(s.errno, ENOTDIR)
        }
    }

    func testAMissingStoreDirectoryFailsTheListing() throws {
        let store = PosixStore(name: "t", root: dir + "/nothing")
        XCTAssertThrowsError(try store.list())
    }
}
