import XCTest
@testable import HSMCore
import HSMKernel

final class FileStatusTests: XCTestCase {
    private let mib: Int64 = 1 << 20
    private let mtime: Int64 = 1_700_000_000_000_000_000

    /// A 4 MiB file archived at `mtime`, 1 MiB blocks.
    private func marker(offline: [Int] = [], released: UInt32? = nil, flags: Marker.Flags = [],
                        size: Int64? = nil) -> [UInt8] {
        encoded(makeMarker(size: size ?? 4 * mib, mtimeNs: mtime, shift: 20, offline: offline, released: released, flags: flags))
    }

    private func derive(size: Int64? = nil, mtimeNs: Int64? = nil, _ bytes: [UInt8]?, exists: Bool = true,
                        asked: UnsafeMutablePointer<Int>? = nil) throws -> FileStatus {
        let st = try makeStat(size: size ?? 4 * mib, mtimeNs: mtimeNs ?? mtime)
        return FileStatus.derive(stat: st, markerBytes: bytes) { id in
            XCTAssertEqual(id, testObject)
            asked?.pointee += 1
            return exists
        }
    }

    func testNoMarkerIsResident() throws {
        let s = try derive(nil, exists: false)
        XCTAssertEqual(s.state, .resident)
        XCTAssertEqual(s.offlineBytes, 0)
        XCTAssertNil(s.object)
    }

    func testGarbageIsDamaged() throws {
        for garbage: [UInt8] in [[], [1, 2, 3], Array(repeating: 0, count: 60), Array(marker().dropLast())] {
            let s = try derive(garbage)
            XCTAssertEqual(s.state, .damaged)
            XCTAssertNotNil(s.detail, "a damaged state says why")
            XCTAssertEqual(s.offlineBytes, 0)
        }
        var flipped = marker(offline: [1])
        flipped[30] ^= 1
        XCTAssertEqual(try derive(flipped).state, .damaged)
    }

    func testCleanMarkerWithoutOfflineBlocksIsArchived() throws {
        var asked = 0
        let s = try derive(marker(), exists: false, asked: &asked)
        XCTAssertEqual(s.state, .archived)
        XCTAssertEqual(s.offlineBytes, 0)
        XCTAssertEqual(s.object, testObject)
        XCTAssertEqual(asked, 0, "the store is asked only when blocks are offline")
    }

    func testAllReleasedBlocksOfflineIsReleased() throws {
        let s = try derive(marker(offline: [0, 1, 2, 3]))
        XCTAssertEqual(s.state, .released)
        XCTAssertEqual(s.offlineBytes, 4 * mib)
        XCTAssertEqual(s.object, testObject)
        // A release that freed only some blocks is still "released" while those stay offline.
        let t = try derive(marker(offline: [1, 2], released: 2))
        XCTAssertEqual(t.state, .released)
        XCTAssertEqual(t.offlineBytes, 2 * mib)
    }

    func testFewerOfflineThanReleasedIsPartial() throws {
        let s = try derive(marker(offline: [0, 3], released: 4))
        XCTAssertEqual(s.state, .partial)
        XCTAssertEqual(s.offlineBytes, 2 * mib)
        XCTAssertEqual(try derive(marker(offline: [2], released: 4)).state, .partial)
    }

    func testSizeOrMtimeDifferentIsDirty() throws {
        XCTAssertEqual(try derive(size: 4 * mib + 1, marker()).state, .dirty)
        XCTAssertEqual(try derive(size: 4 * mib - 1, marker()).state, .dirty)
        XCTAssertEqual(try derive(mtimeNs: mtime + 1, marker()).state, .dirty)
        let s = try derive(mtimeNs: mtime - 1, marker(offline: [0, 1, 2, 3]))
        XCTAssertEqual(s.state, .dirty)
        XCTAssertEqual(s.offlineBytes, 4 * mib)
    }

    func testObjectDamagedFlagIsDamaged() throws {
        var asked = 0
        let s = try derive(marker(flags: [.objectDamaged]), asked: &asked)
        XCTAssertEqual(s.state, .damaged)
        XCTAssertNotNil(s.detail)
        XCTAssertEqual(s.object, testObject)
        XCTAssertEqual(try derive(marker(offline: [0, 1], flags: [.objectDamaged])).state, .damaged)
        // Damage wins over dirty.
        XCTAssertEqual(try derive(mtimeNs: 5, marker(offline: [0], flags: [.objectDamaged])).state, .damaged)
    }

    func testOfflineBlocksWithMissingObjectIsDamaged() throws {
        var asked = 0
        let s = try derive(marker(offline: [0, 1, 2, 3]), exists: false, asked: &asked)
        XCTAssertEqual(s.state, .damaged)
        XCTAssertNotNil(s.detail)
        XCTAssertEqual(s.offlineBytes, 4 * mib)
        XCTAssertGreaterThan(asked, 0)
        XCTAssertEqual(try derive(marker(offline: [1], released: 4), exists: false).state, .damaged)
        // Data all local: a missing object does not matter.
        XCTAssertEqual(try derive(marker(), exists: false).state, .archived)
    }

    func testBlocksPastCurrentSizeDoNotCountAsOffline() throws {
        // Truncated to 1.5 MiB: blocks 2 and 3 no longer exist.
        var asked = 0
        let s = try derive(size: mib + mib / 2, marker(offline: [2, 3], released: 2), exists: false, asked: &asked)
        XCTAssertEqual(s.state, .dirty, "nothing offline remains, so the missing object is irrelevant")
        XCTAssertEqual(s.offlineBytes, 0)
        XCTAssertEqual(asked, 0)
        // Block 1 straddles the new end: only its first half counts.
        let t = try derive(size: mib + mib / 2, marker(offline: [1, 3], released: 2))
        XCTAssertEqual(t.state, .dirty)
        XCTAssertEqual(t.offlineBytes, mib / 2)
        // A partial last block counts only its real bytes.
        let u = try derive(size: 2 * mib + 5, marker(offline: [2], released: 1, size: 2 * mib + 5))
        XCTAssertEqual(u.state, .released)
        XCTAssertEqual(u.offlineBytes, 5)
    }

    func testEmptyArchivedFile() throws {
        let s = try derive(size: 0, marker(size: 0))
        XCTAssertEqual(s.state, .archived)
        XCTAssertEqual(s.offlineBytes, 0)
    }
}
