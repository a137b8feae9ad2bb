import Foundation
import Glibc
import XCTest
import TestSupport
@testable import HSMCore
@testable import HSMStores
import HSMKernel

/// A record as `PosixStore.put` makes it: size, blocks, checksums and extents agree.
private func makeRecord(size: Int64 = 3 * (1 << 20) + 5, shift: UInt8 = 20, extents: [[Int64]]? = nil) -> ObjectRecord {
    let layout = BlockLayout(shift: shift, fileSize: size)
    let ext = extents ?? (size > 0 ? [[0, size]] : [])
    let ranges = ext.map { $0[0]..<$0[1] }
    let checksums: [UInt32?] = (0..<layout.blockCount).map { b in
        intersect(layout.range(ofBlock: b), ranges).isEmpty ? nil : UInt32(truncatingIfNeeded: 0x9E37_79B9 &* (b + 1))
    }
    return ObjectRecord(object: testObject, format: 1, path: "/mnt/dir/file", size: size, mode: 0o100644, uid: 1000, gid: 100,
                        atimeNs: 1_700_000_000_000_000_001, mtimeNs: -5, ctimeNs: 3, archivedAt: 1_700_000_000, blockShift: shift,
                        checksums: checksums, extents: ext, xattrs: ["user.note": "aGVsbG8="],
                        storedBytes: ranges.reduce(0) { $0 + $1.upperBound - $1.lowerBound })
}

/// The bytes PosixStore writes for a record.
private func json(_ r: ObjectRecord) -> [UInt8] {
    let e = JSONEncoder()
    e.keyEncodingStrategy = .convertToSnakeCase
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    return (try? [UInt8](e.encode(r))) ?? []
}

private func decodeFailure(_ bytes: [UInt8], id: ObjectID = testObject) -> String? {
    do {
        _ = try ObjectRecord.decode(json: bytes, id: id, path: "/store/x.json")
        return nil
    } catch {
        guard case .badRecord(let got, let path, let reason) = error else { return "wrong error: \(error)" }
        XCTAssertEqual(got, id)
        XCTAssertEqual(path, "/store/x.json")
        return reason
    }
}

/// Why a decoded record is unsafe for the code that uses it, checked independently of
/// `problem()`: every index and range the recall and release paths take must be valid.
private func unsafeUse(_ r: ObjectRecord) -> String? {
    guard r.size >= 0, (12...30).contains(r.blockShift) else { return "size \(r.size) shift \(r.blockShift)" }
    let layout = r.layout
    guard layout.blockCount == r.checksums.count, layout.blockCount <= MarkerCodec.maxBlocks else { return "block count" }
    for b in 0..<layout.blockCount {
        let range = layout.range(ofBlock: b)
        guard range.lowerBound >= 0, range.upperBound <= r.size, range.count <= Int(layout.blockSize), !range.isEmpty else { return "block \(b) range \(range)" }
    }
    guard r.dataExtents.count == r.extents.count else { return "extents dropped" }
    var end: Int64 = 0
    for e in r.dataExtents {
        guard e.lowerBound >= end, e.upperBound <= r.size, !e.isEmpty else { return "extent \(e)" }
        end = e.upperBound
        for b in layout.blocks(covering: e) where r.checksums[b] == nil { return "data in block \(b) without checksum" }
    }
    guard r.storedBytes >= 0, r.storedBytes <= r.size else { return "stored bytes" }
    // A marker for this record accepts it, and encodes.
    let m = Marker(object: r.object, size: r.size, mtimeNs: r.mtimeNs, blockShift: r.blockShift)
    guard r.mismatch(with: m) == nil, (try? MarkerCodec.encode(m)) != nil else { return "no marker can describe it" }
    return nil
}

final class ObjectRecordDecoderTests: XCTestCase {
    func testWhatPutWritesDecodes() throws {
        for r in [makeRecord(), makeRecord(size: 0), makeRecord(size: 1), makeRecord(size: 1 << 20),
                  makeRecord(size: 10 << 20, extents: [[0, 4096], [3 << 20, (5 << 20) + 1], [(9 << 20) + 7, 10 << 20]]),
                  makeRecord(size: 10 << 20, extents: []),
                  makeRecord(size: ObjectRecord.maxSize, shift: 30, extents: [[ObjectRecord.maxSize - 1, ObjectRecord.maxSize]]),
                  makeRecord(size: 16 << 20, shift: 12)] {
            XCTAssertNil(r.problem(), "\(r.size)")
            XCTAssertEqual(try ObjectRecord.decode(json: json(r), id: testObject, path: "/s"), r)
            XCTAssertNil(unsafeUse(r))
        }
    }

    /// Each field out of range, or fields that disagree: refused with the field named.
    func testEveryFieldIsRangeChecked() {
        typealias Edit = (inout ObjectRecord) -> Void
        let mib: Int64 = 1 << 20
        let cases: [(String, Edit, [String])] = [
            ("format", { $0.format = 2 }, ["format 2"]),
            ("negative size", { $0.size = -1 }, ["size -1", "negative"]),
            ("huge size", { $0.size = .max }, ["size 9223372036854775807"]),
            ("size past the largest marker", { $0.size = ObjectRecord.maxSize + 1; $0.blockShift = 30 }, ["size"]),
            ("shift 0", { $0.blockShift = 0 }, ["block_shift 0", "12 to 30"]),
            ("shift 11", { $0.blockShift = 11 }, ["block_shift 11"]),
            ("shift 31", { $0.blockShift = 31 }, ["block_shift 31"]),
            ("shift 62 with a matching count", { $0.blockShift = 62; $0.checksums = [1] }, ["block_shift 62"]),
            ("shift 255", { $0.blockShift = 255 }, ["block_shift 255"]),
            ("too many blocks", { $0.size = 1 << 40; $0.blockShift = 12 }, ["blocks", "more than a marker holds"]),
            ("too few checksums", { $0.checksums.removeLast() }, ["3 checksums", "4 blocks"]),
            ("too many checksums", { $0.checksums.append(1) }, ["5 checksums"]),
            ("directory mode", { $0.mode = 0o40755 }, ["mode 0o40755"]),
            ("mode with high bits", { $0.mode = 0o100644 | 0x10000 }, ["mode"]),
            ("relative path", { $0.path = "relative" }, ["path"]),
            ("path with NUL", { $0.path = "/a\u{0}b" }, ["path"]),
            ("archived_at negative", { $0.archivedAt = -1 }, ["archived_at -1"]),
            ("archived_at huge", { $0.archivedAt = .max }, ["archived_at"]),
            ("extent of one number", { $0.extents = [[0]] }, ["extents[0]", "1 numbers"]),
            ("extent of three numbers", { $0.extents = [[0, 1, 2]] }, ["extents[0]", "3 numbers"]),
            ("empty extent", { $0.extents = [[5, 5]] }, ["extents[0]", "empty"]),
            ("backwards extent", { $0.extents = [[2 * mib, 1000]] }, ["extents[0]"]),
            ("negative extent", { $0.extents = [[-4096, 3 * mib + 5]] }, ["extents[0]", "-4096"]),
            ("extent past the end", { $0.extents = [[0, 3 * mib + 6]] }, ["extents[0]", "outside the file"]),
            ("unsorted extents", { $0.extents = [[mib, 3 * mib + 5], [0, mib]] }, ["extents[1]", "sorted"]),
            ("overlapping extents", { $0.extents = [[0, 2 * mib], [mib, 3 * mib + 5]] }, ["extents[1]", "sorted"]),
            ("stored bytes", { $0.storedBytes += 1 }, ["stored_bytes"]),
            ("data block without checksum", { $0.checksums[2] = nil }, ["block 2", "no checksum", "zeros"]),
            ("checksum without data", { $0.extents = [[0, mib]]; $0.storedBytes = mib }, ["block 1", "no data extent"]),
            ("xattr name empty", { $0.xattrs = ["": ""] }, ["xattrs"]),
            ("xattr name too long", { $0.xattrs = [String(repeating: "n", count: 256): ""] }, ["xattrs"]),
            ("xattr not base64", { $0.xattrs = ["user.x": "%%%"] }, ["xattrs", "base64"]),
            ("xattr too big", { $0.xattrs = ["user.x": Data(count: 65537).base64EncodedString()] }, ["xattrs", "65537"]),
        ]
        for (name, edit, words) in cases {
            var r = makeRecord()
            edit(&r)
            guard let reason = decodeFailure(json(r)) else { XCTFail("\(name): accepted"); continue }
            for w in words { XCTAssertTrue(reason.contains(w), "\(name): \(reason) lacks \(w)") }
            XCTAssertEqual(r.problem(), reason, name)
        }
        XCTAssertEqual(decodeFailure(json(makeRecord()), id: ObjectID(hex: "ffeeddccbbaa99887766554433221100")!),
                       "it names object \(testObject)")
    }

    /// Format 2: one checksum per chunk of the file, chunks dividing the blocks; format 1
    /// has none. Anything else is refused with the field named.
    func testChunkChecksumsAreChecked() {
        func chunked(_ r: ObjectRecord, shift: UInt8 = 16) -> ObjectRecord {
            var r = r
            r.format = ObjectRecord.chunkedFormat
            r.chunkShift = shift
            r.chunkChecksums = ChunkChecksums((0..<ObjectRecord.chunkCount(size: r.size, shift: shift)).map { UInt32($0) &* 2_654_435_761 })
            return r
        }
        for r in [chunked(makeRecord()), chunked(makeRecord(size: 0)), chunked(makeRecord(size: 1)), chunked(makeRecord(), shift: 20),
                  chunked(makeRecord(size: 16 << 20, shift: 12), shift: 12)] {
            XCTAssertNil(r.problem(), "\(r.size) \(r.chunkShift ?? 0)")
            XCTAssertEqual(try ObjectRecord.decode(json: json(r), id: testObject, path: "/s"), r)
        }
        typealias Edit = (inout ObjectRecord) -> Void
        let cases: [(String, Edit, [String])] = [
            ("too few", { $0.chunkChecksums?.values.removeLast() }, ["48 chunk checksums", "49 chunks"]),
            ("too many", { $0.chunkChecksums?.values.append(1) }, ["50 chunk checksums"]),
            ("shift 11", { $0.chunkShift = 11 }, ["chunk_shift 11"]),
            ("shift above the block's", { $0.chunkShift = 21 }, ["chunk_shift 21", "block_shift 20"]),
            ("no shift", { $0.chunkShift = nil }, ["chunk_shift is missing"]),
            ("no checksums", { $0.chunkChecksums = nil }, ["chunk_checksums is missing"]),
            ("format 1 with chunks", { $0.format = 1 }, ["only in format 2"]),
        ]
        for (name, edit, words) in cases {
            var r = chunked(makeRecord())
            edit(&r)
            guard let reason = decodeFailure(json(r)) else { XCTFail("\(name): accepted"); continue }
            for w in words { XCTAssertTrue(reason.contains(w), "\(name): \(reason) lacks \(w)") }
        }
        // Not base64, or not whole 32-bit values: a JSON error naming the field.
        let good = String(decoding: json(chunked(makeRecord())), as: UTF8.self)
        guard let start = good.range(of: "\"chunk_checksums\" : \"") else { return XCTFail(good) }
        let end = good[start.upperBound...].firstIndex(of: "\"") ?? good.endIndex
        for bad in ["%%%", "AAA=", "AAAAAAA="] {
            let text = good.replacingCharacters(in: start.upperBound..<end, with: bad)
            guard let reason = decodeFailure(Array(text.utf8)) else { XCTFail("\(bad): accepted"); continue }
            XCTAssertTrue(reason.contains("chunk_checksums"), reason)
        }
    }

    func testMalformedJSONNamesTheField() {
        let good = String(decoding: json(makeRecord()), as: UTF8.self)
        for (from, to, words) in [
            // Foundation reports a number that does not fit its field without naming it.
            ("\"block_shift\" : 20", "\"block_shift\" : 300", ["does not fit"]),
            ("\"block_shift\" : 20", "\"block_shift\" : \"20\"", ["block_shift"]),
            ("\"size\" : 3145733", "\"size\" : 1.5", ["does not fit"]),
            ("\"size\" : 3145733", "\"size\" : null", ["size"]),
            ("\"format\" : 1", "\"formats\" : 1", ["format", "missing"]),
        ] {
            XCTAssertTrue(good.contains(from), from)
            guard let reason = decodeFailure(Array(good.replacingOccurrences(of: from, with: to).utf8)) else { XCTFail(to); continue }
            for w in words { XCTAssertTrue(reason.contains(w), "\(to): \(reason) lacks \(w)") }
        }
        let tooBig = [UInt8](repeating: 0x20, count: ObjectRecord.maxEncodedBytes + 1)
        XCTAssertTrue(decodeFailure(tooBig)?.contains("more than a record may have") ?? false)
    }

    func testMismatchWithTheMarker() {
        let r = makeRecord()
        XCTAssertNil(r.mismatch(with: Marker(object: testObject, size: r.size, mtimeNs: 0, blockShift: 20)))
        XCTAssertNotNil(r.mismatch(with: Marker(object: testObject, size: r.size, mtimeNs: 0, blockShift: 21)))
        XCTAssertNotNil(r.mismatch(with: Marker(object: testObject, size: r.size - 1, mtimeNs: 0, blockShift: 20)))
    }

    func testLayoutOfBlocksPastTheEndIsEmptyNotATrap() {
        let l = BlockLayout(shift: 20, fileSize: 3 << 20)
        XCTAssertEqual(l.range(ofBlock: 2), (2 << 20)..<(3 << 20))
        for i in [3, 4, -1, Int.max, Int.min] { XCTAssertTrue(l.range(ofBlock: i).isEmpty, "\(i)") }
        XCTAssertTrue(BlockLayout(shift: 20, fileSize: -5).range(ofBlock: 0).isEmpty)
        XCTAssertEqual(ObjectRecord(object: testObject, format: 1, path: "/", size: 1, mode: 0, uid: 0, gid: 0, atimeNs: 0, mtimeNs: 0,
                                    ctimeNs: 0, archivedAt: 0, blockShift: 20, checksums: [], extents: [[1], [5, 2], [0, 1]],
                                    xattrs: [:], storedBytes: 0).dataExtents, [0..<1], "malformed extents are left out, not trapped on")
    }
}

/// The posix store's own use of the decoder and its block reader, on real files.
final class PosixStoreRecordTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("hsmcore-store-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/store", withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func archived(size: Int) throws -> (PosixStore, ObjectRecord) {
        let path = dir + "/source"
        var g = SeededGenerator(seed: 3)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data((0..<size).map { _ in UInt8.random(in: 0...255, using: &g) })))
        let fd = try FileDescriptor.open(path, [.readOnly])
        defer { fd.close() }
        let store = PosixStore(name: "t", root: dir + "/store", stateDir: dir)
        store.identity.establish()
        return (store, try store.put(fd, as: ObjectID.random(), stat: try fd.stat(), blockShift: 20, originalPath: path, xattrs: [:]))
    }

    func testAnEditedRecordIsABadRecordForAFreshStore() throws {
        let (store, record) = try archived(size: 3 << 20)
        XCTAssertNil(record.problem())
        var edited = record
        edited.checksums[1] = nil
        try Data(json(edited)).write(to: URL(fileURLWithPath: store.recordPath(record.object)))
        XCTAssertEqual(try store.record(record.object), record, "the store's cache still has what it wrote")
        let fresh = PosixStore(name: "t", root: dir + "/store")
        XCTAssertThrowsError(try fresh.record(record.object)) { e in
            guard case StoreError.badRecord(_, _, let reason) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(reason.contains("block 1"), reason)
        }
    }

    /// Block indexes and buffers come from the file's marker; a record that disagrees
    /// gets an error, never an index past the checksums or a read past the buffer.
    func testReaderRefusesBlocksAndBuffersOfAnotherLayout() throws {
        let (store, record) = try archived(size: 3 << 20)
        let reader = try store.reader(for: record)
        defer { reader.close() }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { block.deallocate() }
        XCTAssertEqual(try reader.read(block: 2, into: block), 1 << 20)
        for i in [3, -1, Int.max] {
            XCTAssertThrowsError(try reader.read(block: i, into: block)) { e in
                guard case StoreError.badRecord = e else { return XCTFail("block \(i): \(e)") }
            }
        }
        for size in [1 << 19, (1 << 20) - 1, (1 << 20) + 1, 2 << 20] {
            let other = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
            defer { other.deallocate() }
            XCTAssertThrowsError(try reader.read(block: 0, into: other)) { e in
                guard case StoreError.badRecord(_, _, let reason) = e else { return XCTFail("buffer \(size): \(e)") }
                XCTAssertTrue(reason.contains("\(size)"), reason)
            }
        }
        for r in [0..<100, 2..<3, 3..<10, 5..<5] { reader.prefetch(blocks: r) }
    }

    /// A partial read fills and verifies only the chunks asked for; a damaged chunk fails
    /// it while the chunks beside it still read; a record an older hsmd wrote (64 KiB
    /// chunks) reads its own chunks; a format 1 record reads the whole block.
    func testPartialReadsVerifyTheirChunks() throws {
        let (store, record) = try archived(size: 3 << 20)
        XCTAssertEqual(record.format, 2)
        XCTAssertEqual(record.chunkShift, 12, "a file of at most 256 MiB gets a checksum per page")
        XCTAssertEqual(record.chunkChecksums?.values.count, 768)
        let source = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/source")))
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { block.deallocate() }
        let mib: Int64 = 1 << 20
        func read(_ r: ObjectRecord, _ bytes: Range<Int64>) throws -> (Range<Int64>, [UInt8]) {
            let reader = try store.reader(for: r)
            defer { reader.close() }
            block.initializeMemory(as: UInt8.self, repeating: 0xAA)
            let span = try reader.read(block: 1, bytes: bytes, into: block)
            return (span, Array(block[Int(span.lowerBound - mib)..<Int(span.upperBound - mib)]))
        }
        let (span, got) = try read(record, mib + 70_000..<mib + 70_010)
        XCTAssertEqual(span, mib + 69_632..<mib + 73_728, "the one page holding the bytes")
        XCTAssertEqual(got, Array(source[Int(span.lowerBound)..<Int(span.upperBound)]))
        XCTAssertEqual(block[0], 0xAA, "nothing outside the chunk was touched")
        XCTAssertEqual(try read(record, mib + 65_535..<mib + 65_537).0, mib + 61_440..<mib + 69_632)
        XCTAssertEqual(try read(record, 0..<10).0, mib..<mib, "bytes outside the block: nothing")

        // The same object as an older hsmd recorded it: a CRC32C per 64 KiB chunk.
        var older = record
        var sums = FileChunkChecksums(shift: 16)
        for b in 0..<3 { source[b << 20..<(b + 1) << 20].withUnsafeBytes { sums.add(block: $0) } }
        older.chunkShift = 16
        older.chunkChecksums = ChunkChecksums(sums.values)
        XCTAssertNil(older.problem())
        XCTAssertEqual(try read(older, mib + 70_000..<mib + 70_010).0, mib + 65_536..<mib + 131_072)
        XCTAssertEqual(try read(older, mib + 65_535..<mib + 65_537).0, mib..<mib + 131_072)
        var old = record
        old.format = 1
        old.chunkShift = nil
        old.chunkChecksums = nil
        XCTAssertEqual(try read(old, mib + 70_000..<mib + 70_010).0, mib..<2 * mib)

        // One flipped bit in page 48 (and so in 64 KiB chunk 3) of block 1.
        let flipped = mib + 3 * 65_536 + 5
        let fd = try FileDescriptor.open(store.dataPath(record.object), [.readWrite])
        var byte: [UInt8] = [source[Int(flipped)] ^ 1]
        try byte.withUnsafeMutableBytes { _ = try fd.write(UnsafeRawBufferPointer($0), at: flipped) }
        fd.close()
        for r in [record, older] {
            XCTAssertThrowsError(try read(r, flipped..<flipped + 1)) { e in
                guard case StoreError.corrupt(_, 1, _) = e else { return XCTFail("\(e)") }
            }
        }
        XCTAssertEqual(try read(record, flipped - 4096..<flipped - 5).1, Array(source[Int(flipped) - 4101..<Int(flipped) - 5]),
                       "the page before the damaged one reads right")
        XCTAssertEqual(try read(older, mib + 2 * 65_536..<mib + 3 * 65_536).1,
                       Array(source[Int(mib) + 2 * 65_536..<Int(mib) + 3 * 65_536]))
        XCTAssertThrowsError(try read(old, mib..<mib + 1), "the whole block fails its block checksum")
    }

    /// The chunk a file gets: a page up to 256 MiB, growing so a file has at most 64 Ki
    /// chunks up to 64 KiB; never more than the block; none past 256 GiB (format 1).
    func testChunkShiftFollowsTheFileSize() {
        let mib: Int64 = 1 << 20
        let cases: [(Int64, UInt8, UInt8?)] = [
            (0, 20, 12), (16 << 10, 20, 12), (256 * mib, 20, 12), (256 * mib + 1, 20, 13), (512 * mib, 20, 13),
            (1024 * mib, 20, 14), (2048 * mib, 20, 15), (2048 * mib + 1, 20, 16), (4096 * mib, 20, 16), (64 << 30, 20, 16), (256 << 30, 20, 16), ((256 << 30) + 1, 20, nil),
            (1024 * mib, 12, 12), (1024 * mib, 14, 14),
        ]
        for (size, blockShift, want) in cases {
            XCTAssertEqual(ObjectRecord.chunkShift(forSize: size, blockShift: blockShift), want, "size \(size), block shift \(blockShift)")
            if let shift = want, blockShift == 20, size <= 4096 * mib {
                XCTAssertLessThanOrEqual(ObjectRecord.chunkCount(size: size, shift: shift), 1 << 16, "size \(size)")
            }
        }
    }
}

final class ObjectRecordFuzzTests: XCTestCase {
    private static let seeds: [[UInt8]] = [
        json(makeRecord()),
        json(makeRecord(size: 10 << 20, extents: [[0, 4096], [3 << 20, (5 << 20) + 1]])),
        json(makeRecord(size: 0)),
    ]

    /// Every prefix of a record is refused; every bit flip and deleted byte is refused or
    /// decodes to a record every user can index safely. In a child, so a trap fails.
    func testExhaustiveTruncationsBitFlipsAndDeletions() {
        let seeds = Self.seeds
        let outcome = runIsolated { crumb in
            for seed in seeds {
                for n in 0..<seed.count {
                    let b = Array(seed[0..<n])
                    crumb.record(b)
                    if (try? ObjectRecord.decode(json: b, id: testObject, path: "/s")) != nil { return "prefix of \(n) bytes decoded" }
                }
                var variants: [[UInt8]] = []
                for bit in 0..<(seed.count * 8) {
                    var b = seed
                    b[bit / 8] ^= 1 << UInt8(bit % 8)
                    variants.append(b)
                }
                for i in 0..<seed.count {
                    var b = seed
                    b.remove(at: i)
                    variants.append(b)
                }
                for b in variants {
                    crumb.record(b)
                    if let r = try? ObjectRecord.decode(json: b, id: testObject, path: "/s"), let why = unsafeUse(r) {
                        return "accepted an unsafe record (\(why)): \(String(decoding: b, as: UTF8.self))"
                    }
                }
            }
            return nil
        }
        assertIsolatedPasses(outcome, "record bit flips")
    }

    /// Structure-aware mutations with extreme values in every field, and random bytes.
    func testRandomRecordsNeverTrapNorPassUnsafeValues() {
        let outcome = runIsolated { crumb in
            var g = SeededGenerator(seed: 0x5EC0_4D)
            let extremes: [Any] = [0, -1, 1, 11, 12, 20, 30, 31, 62, 63, 64, 255, 256, Int64.max, Int64.min, 4095, 4096,
                                   3 << 20, (3 << 20) + 5, 1.5, "x", NSNull(), [Any](), [0], [0, 1], [[0]], [[5, 1]], [[0, 1 << 40]]]
            let fields = ["size", "block_shift", "format", "mode", "archived_at", "stored_bytes", "checksums", "extents",
                          "atime_ns", "path", "xattrs", "object"]
            var bases: [[String: Any]] = []
            for size: Int64 in [0, 1, 4096, 3 << 20, (3 << 20) + 5, 9 << 20] {
                for shift: UInt8 in [12, 20, 21, 30] {
                    guard let doc = (try? JSONSerialization.jsonObject(with: Data(json(makeRecord(size: size, shift: shift))))) as? [String: Any] else {
                        return "seed did not parse"
                    }
                    bases.append(doc)
                }
            }
            var accepted = 0
            for iteration in 0..<10_000 {
                var b: [UInt8]
                if iteration % 5 == 0 {
                    b = (0..<Int.random(in: 0...300, using: &g)).map { _ in
                        Bool.random(using: &g) ? UInt8.random(in: 0...255, using: &g) : Array("{}[],:\"0123456789-.e".utf8).randomElement(using: &g)!
                    }
                } else {
                    var doc = bases.randomElement(using: &g)!
                    for _ in 0..<Int.random(in: 0...3, using: &g) {
                        let f = fields.randomElement(using: &g)!
                        switch Int.random(in: 0..<4, using: &g) {
                        case 0: doc[f] = extremes.randomElement(using: &g)!
                        case 1: doc.removeValue(forKey: f)
                        case 2:
                            if var a = doc["checksums"] as? [Any], !a.isEmpty {
                                a[Int.random(in: 0..<a.count, using: &g)] = [NSNull(), 0, -1, 4294967296].randomElement(using: &g)!
                                doc["checksums"] = a
                            }
                        default:
                            if var a = doc["extents"] as? [[Any]], !a.isEmpty {
                                let i = Int.random(in: 0..<a.count, using: &g)
                                a[i] = [[Int64.max, 1], [-1, 5], [0], [], [0, 4096], [4096, 1 << 20]].randomElement(using: &g)!
                                if Bool.random(using: &g) { a.append(a[i]) }
                                doc["extents"] = a
                            }
                        }
                    }
                    guard let data = try? JSONSerialization.data(withJSONObject: doc) else { continue }
                    b = [UInt8](data)
                }
                crumb.record(Array(b.prefix(60_000)))
                do throws(StoreError) {
                    let r = try ObjectRecord.decode(json: b, id: testObject, path: "/s")
                    if let why = unsafeUse(r) { return "iteration \(iteration): accepted an unsafe record (\(why))" }
                    accepted += 1
                } catch {
                    guard case .badRecord(_, _, let reason) = error, !reason.isEmpty else { return "iteration \(iteration): \(error)" }
                }
            }
            return accepted > 1000 ? nil : "only \(accepted) records decoded; the fuzz is not reaching the success path"
        }
        assertIsolatedPasses(outcome, "record fuzz")
    }

    /// A fixed corpus of hostile record files.
    func testNastyCorpus() {
        let outcome = runIsolated { crumb in
            let corpus: [[UInt8]] = [
                [], Array("null".utf8), Array("[]".utf8), Array("{}".utf8), Array("\"x\"".utf8), [0xFF, 0xFE, 0x00],
                Array("{\"object\":".utf8) + Array(repeating: 0x5B, count: 100_000) + Array(repeating: 0x5D, count: 100_000) + [0x7D],
                Array("{\"size\":".utf8) + Array(repeating: 0x39, count: 100_000) + [0x7D],
                Array("{\"size\":1e999999}".utf8), Array("{\"size\":-0}".utf8),
                Array(String(decoding: json(makeRecord()), as: UTF8.self).replacingOccurrences(of: "\"format\" : 1", with: "\"format\" : 1e400").utf8),
                Array(String(decoding: json(makeRecord()), as: UTF8.self).replacingOccurrences(of: "\"checksums\" : [", with: "\"checksums\" : [[[[").utf8),
            ]
            for (i, b) in corpus.enumerated() {
                crumb.record(Array(b.prefix(1000)))
                if (try? ObjectRecord.decode(json: b, id: testObject, path: "/s")) != nil { return "corpus entry \(i) decoded" }
            }
            return nil
        }
        assertIsolatedPasses(outcome, "record corpus")
    }
}
