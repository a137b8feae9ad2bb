/// How a file of `size` bytes divides into recall blocks of `1 << shift` bytes.
public struct BlockLayout: Equatable, Sendable {
    public let shift: UInt8
    public let fileSize: Int64

    public init(shift: UInt8, fileSize: Int64) {
        self.shift = shift
        self.fileSize = fileSize
    }

    /// Largest block shift: 1 GiB blocks, so the biggest file a marker can describe is
    /// `MarkerCodec.maxBlocks` GiB (about 27 TiB) and a recall buffer stays bounded.
    public static let maxShift: UInt8 = 30

    public var blockSize: Int64 { 1 << Int64(shift) }
    /// Written so that no file size, however large, overflows.
    public var blockCount: Int {
        Int((fileSize >> Int64(shift)) + (fileSize & (blockSize - 1) != 0 ? 1 : 0))
    }

    /// Byte range of block `i`, clipped to the file size. A block past the end (an index
    /// from a layout that does not match) is the empty range at the end, never a trap.
    public func range(ofBlock i: Int) -> Range<Int64> {
        guard i >= 0, i < blockCount else { return max(fileSize, 0)..<max(fileSize, 0) }
        let start = Int64(i) << Int64(shift)
        return start..<min(start + blockSize, fileSize)
    }

    /// The blocks that any byte of `bytes` falls in, clipped to the file.
    public func blocks(covering bytes: Range<Int64>) -> Range<Int> {
        let lo = max(bytes.lowerBound, 0)
        let hi = min(bytes.upperBound, fileSize)
        if lo >= hi { return 0..<0 }
        return Int(lo >> Int64(shift))..<Int((hi - 1) >> Int64(shift)) + 1
    }

    /// The smallest shift (≥ 1 MiB blocks) whose bitmap of `size` fits in `maxBits`, or
    /// nil when even `maxShift` does not.
    public static func shift(forFileSize size: Int64, maxBits: Int, minimumShift: UInt8 = 20) -> UInt8? {
        var s = minimumShift
        while BlockLayout(shift: s, fileSize: size).blockCount > maxBits {
            if s >= maxShift { return nil }
            s += 1
        }
        return s
    }
}

/// One bit per recall block; a set bit means the block's data is offline.
public struct BlockBitmap: Equatable, Sendable {
    public private(set) var count: Int
    public private(set) var bytes: [UInt8]

    public init(count: Int) {
        self.count = count
        bytes = [UInt8](repeating: 0, count: (count + 7) / 8)
    }

    /// For the codec: `bytes` must hold exactly `count` bits with clear padding.
    init(count: Int, bytes: [UInt8]) {
        self.count = count
        self.bytes = bytes
    }

    public subscript(i: Int) -> Bool {
        get { bytes[i >> 3] & (1 << UInt8(i & 7)) != 0 }
        set {
            if newValue { bytes[i >> 3] |= 1 << UInt8(i & 7) } else { bytes[i >> 3] &= ~(1 << UInt8(i & 7)) }
        }
    }

    public var setCount: Int { bytes.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { bytes.allSatisfy { $0 == 0 } }

    public func setIndices(in range: Range<Int>? = nil) -> [Int] {
        let r = range.map { r -> Range<Int> in
            let lo = min(max(r.lowerBound, 0), count)
            return lo..<max(lo, min(r.upperBound, count))
        } ?? 0..<count
        var out: [Int] = []
        var i = r.lowerBound
        while i < r.upperBound {
            if bytes[i >> 3] == 0 && i & 7 == 0 { i += 8; continue }
            if self[i] { out.append(i) }
            i += 1
        }
        return out
    }

    /// Clears every bit from `index` on (blocks past a truncated end of file).
    public mutating func clear(from index: Int) {
        var i = max(index, 0)
        while i < count { self[i] = false; i += 1 }
    }
}

/// Groups ascending indices into maximal runs of consecutive values.
public func consecutiveRuns(_ indices: [Int]) -> [Range<Int>] {
    var runs: [Range<Int>] = []
    for i in indices {
        if let last = runs.last, last.upperBound == i {
            runs[runs.count - 1] = last.lowerBound..<i + 1
        } else {
            runs.append(i..<i + 1)
        }
    }
    return runs
}

/// The parts of `range` that lie in any of `extents` (both sorted, non-overlapping).
public func intersect(_ range: Range<Int64>, _ extents: [Range<Int64>]) -> [Range<Int64>] {
    extents.compactMap { e in
        let lo = max(e.lowerBound, range.lowerBound), hi = min(e.upperBound, range.upperBound)
        return lo < hi ? lo..<hi : nil
    }
}

/// `range` minus the sorted, non-overlapping `extents`.
public func subtract(_ extents: [Range<Int64>], from range: Range<Int64>) -> [Range<Int64>] {
    var out: [Range<Int64>] = []
    var pos = range.lowerBound
    for e in extents where e.upperBound > pos && e.lowerBound < range.upperBound {
        if e.lowerBound > pos { out.append(pos..<e.lowerBound) }
        pos = max(pos, e.upperBound)
    }
    if pos < range.upperBound { out.append(pos..<range.upperBound) }
    return out
}
