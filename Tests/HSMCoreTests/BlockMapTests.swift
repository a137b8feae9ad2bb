import XCTest
import TestSupport
@testable import HSMCore

final class BlockLayoutTests: XCTestCase {
    private let mib: Int64 = 1 << 20
    /// 3 MiB + 5 bytes: blocks 0, 1, 2 full and block 3 holding 5 bytes.
    private var layout: BlockLayout { BlockLayout(shift: 20, fileSize: 3 * mib + 5) }

    func testBlockSizeAndCount() {
        XCTAssertEqual(layout.blockSize, mib)
        XCTAssertEqual(layout.blockCount, 4)
        XCTAssertEqual(BlockLayout(shift: 20, fileSize: 0).blockCount, 0)
        XCTAssertEqual(BlockLayout(shift: 20, fileSize: 1).blockCount, 1)
        XCTAssertEqual(BlockLayout(shift: 20, fileSize: mib).blockCount, 1)
        XCTAssertEqual(BlockLayout(shift: 20, fileSize: mib + 1).blockCount, 2)
        XCTAssertEqual(BlockLayout(shift: 12, fileSize: 10_000).blockCount, 3)
        XCTAssertEqual(BlockLayout(shift: 40, fileSize: 1 << 40).blockCount, 1)
    }

    func testBlocksCoveringInsideOneBlock() {
        XCTAssertEqual(layout.blocks(covering: 0..<1), 0..<1)
        XCTAssertEqual(layout.blocks(covering: 100..<200), 0..<1)
        XCTAssertEqual(layout.blocks(covering: mib + 10..<2 * mib - 1), 1..<2)
    }

    func testBlocksCoveringAtBlockEdges() {
        XCTAssertEqual(layout.blocks(covering: 0..<mib), 0..<1, "upper bound is exclusive")
        XCTAssertEqual(layout.blocks(covering: 0..<mib + 1), 0..<2)
        XCTAssertEqual(layout.blocks(covering: mib - 1..<mib), 0..<1)
        XCTAssertEqual(layout.blocks(covering: mib..<mib + 1), 1..<2)
        XCTAssertEqual(layout.blocks(covering: mib - 1..<mib + 1), 0..<2)
        XCTAssertEqual(layout.blocks(covering: mib..<2 * mib), 1..<2)
        XCTAssertEqual(layout.blocks(covering: 2 * mib..<3 * mib), 2..<3)
    }

    func testBlocksCoveringSpanning() {
        XCTAssertEqual(layout.blocks(covering: 0..<3 * mib + 5), 0..<4)
        XCTAssertEqual(layout.blocks(covering: mib / 2..<2 * mib + mib / 2), 0..<3)
        XCTAssertEqual(layout.blocks(covering: 3 * mib..<3 * mib + 5), 3..<4)
    }

    func testBlocksCoveringPastEOFIsClipped() {
        XCTAssertEqual(layout.blocks(covering: 3 * mib + 5..<3 * mib + 100), 0..<0)
        XCTAssertEqual(layout.blocks(covering: 10 * mib..<20 * mib), 0..<0)
        XCTAssertEqual(layout.blocks(covering: 2 * mib + 1..<100 * mib), 2..<4)
        XCTAssertEqual(layout.blocks(covering: 0..<Int64.max), 0..<4)
        XCTAssertEqual(layout.blocks(covering: -10..<10), 0..<1, "negative start is clipped to 0")
    }

    func testBlocksCoveringEmpty() {
        XCTAssertTrue(layout.blocks(covering: 5..<5).isEmpty)
        XCTAssertTrue(layout.blocks(covering: mib..<mib).isEmpty)
        XCTAssertTrue(BlockLayout(shift: 20, fileSize: 0).blocks(covering: 0..<100).isEmpty)
        XCTAssertTrue(layout.blocks(covering: -10..<0).isEmpty)
    }

    func testBlocksCoveringAgreesWithBruteForce() {
        var g = SeededGenerator(seed: 3)
        for _ in 0..<2000 {
            let shift = UInt8.random(in: 12...14, using: &g)
            let l = BlockLayout(shift: shift, fileSize: Int64.random(in: 0...100_000, using: &g))
            let a = Int64.random(in: -100...110_000, using: &g)
            let r = a..<a + Int64.random(in: 0...40_000, using: &g)
            let got = l.blocks(covering: r)
            let expected = (0..<l.blockCount).filter { !l.range(ofBlock: $0).clamped(to: r).isEmpty }
            XCTAssertEqual(Array(got), expected, "\(l) \(r)")
        }
    }

    func testRangeOfBlockClipsLastBlock() {
        XCTAssertEqual(layout.range(ofBlock: 0), 0..<mib)
        XCTAssertEqual(layout.range(ofBlock: 2), 2 * mib..<3 * mib)
        XCTAssertEqual(layout.range(ofBlock: 3), 3 * mib..<3 * mib + 5)
        let exact = BlockLayout(shift: 20, fileSize: 2 * mib)
        XCTAssertEqual(exact.range(ofBlock: 1), mib..<2 * mib, "an exact multiple has a full last block")
        XCTAssertEqual(BlockLayout(shift: 20, fileSize: 1).range(ofBlock: 0), 0..<1)
        // The ranges of all blocks tile the file exactly.
        var pos: Int64 = 0
        for i in 0..<layout.blockCount {
            let r = layout.range(ofBlock: i)
            XCTAssertEqual(r.lowerBound, pos)
            XCTAssertFalse(r.isEmpty)
            pos = r.upperBound
        }
        XCTAssertEqual(pos, layout.fileSize)
    }

    func testShiftForFileSize() {
        let maxBits = MarkerCodec.maxBlocks
        let limit20 = Int64(maxBits) << 20  // ~27.6 GiB
        XCTAssertEqual(BlockLayout.shift(forFileSize: 0, maxBits: maxBits), 20)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 1, maxBits: maxBits), 20)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 27 << 30, maxBits: maxBits), 20)
        XCTAssertEqual(BlockLayout.shift(forFileSize: limit20, maxBits: maxBits), 20)
        XCTAssertEqual(BlockLayout.shift(forFileSize: limit20 + 1, maxBits: maxBits), 21)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 28 << 30, maxBits: maxBits), 21)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 2 * limit20, maxBits: maxBits), 21)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 2 * limit20 + 1, maxBits: maxBits), 22)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 1 << 40, maxBits: maxBits), 26)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 100, maxBits: 10, minimumShift: 12), 12)
        XCTAssertEqual(BlockLayout.shift(forFileSize: 1 << 20, maxBits: 1, minimumShift: 12), 20)
        XCTAssertEqual(BlockLayout.shift(forFileSize: (1 << 20) + 1, maxBits: 1, minimumShift: 12), 21)
    }

    func testShiftIsMinimalAndFits() {
        var g = SeededGenerator(seed: 11)
        for _ in 0..<1000 {
            let size = Int64.random(in: 0...(1 << 50), using: &g)
            let maxBits = Int.random(in: 1...40_000, using: &g)
            guard let s = BlockLayout.shift(forFileSize: size, maxBits: maxBits) else {
                // Refused only when even the largest blocks do not fit.
                XCTAssertGreaterThan(BlockLayout(shift: BlockLayout.maxShift, fileSize: size).blockCount, maxBits)
                continue
            }
            XCTAssertGreaterThanOrEqual(s, 20)
            XCTAssertLessThanOrEqual(BlockLayout(shift: s, fileSize: size).blockCount, maxBits)
            if s > 20 {
                XCTAssertGreaterThan(BlockLayout(shift: s - 1, fileSize: size).blockCount, maxBits, "not minimal")
            }
        }
    }

    /// A file of the largest possible size (off_t max) must not make the shift search or the
    /// block count overflow and trap. Isolated so a trap fails only this test.
    func testLargestFileSizeDoesNotTrap() {
        let outcome = runIsolated { _ in
            if let s = BlockLayout.shift(forFileSize: Int64.max, maxBits: MarkerCodec.maxBlocks) {
                return "Int64.max got shift \(s); no marker can describe it"
            }
            let n = BlockLayout(shift: BlockLayout.maxShift, fileSize: Int64.max).blockCount
            return n > MarkerCodec.maxBlocks ? nil : "block count \(n)"
        }
        assertIsolatedPasses(outcome, "shift(forFileSize: Int64.max)")
    }
}

final class BlockBitmapTests: XCTestCase {
    func testSetClearAndCount() {
        var b = BlockBitmap(count: 10)
        XCTAssertEqual(b.count, 10)
        XCTAssertEqual(b.bytes, [0, 0])
        XCTAssertTrue(b.isEmpty)
        XCTAssertEqual(b.setCount, 0)
        b[0] = true; b[3] = true; b[9] = true
        XCTAssertTrue(b[0]); XCTAssertTrue(b[3]); XCTAssertTrue(b[9])
        XCTAssertFalse(b[1]); XCTAssertFalse(b[8])
        XCTAssertEqual(b.bytes, [0b0000_1001, 0b0000_0010])
        XCTAssertEqual(b.setCount, 3)
        XCTAssertFalse(b.isEmpty)
        b[3] = true  // idempotent
        XCTAssertEqual(b.setCount, 3)
        b[3] = false
        XCTAssertFalse(b[3])
        XCTAssertEqual(b.setCount, 2)
        b[3] = false  // idempotent
        XCTAssertEqual(b.setIndices(), [0, 9])
    }

    func testSetIndicesAndRanges() {
        var b = BlockBitmap(count: 30)
        for i in [7, 16, 17, 29] { b[i] = true }
        XCTAssertEqual(b.setIndices(), [7, 16, 17, 29])
        XCTAssertEqual(b.setIndices(in: 8..<17), [16])
        XCTAssertEqual(b.setIndices(in: 7..<8), [7])
        XCTAssertEqual(b.setIndices(in: 3..<7), [])
        XCTAssertEqual(b.setIndices(in: 17..<29), [17])
        XCTAssertEqual(b.setIndices(in: -5..<100), [7, 16, 17, 29], "ranges are clipped")
        XCTAssertEqual(b.setIndices(in: 5..<5), [])
        XCTAssertEqual(BlockBitmap(count: 0).setIndices(), [])
    }

    /// setIndices(in:) clips its range to the bitmap, so a range wholly past the end should
    /// give no indices. Isolated: max(lo, 0)..<min(hi, count) traps when lo > count.
    func testSetIndicesRangeWhollyPastEndIsEmpty() {
        let outcome = runIsolated { _ in
            var b = BlockBitmap(count: 30)
            b[29] = true
            let got = b.setIndices(in: 40..<50)
            return got.isEmpty ? nil : "got \(got)"
        }
        assertIsolatedPasses(outcome, "BlockBitmap(count: 30).setIndices(in: 40..<50)")
        let outcome2 = runIsolated { _ in
            BlockBitmap(count: 0).setIndices(in: 1..<2).isEmpty ? nil : "not empty"
        }
        assertIsolatedPasses(outcome2, "BlockBitmap(count: 0).setIndices(in: 1..<2)")
        let outcome3 = runIsolated { _ in
            var b = BlockBitmap(count: 30)
            b[0] = true
            return b.setIndices(in: -5..<(-3)).isEmpty ? nil : "not empty"
        }
        assertIsolatedPasses(outcome3, "BlockBitmap(count: 30).setIndices(in: -5..<(-3))")
    }

    func testClearFrom() {
        var b = BlockBitmap(count: 20)
        for i in 0..<20 { b[i] = true }
        var c = b
        c.clear(from: 100)
        XCTAssertEqual(c, b, "past the end is a no-op")
        c.clear(from: 13)
        XCTAssertEqual(c.setIndices(), Array(0..<13))
        XCTAssertEqual(c.setCount, 13)
        c.clear(from: 8)
        XCTAssertEqual(c.bytes, [0xFF, 0, 0])
        c.clear(from: -3)
        XCTAssertTrue(c.isEmpty)
        XCTAssertEqual(c, BlockBitmap(count: 20))
    }

    func testAgreesWithReferenceSet() {
        var g = SeededGenerator(seed: 5)
        for _ in 0..<200 {
            let n = Int.random(in: 0...300, using: &g)
            var b = BlockBitmap(count: n)
            var ref = Set<Int>()
            for _ in 0..<Int.random(in: 0...400, using: &g) where n > 0 {
                let i = Int.random(in: 0..<n, using: &g)
                let v = Bool.random(using: &g)
                b[i] = v
                if v { ref.insert(i) } else { ref.remove(i) }
            }
            XCTAssertEqual(b.setIndices(), ref.sorted())
            XCTAssertEqual(b.setCount, ref.count)
            XCTAssertEqual(b.isEmpty, ref.isEmpty)
            // (A start past `count` traps; see testSetIndicesRangeWhollyPastEndIsEmpty.)
            let lo = Int.random(in: -5...n, using: &g), hi = Int.random(in: Swift.max(lo, 0)...n + 10, using: &g)
            XCTAssertEqual(b.setIndices(in: lo..<hi), ref.filter { (lo..<hi).contains($0) }.sorted())
            let from = Int.random(in: -2...n + 2, using: &g)
            b.clear(from: from)
            XCTAssertEqual(b.setIndices(), ref.filter { $0 < from }.sorted())
            // Padding bits past `count` stay clear, as the codec requires.
            if n % 8 != 0, let last = b.bytes.last { XCTAssertEqual(last >> UInt8(n % 8), 0) }
        }
    }
}

final class RangeMathTests: XCTestCase {
    func testConsecutiveRuns() {
        XCTAssertEqual(consecutiveRuns([]), [])
        XCTAssertEqual(consecutiveRuns([5]), [5..<6])
        XCTAssertEqual(consecutiveRuns([1, 2, 3, 5, 6, 9]), [1..<4, 5..<7, 9..<10])
        XCTAssertEqual(consecutiveRuns([0, 2, 4]), [0..<1, 2..<3, 4..<5])
        XCTAssertEqual(consecutiveRuns(Array(0..<1000)), [0..<1000])
    }

    func testIntersect() {
        XCTAssertEqual(intersect(10..<20, [0..<5, 8..<12, 15..<16, 19..<30]), [10..<12, 15..<16, 19..<20])
        XCTAssertEqual(intersect(10..<20, [0..<10, 20..<30]), [], "touching extents share no byte")
        XCTAssertEqual(intersect(10..<20, []), [])
        XCTAssertEqual(intersect(10..<10, [0..<100]), [])
        XCTAssertEqual(intersect(10..<20, [0..<100]), [10..<20])
        XCTAssertEqual(intersect(10..<20, [12..<14]), [12..<14])
    }

    func testSubtractHolesMinusData() {
        XCTAssertEqual(subtract([], from: 0..<10), [0..<10])
        XCTAssertEqual(subtract([0..<10], from: 0..<10), [])
        XCTAssertEqual(subtract([-5..<50], from: 0..<10), [])
        XCTAssertEqual(subtract([2..<4, 6..<8], from: 0..<10), [0..<2, 4..<6, 8..<10])
        XCTAssertEqual(subtract([-5..<2, 8..<20], from: 0..<10), [2..<8])
        XCTAssertEqual(subtract([20..<30], from: 0..<10), [0..<10])
        XCTAssertEqual(subtract([-3..<0], from: 0..<10), [0..<10], "extent ending at the start")
        XCTAssertEqual(subtract([10..<12], from: 0..<10), [0..<10], "extent starting at the end")
        XCTAssertEqual(subtract([2..<4, 4..<6], from: 0..<10), [0..<2, 6..<10], "adjacent extents")
        XCTAssertEqual(subtract([0..<3], from: 0..<10), [3..<10])
        XCTAssertEqual(subtract([7..<10], from: 0..<10), [0..<7])
        XCTAssertEqual(subtract([0..<1, 9..<10], from: 0..<10), [1..<9])
        XCTAssertEqual(subtract([3..<4], from: 5..<5), [])
        XCTAssertEqual(subtract([], from: 5..<5), [])
    }

    func testSubtractAndIntersectPartitionTheRange() {
        var g = SeededGenerator(seed: 17)
        for _ in 0..<2000 {
            // Sorted, non-overlapping extents over 0..<200.
            var extents: [Range<Int64>] = []
            var pos = Int64.random(in: -20...20, using: &g)
            while pos < 220 {
                let start = pos + Int64.random(in: 0...15, using: &g)
                let end = start + Int64.random(in: 1...15, using: &g)
                extents.append(start..<end)
                pos = end + Int64.random(in: 0...3, using: &g)
            }
            let lo = Int64.random(in: 0...200, using: &g)
            let range = lo..<lo + Int64.random(in: 0...100, using: &g)
            let covered = Set(extents.flatMap { Array($0) })
            let gaps = subtract(extents, from: range)
            let inside = intersect(range, extents)
            XCTAssertEqual(Set(gaps.flatMap { Array($0) }), Set(range.filter { !covered.contains($0) }))
            XCTAssertEqual(Set(inside.flatMap { Array($0) }), Set(range.filter { covered.contains($0) }))
            for list in [gaps, inside] {
                XCTAssertTrue(list.allSatisfy { !$0.isEmpty })
                XCTAssertTrue(zip(list, list.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }, "sorted")
            }
            // Gaps are maximal: two gaps never touch.
            XCTAssertTrue(zip(gaps, gaps.dropFirst()).allSatisfy { $0.upperBound < $1.lowerBound })
        }
    }
}
