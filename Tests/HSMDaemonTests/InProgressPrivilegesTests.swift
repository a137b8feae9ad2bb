import Foundation
import HSMKernel
import XCTest

@testable import HSMDaemon

/// A release's note carries the file's privileges to the next start (Recovery puts them
/// back): they must come out of the JSON as they went in.
final class InProgressPrivilegesTests: XCTestCase {
    private func entry(_ privileges: FilePrivileges?) -> InProgress.Entry {
        var e = InProgress.Entry(kind: .release, object: "ab", previous: nil, store: "tier1", path: "/srv/a \"b\"",
                                 device: 1, inode: 2, handle: nil)
        e.setIDBits = privileges?.setIDBits
        e.capability = privileges?.capability.map(FilePrivileges.hex)
        return e
    }

    func testPrivilegesRoundTripThroughTheNote() throws {
        let cap: [UInt8] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]
        for p in [FilePrivileges(setIDBits: 0o6000, capability: cap), FilePrivileges(setIDBits: 0o4000, capability: nil),
                  FilePrivileges(setIDBits: 0, capability: cap)] {
            let decoded = try JSONDecoder().decode(InProgress.Entry.self, from: Data(entry(p).json))
            XCTAssertEqual(decoded.privileges, p)
        }
        let none = try JSONDecoder().decode(InProgress.Entry.self, from: Data(entry(nil).json))
        XCTAssertNil(none.privileges)
        XCTAssertNil(none.setIDBits)
    }

    func testAGarbledCapabilityIsNotPutBack() {
        var e = entry(FilePrivileges(setIDBits: 0, capability: [1, 2]))
        e.capability = "0x1"
        XCTAssertNil(e.privileges)
        e.capability = "zz"
        XCTAssertNil(e.privileges)
    }
}
