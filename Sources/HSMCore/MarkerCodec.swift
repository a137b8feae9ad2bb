import HSMKernel

/// The binary form of `Marker`, version 1, little-endian:
///
///     0  magic "HSMK"        4  version (1)       5  block shift (12...30)
///     6  flags u16           8  size u64          16 mtime ns i64
///     24 object id [16]      40 released blocks u32
///     44 block count u32     48 bitmap [(count+7)/8]   …  crc32c u32 of all before
///
/// The decoder is strict: any inconsistency is an error, never a guess, so a damaged
/// marker makes the access fail with EIO instead of returning wrong data.
public enum MarkerCodec {
    public static let magic: [UInt8] = Array("HSMK".utf8)
    public static let version: UInt8 = 1
    public static let headerSize = 48
    /// Smallest block shift: 4 KiB blocks, the page size.
    public static let minShift: UInt8 = 12
    /// ext4 keeps all of an inode's xattrs in one block; leave room for others.
    public static let maxEncodedSize = 3584
    public static var maxBlocks: Int { (maxEncodedSize - headerSize - 4) * 8 }

    public enum DecodeError: Error, Equatable, CustomStringConvertible {
        case tooShort(Int)
        case badMagic
        case unsupportedVersion(UInt8)
        case badBlockShift(UInt8)
        case unknownFlags(UInt16)
        case blockCountMismatch(expected: Int, found: Int)
        case lengthMismatch(expected: Int, found: Int)
        case paddingBitsSet
        case releasedBlocksOutOfRange
        case checksumMismatch
        case badObjectID

        public var description: String {
            switch self {
            case .tooShort(let n): return "marker too short (\(n) bytes)"
            case .badMagic: return "marker has a bad magic number"
            case .unsupportedVersion(let v): return "marker version \(v) is not supported"
            case .badBlockShift(let s): return "marker block shift \(s) out of range"
            case .unknownFlags(let f): return "marker has unknown flags 0x\(String(f, radix: 16))"
            case .blockCountMismatch(let e, let f): return "marker block count \(f) does not match its size (\(e))"
            case .lengthMismatch(let e, let f): return "marker length \(f), expected \(e)"
            case .paddingBitsSet: return "marker bitmap has bits set past its last block"
            case .releasedBlocksOutOfRange: return "marker released-block count exceeds its blocks"
            case .checksumMismatch: return "marker checksum mismatch"
            case .badObjectID: return "marker object id is invalid"
            }
        }
    }

    public enum EncodeError: Error, CustomStringConvertible {
        case tooLarge(Int)
        public var description: String {
            switch self { case .tooLarge(let n): return "marker would be \(n) bytes, over the \(maxEncodedSize)-byte limit" }
        }
    }

    public static func encode(_ m: Marker) throws(EncodeError) -> [UInt8] {
        var out = magic
        out.reserveCapacity(headerSize + m.offline.bytes.count + 4)
        out.append(version)
        out.append(m.blockShift)
        append(&out, m.flags.rawValue)
        append(&out, UInt64(bitPattern: m.size))
        append(&out, UInt64(bitPattern: m.mtimeNs))
        out += m.object.bytes
        append(&out, m.releasedBlocks)
        append(&out, UInt32(m.offline.count))
        out += m.offline.bytes
        append(&out, CRC32C.checksum(out))
        if out.count > maxEncodedSize { throw .tooLarge(out.count) }
        return out
    }

    public static func decode(_ b: [UInt8]) throws(DecodeError) -> Marker {
        guard b.count >= headerSize + 4 else { throw .tooShort(b.count) }
        guard Array(b[0..<4]) == magic else { throw .badMagic }
        guard b[4] == version else { throw .unsupportedVersion(b[4]) }
        let shift = b[5]
        guard (minShift...BlockLayout.maxShift).contains(shift) else { throw .badBlockShift(shift) }
        let flags = Marker.Flags(rawValue: read(b, 6, as: UInt16.self))
        guard Marker.Flags.known.isSuperset(of: flags) else { throw .unknownFlags(flags.rawValue) }
        let size = Int64(bitPattern: read(b, 8, as: UInt64.self))
        let mtime = Int64(bitPattern: read(b, 16, as: UInt64.self))
        guard size >= 0 else { throw .blockCountMismatch(expected: 0, found: 0) }
        guard let object = ObjectID(bytes: Array(b[24..<40])) else { throw .badObjectID }
        let released = read(b, 40, as: UInt32.self)
        let count = Int(read(b, 44, as: UInt32.self))
        let expected = BlockLayout(shift: shift, fileSize: size).blockCount
        guard count == expected else { throw .blockCountMismatch(expected: expected, found: count) }
        let total = headerSize + (count + 7) / 8 + 4
        guard b.count == total else { throw .lengthMismatch(expected: total, found: b.count) }
        guard read(b, total - 4, as: UInt32.self) == CRC32C.checksum(Array(b[0..<total - 4])) else {
            throw .checksumMismatch
        }
        let bits = Array(b[headerSize..<total - 4])
        if count % 8 != 0, let last = bits.last, last >> UInt8(count % 8) != 0 { throw .paddingBitsSet }
        guard Int(released) <= count else { throw .releasedBlocksOutOfRange }
        var m = Marker(object: object, size: size, mtimeNs: mtime, blockShift: shift)
        m.flags = flags
        m.releasedBlocks = released
        m.offline = BlockBitmap(count: count, bytes: bits)
        return m
    }

    private static func append<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    private static func read<T: FixedWidthInteger>(_ b: [UInt8], _ at: Int, as: T.Type) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(b[at + i]) << (8 * i) }
        return v
    }
}
