import Foundation
import Glibc
import HSMCore
import HSMKernel

/// What a store keeps beside an object's data: enough to rebuild the file by hand.
public struct ObjectRecord: Codable, Sendable, Equatable {
    public var object: ObjectID
    public var format: Int
    /// Path at archive time (the file may have moved since: the marker is the truth).
    public var path: String
    public var size: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var atimeNs: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    public var archivedAt: Int64
    public var blockShift: UInt8
    /// CRC32C of each block's bytes (holes read as zeros); nil for blocks with no data.
    public var checksums: [UInt32?]
    /// The file's data extents at archive time, `[start, end)`; everything else was a hole.
    public var extents: [[Int64]]
    /// The file's own xattrs (name → base64 value), hsmd's marker excluded.
    public var xattrs: [String: String]
    public var storedBytes: Int64
    /// Format 2: chunks of `1 << chunkShift` bytes (at most a block) each have a CRC32C
    /// too, so a recall of part of a block can verify what it brings back. Both nil in
    /// format 1, whose blocks come back whole.
    public var chunkShift: UInt8? = nil
    /// CRC32C of each chunk of the file (holes read as zeros; 0 for chunks of blocks with
    /// no data, never checked).
    public var chunkChecksums: ChunkChecksums? = nil

    /// The format a record with per-chunk checksums has (older ones are format 1).
    public static let chunkedFormat = 2
    /// The chunk sizes hsmd writes: from one 4 KiB page up to 64 KiB, per file
    /// (`chunkShift(forSize:blockShift:)`). A random page read reads and verifies one
    /// chunk from the store: here a cold 4 KiB read costs about a third of a 64 KiB one
    /// (docs/BENCHMARKS.md, "Target 1, fifth step"). Records of older hsmd hold 64 KiB
    /// chunks; any shift from 12 to the block's reads.
    public static let minChunkShift: UInt8 = 12
    public static let maxChunkShift: UInt8 = 16

    public var layout: BlockLayout { BlockLayout(shift: blockShift, fileSize: size) }
    /// The extents as ranges. A decoded record's are checked (`problem()`); a malformed
    /// one is left out here rather than trapping.
    public var dataExtents: [Range<Int64>] {
        extents.compactMap { e in e.count == 2 && e[0] <= e[1] ? e[0]..<e[1] : nil }
    }
}

/// Per-chunk CRC32Cs, kept in the JSON record as one base64 string of little-endian
/// 32-bit values (a JSON array of numbers would take three times the room).
public struct ChunkChecksums: Codable, Sendable, Equatable {
    public var values: [UInt32]

    public init(_ values: [UInt32]) { self.values = values }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: text), data.count % 4 == 0 else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "not base64 of 32-bit little-endian checksums"))
        }
        let bytes = [UInt8](data)
        var values: [UInt32] = []
        values.reserveCapacity(bytes.count / 4)
        var i = 0
        while i + 4 <= bytes.count {
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(bytes[i + k]) << UInt32(8 * k) }
            values.append(v)
            i += 4
        }
        self.values = values
    }

    public func encode(to encoder: any Encoder) throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.count * 4)
        for v in values { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        var c = encoder.singleValueContainer()
        try c.encode(Data(bytes).base64EncodedString())
    }
}

public enum StoreError: Error, CustomStringConvertible {
    case objectMissing(ObjectID, path: String)
    case corrupt(ObjectID, block: Int, path: String)
    case badRecord(ObjectID, path: String, reason: String)
    case changedDuringArchive(path: String)
    /// The store is not usable now (it does not prove its identity): nothing is archived
    /// to it or released against it, and a missing object is not the object's fault.
    case unusable(String)
    case io(SystemError)

    public var description: String {
        switch self {
        case .objectMissing(let id, let p): return "object \(id) is missing from the store (\(p))"
        case .corrupt(let id, let b, let p): return "object \(id) block \(b) fails its checksum (\(p))"
        case .badRecord(let id, let p, let r): return "object \(id) has an unreadable record \(p): \(r)"
        case .changedDuringArchive(let p): return "\(p) changed while it was being archived; try again when it is idle"
        case .unusable(let why): return why
        case .io(let e): return e.description
        }
    }

    /// The errno a program's access gets when recall fails with this error.
    public var errno: Int32 {
        switch self {
        // Only errnos the kernel accepts in FAN_DENY_ERRNO (docs/KERNEL-FACTS.md).
        case .io(let e) where [ENOSPC, EDQUOT].contains(e.errno): return e.errno
        default: return EIO
        }
    }
}

/// Reads one object's blocks, verifying each against its checksum.
public protocol ObjectReader {
    /// Fills `buffer` with block `index` (its length: the block's size clipped to the
    /// object) and verifies it. Returns the number of bytes. `buffer` is exactly one block
    /// of the record's layout: a caller whose block size differs works from a marker the
    /// record does not match, and gets `badRecord` (never a read past the buffer).
    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int
    /// Fills only the bytes of `buffer` (one whole block, as for `read(block:into:)`) that
    /// `bytes` (offsets in the file) touches, rounded out to whole chunks, and verifies each
    /// chunk. Returns the file range filled. A record without chunk checksums reads and
    /// verifies the whole block.
    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64>
    /// A hint that these blocks will be read soon (the store may start fetching them).
    func prefetch(blocks: Range<Int>)
    /// How many `read`s a recall should keep in flight at once: 1 for a local store, more
    /// for one where each read waits on a round trip. Above 1, `read` must be safe to call
    /// from several threads at once (on different buffers).
    var parallelReads: Int { get }
    /// How many consecutive blocks one `read(blocks:into:)` should be given: more than 1
    /// where one large request costs much less than several small ones (S3).
    var blocksPerRead: Int { get }
    /// Reads and verifies consecutive blocks `blocks` into `buffer`, block i of the range
    /// at offset i × block size (each slice as `read(block:into:)` gets it); returns each
    /// block's byte count.
    func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int]
    func close()
}

extension ObjectReader {
    public var parallelReads: Int { 1 }
    public var blocksPerRead: Int { 1 }

    /// One `read(block:into:)` per block.
    public func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        let size = buffer.count / max(1, blocks.count)
        var lengths: [Int] = []
        for (i, b) in blocks.enumerated() {
            lengths.append(try read(block: b, into: UnsafeMutableRawBufferPointer(rebasing: buffer[(i * size)..<((i + 1) * size)])))
        }
        return lengths
    }

    /// Stores that cannot read part of a block read all of it.
    public func readWholeBlock(_ index: Int, layout: BlockLayout, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        let n = try read(block: index, into: buffer)
        let r = layout.range(ofBlock: index)
        return r.lowerBound..<r.lowerBound + Int64(n)
    }
}

/// One tier. Objects are immutable once put; a new archive of a file makes a new object.
public protocol ObjectStore: Sendable {
    var name: String { get }
    /// Copies the data ranges of `source` (fully resident) into a new object named `id`
    /// (the caller picks it, so it can note the object as in progress first). It is
    /// durable only after the next `makeDurable()`; no marker may name it before then.
    func put(_ source: FileDescriptor, as id: ObjectID, stat: FileStat, blockShift: UInt8, originalPath: String,
             xattrs: [String: [UInt8]]) throws(StoreError) -> ObjectRecord
    /// Makes every object put so far durable (one flush for many objects).
    func makeDurable() throws(StoreError)
    /// The object's record, possibly from a cache (recall).
    func record(_ id: ObjectID) throws(StoreError) -> ObjectRecord
    /// The object's record read from the store itself, never from a cache: what release
    /// verifies against before it punches (docs/ARCHITECTURE.md, invariant 8).
    func storedRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord
    func reader(for record: ObjectRecord) throws(StoreError) -> ObjectReader
    /// Removes the object, complete or not (the leftovers of an interrupted put too).
    func delete(_ id: ObjectID) throws(StoreError)
    /// True when the object's record and data are both present (not verified).
    func contains(_ id: ObjectID) -> Bool
    func list() throws(StoreError) -> [ObjectID]
    /// A short problem description when the store cannot be used, nil when it is fine:
    /// for archive and release this includes proving its identity. `readingIdentity`
    /// false: only what costs no I/O beyond a stat (for each file of a batch whose store
    /// was fully checked just before).
    func healthProblem(readingIdentity: Bool) -> String?
}

extension ObjectStore {
    public func healthProblem() -> String? { healthProblem(readingIdentity: true) }
}
