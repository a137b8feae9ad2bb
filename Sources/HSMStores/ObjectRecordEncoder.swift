import Foundation
import HSMCore
import HSMKernel

/// Making and writing records: one place for what every store puts in one, so the posix
/// and the s3 store write the same record (the decoder is ObjectRecordDecoder.swift).
extension ObjectRecord {
    /// The record of a file archived now from `stat`, checked the way the decoder checks
    /// it: never store a record that could not be recalled.
    static func made(object id: ObjectID, path originalPath: String, stat: FileStat, blockShift: UInt8,
                     checksums: [UInt32?], extents: [Range<Int64>], xattrs: [String: [UInt8]], storedBytes: Int64,
                     chunks: FileChunkChecksums? = nil, storedAt where: String) throws(StoreError) -> ObjectRecord {
        var record = ObjectRecord(
            object: id, format: 1, path: originalPath, size: stat.size, mode: stat.mode, uid: stat.uid, gid: stat.gid,
            atimeNs: stat.atimeNs, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs,
            archivedAt: Int64(Date().timeIntervalSince1970), blockShift: blockShift, checksums: checksums,
            extents: extents.map { [$0.lowerBound, $0.upperBound] },
            xattrs: xattrs.mapValues { Data($0).base64EncodedString() }, storedBytes: storedBytes)
        if let chunks, let shift = chunks.shift {
            record.format = chunkedFormat
            record.chunkShift = shift
            record.chunkChecksums = ChunkChecksums(chunks.values)
        }
        if let problem = record.problem() { throw .badRecord(id, path: `where`, reason: "hsmd made an inconsistent record: \(problem)") }
        return record
    }

    /// The record's bytes as stored (snake-case JSON, sorted keys), at most maxEncodedBytes.
    func encoded(storedAt where: String) throws(StoreError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes: [UInt8]
        do { bytes = [UInt8](try encoder.encode(self)) } catch {
            throw .io(SystemError(errno: EIO, operation: "encode record", path: `where`))
        }
        guard bytes.count <= Self.maxEncodedBytes else {
            throw .badRecord(object, path: `where`, reason: "\(bytes.count) bytes, more than a record may have (\(Self.maxEncodedBytes >> 20) MiB): the file has too many data extents")
        }
        return bytes
    }

    /// Files with more chunks than this get a format 1 record (whole-block recall): their
    /// chunk checksums (4 bytes each, base64) would make the record too large to read back
    /// quickly. 4 Mi chunks of 64 KiB: files up to 256 GiB.
    static let maxChunks = 1 << 22

    /// A file gets the smallest chunk (down to one page) that keeps it at this many
    /// chunks at most: 256 KiB of checksums, what a 4 GiB file's 64 KiB chunks already
    /// took, so no record of a file up to 4 GiB is bigger than a 4 GiB file's was, and
    /// the recent records' cache (RecordCache) still holds them decoded.
    static let targetChunks = 1 << 16

    /// The chunk shift a file of `size` bytes archived now gets; nil when it gets no chunk
    /// checksums (format 1). 4 KiB chunks up to 256 MiB, doubling with the size to 64 KiB above 2 GiB;
    /// never more than the block.
    public static func chunkShift(forSize size: Int64, blockShift: UInt8) -> UInt8? {
        let top = min(maxChunkShift, blockShift)
        var shift = min(minChunkShift, top)
        while shift < top && chunkCount(size: size, shift: shift) > targetChunks { shift += 1 }
        return chunkCount(size: size, shift: shift) <= maxChunks ? shift : nil
    }

    /// The chunks of block `index` that `bytes` touches, as a file range clipped to the
    /// block (empty when `bytes` misses the block).
    func chunkSpan(ofBlock index: Int, covering bytes: Range<Int64>, shift: UInt8) -> Range<Int64> {
        let block = layout.range(ofBlock: index)
        let want = bytes.clamped(to: block)
        guard !want.isEmpty else { return block.lowerBound..<block.lowerBound }
        let size = Int64(1) << Int64(shift)
        let lo = want.lowerBound & ~(size - 1)
        let hi = min((want.upperBound + size - 1) & ~(size - 1), block.upperBound)
        return max(lo, block.lowerBound)..<hi
    }

    /// Checks the chunks of `span` (chunk-aligned, inside block `index`, as `chunkSpan`
    /// gives) that `view` holds, `view` being the whole block's buffer.
    func verifyChunks(_ span: Range<Int64>, ofBlock index: Int, in view: UnsafeRawBufferPointer, storedAt where: String) throws(StoreError) {
        guard let shift = chunkShift, let sums = chunkChecksums?.values else { return }
        let block = layout.range(ofBlock: index)
        let size = Int64(1) << Int64(shift)
        var at = span.lowerBound
        while at < span.upperBound {
            let c = Int(at >> Int64(shift))
            let end = min(at + size, block.upperBound)
            guard sums.indices.contains(c), at >= block.lowerBound, end - block.lowerBound <= Int64(view.count) else {
                throw .badRecord(object, path: `where`, reason: "chunk \(c) asked for, the record has \(sums.count): it does not match the file's marker")
            }
            let bytes = UnsafeRawBufferPointer(rebasing: view[Int(at - block.lowerBound)..<Int(end - block.lowerBound)])
            guard CRC32C.checksum(bytes) == sums[c] else { throw .corrupt(object, block: index, path: `where`) }
            at = end
        }
    }

    /// The part of `buffer` block `index` fills, and the checksum it must have (nil: a
    /// block with no data, already zeroed here). The index and the buffer come from the
    /// file's marker: a record that does not match it fails here, never indexing past its
    /// checksums or writing past the buffer. Every store's reader starts with this.
    func blockToRead(_ index: Int, into buffer: UnsafeMutableRawBufferPointer, storedAt where: String)
        throws(StoreError) -> (view: UnsafeMutableRawBufferPointer, expected: UInt32?) {
        guard checksums.indices.contains(index) else {
            throw .badRecord(object, path: `where`, reason: "block \(index) asked for, the record has \(checksums.count): it does not match the file's marker")
        }
        guard buffer.count == Int(layout.blockSize) else {
            throw .badRecord(object, path: `where`, reason: "its blocks are \(layout.blockSize) bytes, the file's marker says \(buffer.count)")
        }
        let range = layout.range(ofBlock: index)
        let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(range.upperBound - range.lowerBound)])
        guard let expected = checksums[index] else {
            view.initializeMemory(as: UInt8.self, repeating: 0)
            return (view, nil)
        }
        return (view, expected)
    }
}

/// The chunk checksums of a file being archived, added block by block in order: what both
/// stores put in a format 2 record. `shift` nil: the file gets none (format 1), and adding
/// does nothing.
struct FileChunkChecksums {
    let shift: UInt8?
    private(set) var values: [UInt32] = []

    init(shift: UInt8?) { self.shift = shift }

    /// The chunks a file of `fileSize` bytes archived now gets (`ObjectRecord.chunkShift`).
    init(fileSize: Int64, blockShift: UInt8) {
        self.init(shift: ObjectRecord.chunkShift(forSize: fileSize, blockShift: blockShift))
    }

    /// The CRC32C of each chunk of `block`: the bytes of one whole block of the file, the
    /// last one possibly short.
    mutating func add(block: UnsafeRawBufferPointer) {
        guard let shift else { return }
        let size = 1 << Int(shift)
        var at = 0
        while at < block.count {
            values.append(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[at..<min(at + size, block.count)])))
            at += size
        }
    }

    /// A block of `length` bytes with no data: its chunks are never read (it recalls as
    /// zeros), so 0 stands for each.
    mutating func addBlockWithNoData(length: Int64) {
        guard let shift else { return }
        values += repeatElement(0, count: ObjectRecord.chunkCount(size: length, shift: shift))
    }
}
