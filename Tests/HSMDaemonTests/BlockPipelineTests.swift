import Synchronization
import XCTest
import HSMCore
import HSMStores

@testable import HSMDaemon

/// A store reader whose block b holds the byte b & 0xff; it can fail at one block, and
/// counts reads in flight at once and blocks per read.
private final class FakeReader: ObjectReader, Sendable {
    let parallelReads: Int
    let blocksPerRead: Int
    let blockSize: Int
    let failAt: Int?
    let inFlight = Atomic<Int>(0)
    let mostInFlight = Atomic<Int>(0)
    let widest = Atomic<Int>(0)

    init(parallel: Int, span: Int, blockSize: Int, failAt: Int? = nil) {
        parallelReads = parallel
        blocksPerRead = span
        self.blockSize = blockSize
        self.failAt = failAt
    }

    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try read(blocks: index..<(index + 1), into: buffer)[0]
    }

    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        try readWholeBlock(index, layout: BlockLayout(shift: UInt8(blockSize.trailingZeroBitCount), fileSize: Int64(1) << 40), into: buffer)
    }

    func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        let now = inFlight.wrappingAdd(1, ordering: .relaxed).newValue
        defer { inFlight.wrappingSubtract(1, ordering: .relaxed) }
        _ = mostInFlight.max(now, ordering: .relaxed)
        _ = widest.max(blocks.count, ordering: .relaxed)
        usleep(2000)  // a round trip, so the readers overlap
        XCTAssertEqual(buffer.count, blocks.count * blockSize)
        for (i, b) in blocks.enumerated() {
            if b == failAt { throw .corrupt(ObjectID.random(), block: b, path: "fake") }
            UnsafeMutableRawBufferPointer(rebasing: buffer[(i * blockSize)..<((i + 1) * blockSize)])
                .initializeMemory(as: UInt8.self, repeating: UInt8(b & 0xff))
        }
        return Array(repeating: blockSize, count: blocks.count)
    }

    func prefetch(blocks: Range<Int>) {}
    func close() {}
}

final class BlockPipelineTests: XCTestCase {
    /// Blocks with gaps (what the offline bits give), several readers, several blocks per
    /// read: every block arrives once, in order, with its own bytes.
    func testBlocksArriveInOrderWithTheirBytes() throws {
        let blocks = [0, 1, 2, 3, 4, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 40]
        for (parallel, span) in [(1, 1), (4, 1), (4, 4), (3, 2)] {
            let reader = FakeReader(parallel: parallel, span: span, blockSize: 4096)
            var seen: [Int] = []
            try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096).run { b, data in
                XCTAssertEqual(data.count, 4096)
                XCTAssertTrue(data.allSatisfy { $0 == UInt8(b & 0xff) }, "block \(b) has another block's bytes")
                seen.append(b)
            }
            XCTAssertEqual(seen, blocks, "parallel \(parallel) span \(span)")
            XCTAssertLessThanOrEqual(reader.mostInFlight.load(ordering: .relaxed), parallel)
            XCTAssertLessThanOrEqual(reader.widest.load(ordering: .relaxed), span)
            if parallel > 1 { XCTAssertGreaterThan(reader.mostInFlight.load(ordering: .relaxed), 1, "no reads overlapped") }
            if span > 1 { XCTAssertGreaterThan(reader.widest.load(ordering: .relaxed), 1, "no read covered several blocks") }
        }
    }

    /// A store error stops the run at that block: the blocks before it were given, none
    /// after it, and the error comes out.
    func testAStoreErrorStopsAtItsBlock() {
        let blocks = Array(0..<32)
        let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096, failAt: 13)
        var seen: [Int] = []
        XCTAssertThrowsError(try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096).run { b, _ in seen.append(b) }) { error in
            guard case .corrupt(_, let block, _)? = error as? StoreError else { return XCTFail("\(error)") }
            XCTAssertEqual(block, 13)
        }
        // Block 12 shares the failed read with 13 (span 2): it is not given either.
        XCTAssertEqual(seen, Array(0..<12))
    }
}
