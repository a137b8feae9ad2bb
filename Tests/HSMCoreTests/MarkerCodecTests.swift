import XCTest
import TestSupport
@testable import HSMCore
import HSMKernel

final class CRC32CTests: XCTestCase {
    func testKnownAnswer() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    }

    func testEmptyAndZeroes() {
        XCTAssertEqual(CRC32C.checksum([]), 0)
        // RFC 3720 (iSCSI) B.4 test vectors.
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
    }

    /// The hardware path processes 8 bytes at a time after aligning; every split and
    /// misalignment must agree with a bytewise software reference.
    func testMatchesBitwiseReferenceAtAllAlignmentsAndSeedsChain() {
        func reference(_ b: ArraySlice<UInt8>) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for x in b {
                c ^= UInt32(x)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        var g = SeededGenerator(seed: 7)
        let data = (0..<300).map { _ in UInt8.random(in: 0...255, using: &g) }
        for start in 0..<9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] where start + len <= data.count {
                let slice = Array(data[start..<start + len])
                XCTAssertEqual(CRC32C.checksum(slice), reference(data[start..<start + len]), "start \(start) len \(len)")
                // Unaligned pointer into a buffer.
                data.withUnsafeBytes { raw in
                    let sub = UnsafeRawBufferPointer(rebasing: raw[start..<start + len])
                    XCTAssertEqual(CRC32C.checksum(sub), reference(data[start..<start + len]))
                }
            }
        }
        // Chaining with a seed equals checksumming the concatenation.
        let a = Array(data[0..<123]), b = Array(data[123..<300])
        XCTAssertEqual(CRC32C.checksum(b, seed: CRC32C.checksum(a)), CRC32C.checksum(data))
    }

    /// Buffers of three 4 KiB stripes and more take three interleaved chains joined by a
    /// shift table; every length around the stripe boundaries, misaligned and seeded,
    /// must agree with the bytewise reference.
    func testInterleavedStripesMatchReference() {
        func reference(_ b: ArraySlice<UInt8>, seed: UInt32 = 0) -> UInt32 {
            var c = ~seed
            for x in b {
                c ^= UInt32(x)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        var g = SeededGenerator(seed: 11)
        let data = (0..<(7 * 4096 + 64)).map { _ in UInt8.random(in: 0...255, using: &g) }
        for start in [0, 1, 5, 8] {
            for len in [3 * 4096 - 1, 3 * 4096, 3 * 4096 + 1, 3 * 4096 + 13, 6 * 4096, 7 * 4096 + 3] where start + len <= data.count {
                let want = reference(data[start..<start + len])
                data.withUnsafeBytes { raw in
                    XCTAssertEqual(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[start..<start + len])), want, "start \(start) len \(len)")
                }
                XCTAssertEqual(CRC32C.checksum(Array(data[start..<start + len]), seed: 0x1234_5678),
                               reference(data[start..<start + len], seed: 0x1234_5678))
            }
        }
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        XCTAssertEqual(CRC32C.checksum(zeros), reference(zeros[...]))
    }
}

final class MarkerCodecRoundTripTests: XCTestCase {
    private let mib: Int64 = 1 << 20
    private let gib: Int64 = 1 << 30

    private func assertRoundTrip(_ m: Marker, file: StaticString = #filePath, line: UInt = #line) {
        let b = encoded(m, file: file, line: line)
        XCTAssertLessThanOrEqual(b.count, MarkerCodec.maxEncodedSize, file: file, line: line)
        XCTAssertEqual(b.count, MarkerCodec.headerSize + (m.offline.count + 7) / 8 + 4, file: file, line: line)
        XCTAssertEqual(Array(b[0..<4]), Array("HSMK".utf8), file: file, line: line)
        do {
            let d = try MarkerCodec.decode(b)
            XCTAssertEqual(d, m, file: file, line: line)
            XCTAssertEqual(try MarkerCodec.encode(d), b, "re-encoding is byte-identical", file: file, line: line)
        } catch {
            XCTFail("decode failed: \(error) for size \(m.size)", file: file, line: line)
        }
    }

    func testRoundTripVariousSizes() {
        var g = SeededGenerator(seed: 42)
        let sizes: [Int64] = [0, 1, 4095, mib - 1, mib, mib + 1, 3 * mib + 5, 100 * mib,
                              27 * gib, 28 * gib, 1 << 40, 5 << 40]
        for size in sizes {
            for flags: Marker.Flags in [[], [.objectDamaged]] {
                var m = makeMarker(size: size, flags: flags)
                let n = m.offline.count
                for i in 0..<n where Bool.random(using: &g) { m.offline[i] = true }
                m.releasedBlocks = n == 0 ? 0 : UInt32.random(in: 0...UInt32(n), using: &g)
                m.mtimeNs = Int64.random(in: Int64.min...Int64.max, using: &g)
                m.object = ObjectID(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) })!
                assertRoundTrip(m)
            }
        }
    }

    func testBlockShiftsForTheBoundarySizes() {
        XCTAssertEqual(makeMarker(size: 0).blockShift, 20)
        XCTAssertEqual(makeMarker(size: 0).offline.count, 0)
        XCTAssertEqual(makeMarker(size: 1).offline.count, 1)
        XCTAssertEqual(makeMarker(size: mib).offline.count, 1)
        XCTAssertEqual(makeMarker(size: mib + 1).offline.count, 2)
        // 27 GiB = 27,648 one-MiB blocks still fits in the 28,256 bits available.
        XCTAssertEqual(MarkerCodec.maxBlocks, 28_256)
        XCTAssertEqual(makeMarker(size: 27 * gib).blockShift, 20)
        // Beyond ~27.6 GiB the shift must grow so the bitmap fits in 3584 bytes.
        XCTAssertEqual(makeMarker(size: 28 * gib).blockShift, 21)
        XCTAssertEqual(makeMarker(size: Int64(MarkerCodec.maxBlocks) << 20).blockShift, 20)
        XCTAssertEqual(makeMarker(size: (Int64(MarkerCodec.maxBlocks) << 20) + 1).blockShift, 21)
        XCTAssertGreaterThan(makeMarker(size: 1 << 40).blockShift, 20)
    }

    func testAllOfflineMaximalMarkerFits() {
        let size = Int64(MarkerCodec.maxBlocks) << 20
        let m = makeMarker(size: size, offline: Array(0..<MarkerCodec.maxBlocks), flags: [.objectDamaged])
        let b = encoded(m)
        XCTAssertEqual(b.count, MarkerCodec.maxEncodedSize)
        assertRoundTrip(m)
    }

    func testEncodeRefusesBitmapThatDoesNotFit() {
        // 28 GiB at 1 MiB blocks needs 28,672 bits: more than the xattr budget.
        let m = makeMarker(size: 28 * gib, shift: 20)
        XCTAssertThrowsError(try MarkerCodec.encode(m)) { e in
            guard case MarkerCodec.EncodeError.tooLarge(let n) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(n, MarkerCodec.headerSize + 28 * 1024 / 8 + 4)
        }
    }

    func testEncodedSizeNeverExceedsLimitForChosenShift() {
        var g = SeededGenerator(seed: 99)
        var sizes: [Int64] = [0, 1, (Int64(MarkerCodec.maxBlocks) << 20) - 1, Int64(MarkerCodec.maxBlocks) << 20,
                              (Int64(MarkerCodec.maxBlocks) << 20) + 1, 1 << 44, (1 << 48) - 1]
        for _ in 0..<500 { sizes.append(Int64.random(in: 0...(1 << 50), using: &g)) }
        let largest = Int64(MarkerCodec.maxBlocks) << Int64(BlockLayout.maxShift)
        for size in sizes {
            guard size <= largest else {
                XCTAssertNil(BlockLayout.shift(forFileSize: size, maxBits: MarkerCodec.maxBlocks), "size \(size)")
                continue
            }
            let m = makeMarker(size: size)
            do {
                let b = try MarkerCodec.encode(m)
                XCTAssertLessThanOrEqual(b.count, MarkerCodec.maxEncodedSize, "size \(size)")
                XCTAssertEqual(try? MarkerCodec.decode(b), m, "size \(size)")
            } catch {
                XCTFail("size \(size): \(error)")
            }
        }
    }

    /// Whatever shift the archiver picks must be one the decoder accepts; files beyond what
    /// a marker can describe are refused rather than given an unreadable marker.
    func testLargestDescribableFileRoundTripsAndLargerIsRefused() {
        // 1 GiB blocks (the largest shift) times the bitmap's capacity.
        let largest = Int64(MarkerCodec.maxBlocks) << 30
        let m = makeMarker(size: largest, offline: [0, MarkerCodec.maxBlocks - 1])
        XCTAssertEqual(m.blockShift, BlockLayout.maxShift)
        XCTAssertEqual(try MarkerCodec.decode(MarkerCodec.encode(m)), m)
        XCTAssertNil(BlockLayout.shift(forFileSize: largest + 1, maxBits: MarkerCodec.maxBlocks))
        XCTAssertNil(BlockLayout.shift(forFileSize: 1 << 55, maxBits: MarkerCodec.maxBlocks))
    }

    func testShiftsPastTheMaximumAreRejected() {
        var m = makeMarker(size: 5 * mib, shift: 20)
        var b = try! MarkerCodec.encode(m)
        b[5] = BlockLayout.maxShift + 1
        b.replaceSubrange((b.count - 4)..., with: withUnsafeBytes(of: CRC32C.checksum(Array(b[..<(b.count - 4)])).littleEndian, Array.init))
        XCTAssertEqual(decodeError(b), .badBlockShift(BlockLayout.maxShift + 1))
        m.blockShift = 20
    }

    func testOfflineBytesClipsToCurrentSize() {
        let m = makeMarker(size: 3 * mib + 5, shift: 20, offline: [1, 3])
        XCTAssertEqual(m.offlineBytes(currentSize: 3 * mib + 5), mib + 5)
        XCTAssertEqual(m.offlineBytes(currentSize: mib + mib / 2), mib / 2)
        XCTAssertEqual(m.offlineBytes(currentSize: mib), 0)
        XCTAssertEqual(m.offlineBytes(currentSize: 0), 0)
        XCTAssertEqual(m.offlineBytes(currentSize: 10 * mib), mib + 5, "growing past the marker size adds nothing")
    }

    func testLayoutMatchesHeaderFields() {
        let m = makeMarker(size: 0x0102_0304_0506, mtimeNs: -2, offline: [0], released: 7, flags: [.objectDamaged])
        let b = encoded(m)
        XCTAssertEqual(b[4], 1)
        XCTAssertEqual(b[5], m.blockShift)
        XCTAssertEqual(Array(b[6..<8]), [1, 0])
        XCTAssertEqual(Array(b[8..<16]), le64(0x0102_0304_0506))
        XCTAssertEqual(Array(b[16..<24]), le64(UInt64(bitPattern: -2)))
        XCTAssertEqual(Array(b[24..<40]), testObject.bytes)
        XCTAssertEqual(Array(b[40..<44]), le32(7))
        XCTAssertEqual(Array(b[44..<48]), le32(UInt32(m.offline.count)))
        XCTAssertEqual(b[48], 1)
        XCTAssertEqual(Array(b[(b.count - 4)...]), le32(CRC32C.checksum(Array(b[..<(b.count - 4)]))))
    }
}

final class MarkerCodecStrictnessTests: XCTestCase {
    private let mib: Int64 = 1 << 20

    /// 3 MiB + 5 bytes at 1 MiB blocks: 4 blocks, one bitmap byte, 53 bytes in all.
    private var small: [UInt8] {
        encoded(makeMarker(size: 3 * mib + 5, shift: 20, offline: [1, 3], released: 2, flags: [.objectDamaged]))
    }

    func testSmallMarkerIsValid() {
        XCTAssertEqual(small.count, 53)
        XCTAssertNil(decodeError(small))
    }

    func testEveryTruncationIsRejected() {
        for valid in [small, encoded(makeMarker(size: 0)), encoded(makeMarker(size: 100 * mib, offline: [0, 99]))] {
            for n in 0..<valid.count {
                XCTAssertNotNil(decodeError(Array(valid[0..<n])), "prefix of \(n) of \(valid.count) bytes decoded")
            }
            for n in 0..<valid.headerSizeBound {
                if case .tooShort(let k)? = decodeError(Array(valid[0..<n])) { XCTAssertEqual(k, n) } else {
                    XCTFail("prefix of \(n) bytes should be tooShort")
                }
            }
        }
    }

    func testEveryDeletedByteIsRejected() {
        let valid = small
        for i in 0..<valid.count {
            var b = valid
            b.remove(at: i)
            XCTAssertNotNil(decodeError(b), "deleting byte \(i) still decoded")
        }
    }

    func testAppendedByteIsLengthMismatch() {
        XCTAssertEqual(decodeError(small + [0]), .lengthMismatch(expected: 53, found: 54))
        XCTAssertEqual(decodeError(resealed(small + [0, 0, 0, 0, 0])), .lengthMismatch(expected: 53, found: 58))
    }

    func testEverySingleBitFlipIsRejected() {
        let valid = small
        for bit in 0..<(valid.count * 8) {
            var b = valid
            b[bit / 8] ^= 1 << UInt8(bit % 8)
            XCTAssertNotNil(decodeError(b), "flipping bit \(bit % 8) of byte \(bit / 8) still decoded")
        }
    }

    func testBadMagic() {
        for i in 0..<4 {
            var b = small
            b[i] ^= 0x20
            XCTAssertEqual(decodeError(resealed(b)), .badMagic)
        }
    }

    func testUnsupportedVersion() {
        for v: UInt8 in [0, 2, 255] {
            var b = small
            b[4] = v
            XCTAssertEqual(decodeError(resealed(b)), .unsupportedVersion(v))
        }
    }

    func testBadBlockShift() {
        for s: UInt8 in [0, 11, BlockLayout.maxShift + 1, 41, 64, 255] {
            var b = small
            b[5] = s
            XCTAssertEqual(decodeError(resealed(b)), .badBlockShift(s))
        }
    }

    func testBlockShiftBoundsAccepted() {
        for s: UInt8 in [12, BlockLayout.maxShift] {
            let m = makeMarker(size: 3 * mib + 5, shift: s, offline: [0])
            XCTAssertEqual(try? MarkerCodec.decode(encoded(m)), m, "shift \(s)")
        }
    }

    func testUnknownFlags() {
        for f: UInt16 in [2, 0x8000, 0x8001, 0xFFFF] {
            var b = small
            patch(&b, at: 6, [UInt8(f & 0xFF), UInt8(f >> 8)])
            XCTAssertEqual(decodeError(resealed(b)), .unknownFlags(f))
        }
    }

    func testPaddingBitsPastLastBlock() {
        for bit in 4..<8 {
            var b = small
            b[48] |= 1 << UInt8(bit)
            XCTAssertEqual(decodeError(resealed(b)), .paddingBitsSet, "padding bit \(bit)")
            XCTAssertEqual(decodeError(b), .checksumMismatch, "without resealing the checksum catches it")
        }
        // A bitmap whose count is a multiple of 8 has no padding.
        let full = makeMarker(size: 8 * mib, shift: 20, offline: Array(0..<8))
        XCTAssertEqual(try? MarkerCodec.decode(encoded(full)), full)
    }

    func testReleasedBlocksOutOfRange() {
        var b = small
        patch(&b, at: 40, le32(5))
        XCTAssertEqual(decodeError(resealed(b)), .releasedBlocksOutOfRange)
        patch(&b, at: 40, le32(UInt32.max))
        XCTAssertEqual(decodeError(resealed(b)), .releasedBlocksOutOfRange)
        patch(&b, at: 40, le32(4))
        XCTAssertNil(decodeError(resealed(b)), "released == block count is fine")
    }

    func testBlockCountNotMatchingSize() {
        var b = small
        patch(&b, at: 44, le32(5))
        XCTAssertEqual(decodeError(resealed(b)), .blockCountMismatch(expected: 4, found: 5))
        patch(&b, at: 44, le32(3))
        XCTAssertEqual(decodeError(resealed(b)), .blockCountMismatch(expected: 4, found: 3))
        // Size changed so it needs 5 blocks while the count still says 4.
        b = small
        patch(&b, at: 8, le64(UInt64(4 * mib + 1)))
        XCTAssertEqual(decodeError(resealed(b)), .blockCountMismatch(expected: 5, found: 4))
        // A different size with the same block count is a valid, different marker.
        b = small
        patch(&b, at: 8, le64(UInt64(4 * mib)))
        XCTAssertEqual(try? MarkerCodec.decode(resealed(b)).size, 4 * mib)
    }

    func testNegativeSizeRejected() {
        var b = small
        patch(&b, at: 8, le64(UInt64(bitPattern: -1)))
        XCTAssertNotNil(decodeError(resealed(b)))
    }

    func testBadChecksum() {
        var b = small
        b[b.count - 1] ^= 0x80
        XCTAssertEqual(decodeError(b), .checksumMismatch)
        b = small
        b[30] ^= 1  // object id byte: no structural check covers it
        XCTAssertEqual(decodeError(b), .checksumMismatch)
    }

    /// A size field close to Int64.max must be refused with an error; computing its block
    /// count must not overflow and trap (which would take down hsmd on a corrupt xattr).
    /// Runs in a child process so a trap fails this test only.
    func testHugeSizeFieldIsAnErrorNotATrap() {
        let base = small
        let outcome = runIsolated { crumb in
            for size in [Int64.max, Int64.max - 1, Int64.max - (1 << 20) + 2, Int64.max - (1 << 40)] {
                for shift: UInt8 in [12, 20, 40] {
                    var b = base
                    b[5] = shift
                    patch(&b, at: 8, le64(UInt64(size)))
                    b = resealed(b)
                    crumb.record(b)
                    if decodeError(b) == nil { return "size \(size) shift \(shift) decoded" }
                }
            }
            return nil
        }
        assertIsolatedPasses(outcome, "decoding a marker whose size is near Int64.max")
    }

    func testErrorDescriptionsAreHumanReadable() {
        XCTAssertEqual("\(MarkerCodec.DecodeError.unknownFlags(0x8000))", "marker has unknown flags 0x8000")
        XCTAssertTrue("\(MarkerCodec.DecodeError.tooShort(3))".contains("3 bytes"))
    }
}

final class MarkerCodecFuzzTests: XCTestCase {
    /// Random byte arrays and random mutations of valid markers: decode never crashes, and
    /// anything that decodes re-encodes to exactly the input (it was a valid encoding).
    func testFuzzNeverCrashesNorAcceptsGarbage() {
        var g0 = SeededGenerator(seed: 0)
        let mib: Int64 = 1 << 20
        let seeds: [[UInt8]] = [
            encoded(makeMarker(size: 0)),
            encoded(makeMarker(size: 1, offline: [0])),
            encoded(makeMarker(size: 3 * mib + 5, shift: 20, offline: [1, 3], released: 2, flags: [.objectDamaged])),
            encoded(makeMarker(size: 77 * mib + 12345, offline: [0, 5, 76], released: 3)),
            encoded(makeMarker(size: 16 * mib, shift: 12, offline: (0..<4096).filter { _ in Bool.random(using: &g0) })),
        ]
        let outcome = runIsolated { crumb in
            var g = SeededGenerator(seed: 0x5EED_CAFE)
            var decodedGarbage = 0
            var accepted = 0
            for iteration in 0..<20_000 {
                var b: [UInt8]
                var mutated = true
                var reseal = false
                let original: [UInt8]
                switch iteration % 4 {
                case 0:
                    // Pure random bytes.
                    b = (0..<Int.random(in: 0...200, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
                    original = []
                case 1:
                    // Random bytes behind a valid magic and version, resealed, to get past the cheap checks.
                    b = MarkerCodec.magic + [1]
                        + (0..<Int.random(in: 0...200, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
                    if b.count >= 52 { b[5] = UInt8.random(in: 12...40, using: &g); b = resealed(b) }
                    original = []
                default:
                    original = seeds.randomElement(using: &g)!
                    b = original
                    reseal = iteration % 4 == 3
                    for _ in 0..<Int.random(in: 1...4, using: &g) {
                        switch Int.random(in: 0..<6, using: &g) {
                        case 0 where !b.isEmpty:
                            let bit = Int.random(in: 0..<(b.count * 8), using: &g)
                            b[bit / 8] ^= 1 << UInt8(bit % 8)
                        case 1 where !b.isEmpty:
                            b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...255, using: &g)
                        case 2:
                            b = Array(b.prefix(Int.random(in: 0...b.count, using: &g)))
                        case 3:
                            b.insert(UInt8.random(in: 0...255, using: &g), at: Int.random(in: 0...b.count, using: &g))
                        case 4 where !b.isEmpty:
                            b.remove(at: Int.random(in: 0..<b.count, using: &g))
                        default:
                            // Overwrite a header field with a small or extreme value.
                            let field = [(8, 8), (16, 8), (40, 4), (44, 4), (6, 2), (5, 1)].randomElement(using: &g)!
                            if b.count >= field.0 + field.1 {
                                let v = [0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF].randomElement(using: &g)!
                                b.replaceSubrange(field.0..<field.0 + field.1,
                                                  with: (0..<field.1).map { $0 == 0 ? UInt8(v) : 0 })
                            }
                        }
                    }
                    if reseal && b.count >= 4 { b = resealed(b) }
                    mutated = b != original
                }
                crumb.record(b)
                do {
                    let m = try MarkerCodec.decode(b)
                    guard let again = try? MarkerCodec.encode(m), again == b else {
                        return "iteration \(iteration): decoded bytes that are not a valid encoding: \(hex(b))"
                    }
                    accepted += 1
                    if mutated && !reseal && !original.isEmpty {
                        // A mutation without a fresh checksum decoded: the CRC should have caught it.
                        decodedGarbage += 1
                    }
                } catch {
                    // Rejected: fine.
                }
            }
            if decodedGarbage > 0 { return "\(decodedGarbage) unsealed mutations decoded" }
            // Resealed mutations of bitmap bits, flags and mtime are valid markers: the fuzz
            // must reach the success path too, or the property above was never exercised.
            return accepted > 100 ? nil : "only \(accepted) inputs decoded; the fuzz is not reaching the decoder's success path"
        }
        assertIsolatedPasses(outcome, "marker fuzz")
    }
}

private extension Array where Element == UInt8 {
    /// Prefixes shorter than this are "too short" regardless of content.
    var headerSizeBound: Int { Swift.min(count, MarkerCodec.headerSize + 4) }
}
