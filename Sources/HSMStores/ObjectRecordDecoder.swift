import Foundation
import Glibc
import HSMCore

/// The one way a store's record is read back: decoded, then every field range-checked,
/// so a damaged or edited record is a clear `StoreError.badRecord` (the access fails
/// with EIO and the file shows damaged) and never an index out of range or an overflow
/// in whoever uses it. What `put` writes passes the same checks before it is written.
extension ObjectRecord {
    /// The largest record hsmd reads or writes (a record is mostly its checksums and the
    /// file's data extents; a 27 TiB file's checksums take about 0.5 MiB).
    public static let maxEncodedBytes = 64 << 20
    /// The largest file a marker describes: every block of the biggest size.
    public static let maxSize = Int64(MarkerCodec.maxBlocks) << Int64(BlockLayout.maxShift)
    /// `archived_at` is in seconds; beyond this it would not fit in nanoseconds.
    public static let maxArchivedAt = Int64.max / 1_000_000_000

    /// Decodes the JSON form of the record of object `id` kept at `path`.
    public static func decode(json: [UInt8], id: ObjectID, path: String) throws(StoreError) -> ObjectRecord {
        guard json.count <= maxEncodedBytes else {
            throw .badRecord(id, path: path, reason: "\(json.count) bytes, more than a record may have (\(maxEncodedBytes >> 20) MiB)")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let record: ObjectRecord
        do { record = try decoder.decode(ObjectRecord.self, from: Data(json)) } catch {
            throw .badRecord(id, path: path, reason: describe(error))
        }
        guard record.object == id else { throw .badRecord(id, path: path, reason: "it names object \(record.object)") }
        if let problem = record.problem() { throw .badRecord(id, path: path, reason: problem) }
        return record
    }

    /// Why this record cannot be trusted, or nil when every field is in range and the
    /// fields agree with each other. Field names are the JSON ones.
    public func problem() -> String? {
        guard format == 1 || format == Self.chunkedFormat else {
            return "format \(format) is not supported (this hsmd reads formats 1 and \(Self.chunkedFormat))"
        }
        guard size >= 0 else { return "size \(size) is negative" }
        guard size <= Self.maxSize else { return "size \(size) is larger than any file hsmd archives (\(Self.maxSize))" }
        guard (MarkerCodec.minShift...BlockLayout.maxShift).contains(blockShift) else {
            return "block_shift \(blockShift) is out of range (\(MarkerCodec.minShift) to \(BlockLayout.maxShift))"
        }
        let blocks = layout.blockCount
        guard blocks <= MarkerCodec.maxBlocks else {
            return "size \(size) in blocks of 2^\(blockShift) bytes makes \(blocks) blocks, more than a marker holds (\(MarkerCodec.maxBlocks))"
        }
        guard checksums.count == blocks else {
            return "\(checksums.count) checksums for the \(blocks) blocks of size \(size) at block_shift \(blockShift)"
        }
        guard mode & UInt32(S_IFMT) == UInt32(S_IFREG), mode <= 0o177777 else {
            return "mode 0o\(String(mode, radix: 8)) is not a regular file's"
        }
        guard path.hasPrefix("/"), !path.utf8.contains(0) else { return "path \(path.debugDescription) is not an absolute path" }
        guard (0...Self.maxArchivedAt).contains(archivedAt) else {
            return "archived_at \(archivedAt) is out of range (0 to \(Self.maxArchivedAt) seconds since 1970)"
        }
        // atime/mtime/ctime are nanoseconds since 1970: every Int64 is a time (negative ones
        // before 1970), and hsmd only compares them, so they need no range.
        if let problem = chunkProblem() { return problem }
        var hasData = [Bool](repeating: false, count: blocks)
        var previousEnd: Int64 = 0
        var total: Int64 = 0
        for (i, e) in extents.enumerated() {
            guard e.count == 2 else { return "extents[\(i)] has \(e.count) numbers instead of [start, end]" }
            let (lo, hi) = (e[0], e[1])
            guard lo >= 0, lo < hi, hi <= size else { return "extents[\(i)] [\(lo), \(hi)] is empty or outside the file (size \(size))" }
            guard lo >= previousEnd else {
                return "extents[\(i)] starts at \(lo), before extents[\(i - 1)] ends (\(previousEnd)): extents must be sorted and apart"
            }
            previousEnd = hi
            total += hi - lo  // cannot overflow: the extents are apart and inside [0, size)
            for b in layout.blocks(covering: lo..<hi) { hasData[b] = true }
        }
        guard storedBytes == total else { return "stored_bytes \(storedBytes) is not the \(total) bytes its extents hold" }
        // A block without a checksum reads as zeros: only right where the file had a hole.
        for b in 0..<blocks where (checksums[b] != nil) != hasData[b] {
            return hasData[b] ? "block \(b) holds data by extents but has no checksum (it would read as zeros)"
                              : "block \(b) has a checksum but no data extent"
        }
        for (name, value) in xattrs {
            guard !name.isEmpty, name.utf8.count <= 255, !name.utf8.contains(0) else { return "xattrs: \(name.debugDescription) is not an xattr name" }
            guard let bytes = Data(base64Encoded: value) else { return "xattrs[\(name.debugDescription)] is not base64" }
            guard bytes.count <= 65536 else { return "xattrs[\(name.debugDescription)] holds \(bytes.count) bytes, more than an xattr can (65536)" }
        }
        return nil
    }

    /// Format 1 has no chunk checksums; format 2 has one per chunk of the file, and its
    /// chunks divide its blocks.
    func chunkProblem() -> String? {
        guard format == Self.chunkedFormat else {
            if chunkShift != nil || chunkChecksums != nil { return "chunk_shift and chunk_checksums are only in format \(Self.chunkedFormat) records" }
            return nil
        }
        guard let shift = chunkShift else { return "chunk_shift is missing (format \(format))" }
        guard let sums = chunkChecksums else { return "chunk_checksums is missing (format \(format))" }
        guard (MarkerCodec.minShift...blockShift).contains(shift) else {
            return "chunk_shift \(shift) is out of range (\(MarkerCodec.minShift) to block_shift \(blockShift))"
        }
        let chunks = Self.chunkCount(size: size, shift: shift)
        guard sums.values.count == chunks else {
            return "\(sums.values.count) chunk checksums for the \(chunks) chunks of size \(size) at chunk_shift \(shift)"
        }
        return nil
    }

    /// Chunks of `1 << shift` bytes in `size` bytes (no overflow for any record size).
    public static func chunkCount(size: Int64, shift: UInt8) -> Int {
        Int((size >> Int64(shift)) + (size & ((1 << Int64(shift)) - 1) != 0 ? 1 : 0))
    }

    /// Why this record cannot serve the file whose marker is `marker`, or nil. Block
    /// indexes taken from the marker are valid in the record only when both agree on
    /// the size and the block shift.
    public func mismatch(with marker: Marker) -> String? {
        if size == marker.size && blockShift == marker.blockShift { return nil }
        return "the record says size \(size) in blocks of 2^\(blockShift) bytes, the marker size \(marker.size) in blocks of 2^\(marker.blockShift)"
    }

    /// A DecodingError as "field: what", with the record's own (snake_case) field names.
    static func describe(_ error: any Error) -> String {
        func at(_ path: [any CodingKey]) -> String {
            var s = ""
            for k in path {
                if let i = k.intValue { s += "[\(i)]" } else { s += (s.isEmpty ? "" : ".") + snakeCase(k.stringValue) }
            }
            return s.isEmpty ? "the record" : s
        }
        guard let e = error as? DecodingError else { return "\(error)" }
        switch e {
        case .typeMismatch(let type, let c): return "\(at(c.codingPath)): expected \(type)"
        case .valueNotFound(let type, let c): return "\(at(c.codingPath)): expected \(type), found null"
        case .keyNotFound(let key, let c): return "\(at(c.codingPath + [key])) is missing"
        case .dataCorrupted(let c) where c.codingPath.isEmpty:
            // Foundation says only this, also for a number too big or with a fraction.
            return "not valid JSON, or a number that does not fit its field (\(c.debugDescription))"
        case .dataCorrupted(let c): return "\(at(c.codingPath)): \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }

    static func snakeCase(_ s: String) -> String {
        var out = ""
        for ch in s {
            if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
        }
        return out
    }
}
