import XCTest
@testable import HSMCore
@testable import HSMStores

final class RecordCacheTests: XCTestCase {
    private func record(_ n: Int, blocks: Int = 1) -> ObjectRecord {
        ObjectRecord(object: ObjectID(bytes: (0..<16).map { UInt8(truncatingIfNeeded: n >> (8 * ($0 % 4))) })!, format: 1,
                     path: "/mnt/tree/d\(n % 100)/f\(n)", size: Int64(blocks) << 20, mode: 0o100644, uid: 1000, gid: 100,
                     atimeNs: 1_700_000_000_000_000_001, mtimeNs: -5, ctimeNs: 3, archivedAt: 1_700_000_000, blockShift: 20,
                     checksums: Array(repeating: 0xdead_beef, count: blocks), extents: [[0, Int64(blocks) << 20]],
                     xattrs: [:], storedBytes: Int64(blocks) << 20)
    }

    func testCodecRoundTripsEveryField() {
        var r = record(7, blocks: 5)
        r.checksums[1] = nil
        r.checksums[4] = 0
        r.extents = [[0, 4096], [1 << 20, 3 << 20], [], [5, 6, 7]]
        r.xattrs = ["user.a": "AAEC", "user.é": "", "": "x"]
        r.path = "/mnt/ünïcödé/\u{1F600} name"
        r.format = -3
        XCTAssertEqual(RecordCodec.decode(ArraySlice(RecordCodec.encode(r))), r)
        let plain = record(8)
        XCTAssertEqual(RecordCodec.decode(ArraySlice(RecordCodec.encode(plain))), plain)
        XCTAssertLessThan(RecordCodec.encode(plain).count, 200, "a small file's record stays small")
        var chunked = record(10, blocks: 2)
        chunked.format = 2
        chunked.chunkShift = 16
        chunked.chunkChecksums = ChunkChecksums((0..<32).map { UInt32($0) * 0x0101_0101 })
        XCTAssertEqual(RecordCodec.decode(ArraySlice(RecordCodec.encode(chunked))), chunked)
    }

    func testCodecRejectsTruncatedBytes() {
        let bytes = RecordCodec.encode(record(9, blocks: 3))
        for n in [0, 1, 16, 40, bytes.count - 1] {
            XCTAssertNil(RecordCodec.decode(bytes[0..<n]), "\(n) bytes")
        }
        XCTAssertNil(RecordCodec.decode(ArraySlice(bytes + [0])), "trailing bytes")
    }

    func testFindsWhatWasInsertedAndForgetsRemoved() {
        var c = RecordCache()
        for n in 0..<100 { c.insert(record(n)) }
        XCTAssertEqual(c.count, 100)
        XCTAssertEqual(c[record(42).object], record(42))
        c.remove(record(42).object)
        XCTAssertNil(c[record(42).object])
        XCTAssertNil(c[record(1000).object])
        var changed = record(43)
        changed.storedBytes = 1
        c.insert(changed)
        XCTAssertEqual(c[record(43).object], changed, "a replaced record reads as the new one")
        XCTAssertEqual(c.count, 99)
    }

    func testBoundedByTwoGenerationsKeepingTheNewest() {
        let one = RecordCodec.encode(record(0)).count
        var c = RecordCache(generationBytes: 100 * one)
        for n in 0..<10_000 { c.insert(record(n)) }
        XCTAssertLessThanOrEqual(c.bytes, 2 * 100 * one)
        XCTAssertGreaterThanOrEqual(c.count, 100)
        for n in 9_900..<10_000 { XCTAssertEqual(c[record(n).object], record(n), "record \(n)") }
        XCTAssertNil(c[record(0).object])
    }

    func testRecordBiggerThanAGenerationIsStillKept() {
        var c = RecordCache(generationBytes: 64)
        c.insert(record(1))
        c.insert(record(2, blocks: 1000))
        XCTAssertEqual(c[record(2, blocks: 1000).object], record(2, blocks: 1000))
        c.insert(record(3))
        XCTAssertNotNil(c[record(2).object], "the previous generation still answers")
        XCTAssertNil(c[record(1).object])
    }

    func testLookupKeepsRecentRecordsDecodedAndNeverStale() {
        var c = RecordCache()
        for n in 0..<10 { c.insert(record(n, blocks: 300)) }
        for _ in 0..<3 { for n in 0..<6 { XCTAssertEqual(c.lookup(record(n).object), record(n, blocks: 300)) } }
        var changed = record(5, blocks: 300)
        changed.storedBytes = 7
        c.insert(changed)
        XCTAssertEqual(c.lookup(changed.object), changed, "a replaced record is never served from the decoded ones")
        c.remove(changed.object)
        XCTAssertNil(c.lookup(changed.object), "nor a removed one")
        XCTAssertEqual(c.lookup(record(4).object), record(4, blocks: 300))
    }
}
