import HSMKernel

/// A filesystem's space as `df` counts it: used and available to unprivileged writers
/// (the blocks reserved for root are in neither), so 100% means ordinary writes fail.
public struct SpaceUsage: Sendable, Equatable {
    public var usedBytes: Int64
    public var availableBytes: Int64

    public init(usedBytes: Int64, availableBytes: Int64) {
        self.usedBytes = max(0, usedBytes)
        self.availableBytes = max(0, availableBytes)
    }

    /// From statvfs counts (blocks of `fragmentSize` bytes), saturating.
    public init(fragmentSize: UInt64, blocks: UInt64, free: UInt64, available: UInt64) {
        let size = Int64(clamping: fragmentSize)
        let mul = { (n: UInt64) -> Int64 in
            let (v, o) = Int64(clamping: n).multipliedReportingOverflow(by: size)
            return o ? Int64.max : v
        }
        self.init(usedBytes: mul(blocks >= free ? blocks - free : 0), availableBytes: mul(available))
    }

    /// Used plus available: what 100% is.
    public var capacity: Int64 {
        let (c, o) = usedBytes.addingReportingOverflow(availableBytes)
        return o ? Int64.max : c
    }

    public var percentUsed: Double {
        capacity == 0 ? 0 : Double(usedBytes) * 100 / Double(capacity)
    }

    public func isAtOrAbove(percent: Int) -> Bool { percentUsed >= Double(percent) }
    public func isBelow(percent: Int) -> Bool { percentUsed < Double(percent) }

    /// Bytes to free to get strictly below `percent` (0 when already below). Freeing moves
    /// bytes from used to available, so the capacity stays what it is.
    public func bytesToFree(below percent: Int) -> Int64 {
        guard !isBelow(percent: percent) else { return 0 }
        let share = (Double(capacity) * Double(min(100, max(0, percent))) / 100).rounded(.down)
        let allowed = share >= Double(Int64.max) ? Int64.max : Int64(share)
        let (need, overflow) = (usedBytes - min(allowed, usedBytes)).addingReportingOverflow(1)
        return overflow ? Int64.max : need
    }

    public var description: String { String(format: "%.1f%%", percentUsed) }

    /// Usage during a pass that started at `start` and has freed `freed` bytes by its own
    /// count, given what statvfs says `now`: whichever shows more progress. btrfs returns
    /// punched space to statvfs only at its next transaction commit, so its `now` lags;
    /// the count ignores other writers, which at worst ends a pass early (the next look
    /// goes on).
    public static func during(start: SpaceUsage, now: SpaceUsage, freed: Int64) -> SpaceUsage {
        let f = min(max(0, freed), start.usedBytes)
        let counted = SpaceUsage(usedBytes: start.usedBytes - f, availableBytes: start.availableBytes > Int64.max - f ? Int64.max : start.availableBytes + f)
        return counted.percentUsed < now.percentUsed ? counted : now
    }
}

/// A file a watermark pass may free: released if it is archived already, otherwise
/// archived and released (migrated).
public struct SpaceCandidate: Sendable, Equatable {
    public enum Action: String, Sendable { case release, migrate }
    public var path: String
    /// The later of its last access and last modification.
    public var lastUsedNs: Int64
    /// What releasing it would free: its allocated bytes.
    public var bytes: Int64
    public var action: Action

    public init(path: String, lastUsedNs: Int64, bytes: Int64, action: Action) {
        self.path = path
        self.lastUsedNs = lastUsedNs
        self.bytes = bytes
        self.action = action
    }

    /// Least recently used first; the path breaks ties, so the order is the same every time.
    public static func lessRecentlyUsed(_ a: SpaceCandidate, _ b: SpaceCandidate) -> Bool {
        a.lastUsedNs != b.lastUsedNs ? a.lastUsedNs < b.lastUsedNs : a.path < b.path
    }
}

public enum WatermarkRules {
    /// What a pass may do with a file, or nil and why not. `policy`'s excludes and
    /// min_size apply to both actions; its age is at least `minAgeSeconds`.
    public static func classify(path: String, stat: FileStat, markerBytes: [UInt8]?, policy: MigrationPolicy,
                                minAgeSeconds: Int64, nowNs: Int64) -> Result<SpaceCandidate, Skip> {
        guard stat.fileType == .regular else { return .failure(.notRegular) }
        guard stat.allocatedBytes > 0 else { return .failure(.nothingLocal) }
        var p = policy
        p.olderThanSeconds = max(policy.olderThanSeconds ?? 0, minAgeSeconds)
        if let why = p.skipReason(path: path, stat: stat, nowNs: nowNs) { return .failure(.policy(why)) }
        let lastUsed = max(stat.atimeNs, stat.mtimeNs)
        guard let markerBytes else {
            return .success(SpaceCandidate(path: path, lastUsedNs: lastUsed, bytes: stat.allocatedBytes, action: .migrate))
        }
        // A damaged marker is left for hsmctl check; a damaged object cannot back a release.
        guard let marker = try? MarkerCodec.decode(markerBytes) else { return .failure(.damaged) }
        if marker.flags.contains(.objectDamaged) { return .failure(.damaged) }
        if stat.size != marker.size || stat.mtimeNs != marker.mtimeNs {
            // Dirty: archived again, then released.
            return .success(SpaceCandidate(path: path, lastUsedNs: lastUsed, bytes: stat.allocatedBytes, action: .migrate))
        }
        // Released with no block back: what is allocated is metadata (an xattr block).
        guard marker.offline.setCount < marker.offline.count else { return .failure(.nothingLocal) }
        return .success(SpaceCandidate(path: path, lastUsedNs: lastUsed, bytes: stat.allocatedBytes, action: .release))
    }

    public enum Skip: Error, Equatable {
        case notRegular, nothingLocal, damaged
        case policy(String)
    }

    /// The order a pass works in: every release (cheap: the data is in the store) before
    /// any migration, each least recently used first.
    public static func order(_ candidates: [SpaceCandidate]) -> [SpaceCandidate] {
        candidates.filter { $0.action == .release }.sorted(by: SpaceCandidate.lessRecentlyUsed)
            + candidates.filter { $0.action == .migrate }.sorted(by: SpaceCandidate.lessRecentlyUsed)
    }
}

/// Keeps, of the candidates offered one by one, only the least recently used ones whose
/// bytes together reach `targetBytes`: a walk of millions of files holds just what the
/// pass can use (a max-heap on recency, newest on top, drops the newest while the rest
/// still reach the target).
public struct CandidateSelector: Sendable {
    public let targetBytes: Int64
    /// At most this many are kept (the least recently used): memory stays bounded when
    /// the target takes millions of small files; a later pass does the rest.
    public let maxCount: Int
    private var heap: [SpaceCandidate] = []
    public private(set) var totalBytes: Int64 = 0

    public init(targetBytes: Int64, maxCount: Int = Int.max) {
        self.targetBytes = max(0, targetBytes)
        self.maxCount = max(1, maxCount)
    }

    public var count: Int { heap.count }

    public mutating func offer(_ c: SpaceCandidate) {
        guard targetBytes > 0 else { return }
        if totalBytes >= targetBytes || heap.count >= maxCount, let top = heap.first, !SpaceCandidate.lessRecentlyUsed(c, top) { return }
        push(c)
        totalBytes = add(totalBytes, c.bytes)
        while let top = heap.first, totalBytes - top.bytes >= targetBytes || heap.count > maxCount {
            totalBytes -= top.bytes
            popTop()
        }
    }

    /// The kept candidates, least recently used first.
    public func ordered() -> [SpaceCandidate] { heap.sorted(by: SpaceCandidate.lessRecentlyUsed) }

    private func add(_ a: Int64, _ b: Int64) -> Int64 {
        let (s, o) = a.addingReportingOverflow(b)
        return o ? Int64.max : s
    }

    /// "a above b": a was used more recently.
    private func above(_ i: Int, _ j: Int) -> Bool { SpaceCandidate.lessRecentlyUsed(heap[j], heap[i]) }

    private mutating func push(_ c: SpaceCandidate) {
        heap.append(c)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard above(i, parent) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    private mutating func popTop() {
        guard !heap.isEmpty else { return }
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var top = i
            if l < heap.count && above(l, top) { top = l }
            if r < heap.count && above(r, top) { top = r }
            if top == i { return }
            heap.swapAt(i, top)
            i = top
        }
    }
}
