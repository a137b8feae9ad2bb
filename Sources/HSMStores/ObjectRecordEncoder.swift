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
                     storedAt where: String) throws(StoreError) -> ObjectRecord {
        let record = ObjectRecord(
            object: id, format: 1, path: originalPath, size: stat.size, mode: stat.mode, uid: stat.uid, gid: stat.gid,
            atimeNs: stat.atimeNs, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs,
            archivedAt: Int64(Date().timeIntervalSince1970), blockShift: blockShift, checksums: checksums,
            extents: extents.map { [$0.lowerBound, $0.upperBound] },
            xattrs: xattrs.mapValues { Data($0).base64EncodedString() }, storedBytes: storedBytes)
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
