import XCTest
@testable import HSMCore

/// The part size of one multipart upload: part_size until 10,000 parts do not suffice,
/// then the smallest multiple of 1 MiB that fits, fewer parts in flight so the buffers
/// stay within connections × part_size, and nothing beyond S3's 5 GiB × 10,000.
final class S3PartPlanTests: XCTestCase {
    let mib: Int64 = 1 << 20
    let gib: Int64 = 1 << 30

    func testUpTo10000PartsKeepsPartSizeAndEveryConnection() throws {
        let p = try XCTUnwrap(S3Settings.partPlan(objectSize: 16 * mib * 10_000, configured: 16 * mib, connections: 8))
        XCTAssertEqual(p.partSize, 16 * mib)
        XCTAssertEqual(p.inFlight, 8)
        XCTAssertEqual(S3Settings.partPlan(objectSize: 1, configured: 16 * mib, connections: 0)?.inFlight, 1)
    }

    func testOneByteMoreTakesTheNextMebibyte() throws {
        let p = try XCTUnwrap(S3Settings.partPlan(objectSize: 16 * mib * 10_000 + 1, configured: 16 * mib, connections: 8))
        XCTAssertEqual(p.partSize, 17 * mib)
        XCTAssertLessThanOrEqual((16 * mib * 10_000 + 1 + p.partSize - 1) / p.partSize, 10_000)
        // 8 × 16 MiB of buffers hold 7 parts of 17 MiB.
        XCTAssertEqual(p.inFlight, 7)
    }

    func testTheChosenSizeIsTheSmallestMebibyteMultipleThatFits() throws {
        for size in [200 * gib, 200 * gib + 12345, 1000 * gib - 1, 3 * 1024 * gib] {
            let p = try XCTUnwrap(S3Settings.partPlan(objectSize: size, configured: 16 * mib, connections: 8))
            XCTAssertEqual(p.partSize % mib, 0)
            XCTAssertLessThanOrEqual((size + p.partSize - 1) / p.partSize, 10_000, "\(size)")
            XCTAssertGreaterThan((size + p.partSize - mib - 1) / (p.partSize - mib), 10_000, "\(size): a MiB less would fit")
            // Within the buffers part_size gives, or one part when a part alone is larger.
            XCTAssertLessThanOrEqual(Int64(p.inFlight) * p.partSize, max(8 * 16 * mib, p.partSize))
            XCTAssertGreaterThanOrEqual(p.inFlight, 1)
        }
    }

    func testAPartLargerThanAllTheBuffersStillGoesUpOneAtATime() throws {
        let p = try XCTUnwrap(S3Settings.partPlan(objectSize: 10 * 1024 * gib, configured: 5 * mib, connections: 2))
        XCTAssertEqual(p.partSize, 1049 * mib)  // ceil(10 TiB / 10,000) = 1048.6 MiB
        XCTAssertEqual(p.inFlight, 1)
    }

    func testUpTo5GiBParts() throws {
        let limit = 5 * gib * 10_000
        XCTAssertEqual(S3Settings.partPlan(objectSize: limit, configured: 16 * mib, connections: 8)?.partSize, 5 * gib)
        XCTAssertNil(S3Settings.partPlan(objectSize: limit + 1, configured: 16 * mib, connections: 8))
    }
}
