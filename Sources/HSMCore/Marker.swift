/// A file's persistent HSM state, stored in the `trusted.hsm` xattr. It alone says which
/// blocks are offline and which object holds them (docs/ARCHITECTURE.md, invariant 4).
public struct Marker: Equatable, Sendable {
    public static let xattrName = "trusted.hsm"

    public struct Flags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// A recall found the object missing or failing its checksums. Cleared by the next
        /// successful recall, so an administrator who restores the object can retry.
        public static let objectDamaged = Flags(rawValue: 1)
        static let known: Flags = [.objectDamaged]
    }

    public var object: ObjectID
    /// Size and mtime when archived: a file whose size or mtime differ is dirty.
    public var size: Int64
    public var mtimeNs: Int64
    public var blockShift: UInt8
    /// How many blocks the last release made offline; fewer offline now means `partial`.
    public var releasedBlocks: UInt32
    public var flags: Flags
    public var offline: BlockBitmap

    public init(object: ObjectID, size: Int64, mtimeNs: Int64, blockShift: UInt8) {
        self.object = object
        self.size = size
        self.mtimeNs = mtimeNs
        self.blockShift = blockShift
        releasedBlocks = 0
        flags = []
        offline = BlockBitmap(count: BlockLayout(shift: blockShift, fileSize: size).blockCount)
    }

    public var layout: BlockLayout { BlockLayout(shift: blockShift, fileSize: size) }

    /// Bytes in offline blocks, not counting any past `currentSize` (a truncated file).
    public func offlineBytes(currentSize: Int64) -> Int64 {
        offline.setIndices().reduce(Int64(0)) { sum, b in
            let r = layout.range(ofBlock: b)
            return sum + max(0, min(r.upperBound, currentSize) - r.lowerBound)
        }
    }
}
