import XCTest
import HSMStores
@testable import HSMDaemon

/// The metering wrapper every store wears must not hide how a reader wants to be read.
final class MeteredReaderTests: XCTestCase {
    final class ParallelReader: ObjectReader {
        var blocksRead: [Range<Int>] = []
        var parallelReads: Int { 4 }
        var blocksPerRead: Int { 4 }
        func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
            blocksRead.append(index..<index + 1)
            return buffer.count
        }
        func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
            blocksRead.append(index..<index + 1)
            return bytes
        }
        func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
            blocksRead.append(blocks)
            return blocks.map { _ in buffer.count / blocks.count }
        }
        func prefetch(blocks: Range<Int>) {}
        func close() {}
    }

    func testParallelismAndMultiBlockReadsPassThrough() throws {
        let inner = ParallelReader()
        let metered = MeteredReader(inner: inner, timer: nil, errors: nil)
        XCTAssertEqual(metered.parallelReads, 4)
        XCTAssertEqual(metered.blocksPerRead, 4)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        _ = try metered.read(blocks: 0..<4, into: buffer)
        XCTAssertEqual(inner.blocksRead, [0..<4], "one multi-block read, not four single ones")
    }
}
