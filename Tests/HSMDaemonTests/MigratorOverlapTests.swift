import Foundation
import XCTest
@testable import HSMDaemon

/// Which of a migrate's paths another already covers (`Migrator.withoutOverlaps`).
final class MigratorOverlapTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "overlap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root + "/t/sub", withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/t/sub/f", contents: Data()))
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/t2", contents: Data()))
        try FileManager.default.createSymbolicLink(atPath: root + "/link", withDestinationPath: root + "/t/sub/f")
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(atPath: root)
    }

    func testRepeatsAndPathsInsideANamedDirectoryGo() {
        let r = root
        XCTAssertEqual(Migrator.withoutOverlaps(["\(r)/t/sub", "\(r)/t", "\(r)/t/./sub/f", "\(r)/t2", "\(r)/t2"]), ["\(r)/t", "\(r)/t2"])
        XCTAssertEqual(Migrator.withoutOverlaps(["\(r)/t/sub/../sub/f", "\(r)/t/sub/f"]), ["\(r)/t/sub/../sub/f"])
    }

    func testAPrefixThatIsNotAParentDirectoryKeepsBoth() {
        // t2 starts with "t" but is not inside t.
        XCTAssertEqual(Migrator.withoutOverlaps(["\(root)/t", "\(root)/t2"]), ["\(root)/t", "\(root)/t2"])
    }

    func testANamedSymlinkAndAMissingPathAreKeptForTheirOwnErrors() {
        let r = root
        XCTAssertEqual(Migrator.withoutOverlaps(["\(r)/t", "\(r)/link", "\(r)/missing", "\(r)/missing"]),
                       ["\(r)/t", "\(r)/link", "\(r)/missing", "\(r)/missing"])
        XCTAssertEqual(Migrator.withoutOverlaps(["\(r)/t/sub"]), ["\(r)/t/sub"])
    }
}
