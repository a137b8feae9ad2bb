import HSMCore
/// The records a store wrote or read lately, kept in a fixed memory budget.
///
/// A migrate releases each file right after putting it, and a recall needs the record on
/// every event batch: without a cache each would open and decode the JSON again (a cold
/// small-file recall then takes about twice as long). Holding every record as a Swift value
/// cost about 600 bytes per file and was never bounded (35 MiB after 60,000 archives).
/// Here records are packed into append-only byte arenas, about 170 bytes for a small
/// file: two generations, the older dropped whole when the newer one is full, so at least
/// the last `generationBytes` of records stay and memory never exceeds about twice that.
public struct RecordCache: Sendable {
    public let generationBytes: Int
    private var current = Generation()
    private var previous = Generation()

    /// A 128-bit object id held inline: index keys with no allocation of their own.
    private struct Key: Hashable {
        let hi: UInt64
        let lo: UInt64
        init(_ id: ObjectID) {
            var hi: UInt64 = 0, lo: UInt64 = 0
            for (i, b) in id.bytes.enumerated() {
                if i < 8 { hi = hi << 8 | UInt64(b) } else { lo = lo << 8 | UInt64(b) }
            }
            self.hi = hi
            self.lo = lo
        }
    }

    private struct Generation {
        var arena: [UInt8] = []
        var index: [Key: Range<Int>] = [:]
    }

    /// The last few records looked up, decoded: a random reader's events each need the
    /// record, and decoding a large file's chunk checksums on every event was 6% of hsmd's
    /// CPU per random 4 KiB read (docs/BENCHMARKS.md). Most recent last; only records of at
    /// most `recentMaxSums` checksums (a 4 GiB file's), so this holds at most a few MiB.
    private var recent: [ObjectRecord] = []
    static let recentCount = 4
    static let recentMaxSums = 1 << 17

    public init(generationBytes: Int = 2 << 20) {
        self.generationBytes = max(1, generationBytes)
    }

    public var count: Int { Set(current.index.keys).union(previous.index.keys).count }
    /// Bytes held in the arenas (encoded records, including replaced ones not yet dropped).
    public var bytes: Int { current.arena.count + previous.arena.count }

    public subscript(id: ObjectID) -> ObjectRecord? {
        let key = Key(id)
        if let r = current.index[key] { return RecordCodec.decode(current.arena[r]) }
        if let r = previous.index[key] { return RecordCodec.decode(previous.arena[r]) }
        return nil
    }

    /// The record, decoded, keeping it among the recent ones.
    public mutating func lookup(_ id: ObjectID) -> ObjectRecord? {
        if let i = recent.lastIndex(where: { $0.object == id }) {
            let r = recent[i]
            if i != recent.count - 1 { recent.remove(at: i); recent.append(r) }
            return r
        }
        guard let r = self[id] else { return nil }
        if r.checksums.count + (r.chunkChecksums?.values.count ?? 0) <= Self.recentMaxSums {
            if recent.count >= Self.recentCount { recent.removeFirst() }
            recent.append(r)
        }
        return r
    }

    public mutating func insert(_ record: ObjectRecord) {
        recent.removeAll { $0.object == record.object }
        let encoded = RecordCodec.encode(record)
        if current.arena.count + encoded.count > generationBytes && !current.index.isEmpty {
            // The older generation goes at once: its arena is one allocation, freed whole.
            previous = current
            current = Generation()
        }
        if current.arena.capacity == 0 { current.arena.reserveCapacity(generationBytes) }
        let key = Key(record.object)
        previous.index.removeValue(forKey: key)
        let start = current.arena.count
        current.arena += encoded
        current.index[key] = start..<current.arena.count
    }

    public mutating func remove(_ id: ObjectID) {
        recent.removeAll { $0.object == id }
        let key = Key(id)
        current.index.removeValue(forKey: key)
        previous.index.removeValue(forKey: key)
    }
}

/// A compact, lossless binary form of `ObjectRecord` for the in-memory cache (never
/// written to disk: the store's record stays JSON).
enum RecordCodec {
    static func encode(_ r: ObjectRecord) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(96 + r.path.utf8.count + 5 * r.checksums.count + 16 * r.extents.count)
        out += r.object.bytes
        put(&out, Int64(r.format))
        put(&out, r.path)
        for v in [r.size, r.atimeNs, r.mtimeNs, r.ctimeNs, r.archivedAt, r.storedBytes] { put(&out, v) }
        for v in [r.mode, r.uid, r.gid] { put(&out, v) }
        out.append(r.blockShift)
        put(&out, UInt32(r.checksums.count))
        for c in r.checksums {
            out.append(c == nil ? 0 : 1)
            put(&out, c ?? 0)
        }
        put(&out, UInt32(r.extents.count))
        for e in r.extents {
            put(&out, UInt32(e.count))
            for v in e { put(&out, v) }
        }
        put(&out, UInt32(r.xattrs.count))
        for (k, v) in r.xattrs {
            put(&out, k)
            put(&out, v)
        }
        // Format 2: the chunk shift (0 for none) and the chunk checksums.
        out.append(r.chunkShift ?? 0)
        if r.chunkShift != nil {
            let sums = r.chunkChecksums?.values ?? []
            put(&out, UInt32(sums.count))
            for v in sums { put(&out, v) }
        }
        return out
    }

    /// nil only for bytes `encode` did not make.
    static func decode(_ bytes: ArraySlice<UInt8>) -> ObjectRecord? {
        var c = Cursor(bytes: bytes)
        guard let object = c.take(16).flatMap({ ObjectID(bytes: Array($0)) }),
              let format = c.int64(), let path = c.string(),
              let size = c.int64(), let atime = c.int64(), let mtime = c.int64(), let ctime = c.int64(),
              let archivedAt = c.int64(), let stored = c.int64(),
              let mode = c.uint32(), let uid = c.uint32(), let gid = c.uint32(),
              let shift = c.take(1)?.first, let nChecksums = c.uint32() else { return nil }
        var checksums: [UInt32?] = []
        checksums.reserveCapacity(Int(nChecksums))
        for _ in 0..<nChecksums {
            guard let flag = c.take(1)?.first, let v = c.uint32() else { return nil }
            checksums.append(flag == 0 ? nil : v)
        }
        guard let nExtents = c.uint32() else { return nil }
        var extents: [[Int64]] = []
        extents.reserveCapacity(Int(nExtents))
        for _ in 0..<nExtents {
            guard let n = c.uint32() else { return nil }
            var e: [Int64] = []
            for _ in 0..<n {
                guard let v = c.int64() else { return nil }
                e.append(v)
            }
            extents.append(e)
        }
        guard let nXattrs = c.uint32() else { return nil }
        var xattrs: [String: String] = [:]
        for _ in 0..<nXattrs {
            guard let k = c.string(), let v = c.string() else { return nil }
            xattrs[k] = v
        }
        guard let chunkShift = c.take(1)?.first else { return nil }
        var chunkSums: ChunkChecksums?
        if chunkShift != 0 {
            guard let n = c.uint32() else { return nil }
            var values: [UInt32] = []
            values.reserveCapacity(Int(n))
            for _ in 0..<n {
                guard let v = c.uint32() else { return nil }
                values.append(v)
            }
            chunkSums = ChunkChecksums(values)
        }
        guard c.atEnd else { return nil }
        return ObjectRecord(object: object, format: Int(format), path: path, size: size, mode: mode, uid: uid, gid: gid,
                            atimeNs: atime, mtimeNs: mtime, ctimeNs: ctime, archivedAt: archivedAt, blockShift: shift,
                            checksums: checksums, extents: extents, xattrs: xattrs, storedBytes: stored,
                            chunkShift: chunkShift == 0 ? nil : chunkShift, chunkChecksums: chunkSums)
    }

    private static func put(_ out: inout [UInt8], _ v: Int64) { put(&out, UInt64(bitPattern: v)) }
    private static func put(_ out: inout [UInt8], _ v: UInt64) {
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
    private static func put(_ out: inout [UInt8], _ v: UInt32) {
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
    private static func put(_ out: inout [UInt8], _ s: String) {
        put(&out, UInt32(s.utf8.count))
        out += s.utf8
    }

    private struct Cursor {
        let bytes: ArraySlice<UInt8>
        var at: Int

        init(bytes: ArraySlice<UInt8>) {
            self.bytes = bytes
            at = bytes.startIndex
        }

        var atEnd: Bool { at == bytes.endIndex }

        mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n >= 0, bytes.endIndex - at >= n else { return nil }
            defer { at += n }
            return bytes[at..<at + n]
        }

        mutating func uint64() -> UInt64? {
            take(8).map { $0.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        }

        mutating func int64() -> Int64? { uint64().map { Int64(bitPattern: $0) } }

        mutating func uint32() -> UInt32? {
            take(4).map { $0.reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        }

        mutating func string() -> String? {
            guard let n = uint32(), let b = take(Int(n)) else { return nil }
            return String(decoding: b, as: UTF8.self)
        }
    }
}
