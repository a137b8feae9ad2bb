/// The block buffers of one recall worker, kept for the thread's life: a recall of one
/// block (every small file) used to allocate a fresh 1 MiB buffer, which malloc serves
/// with mmap and munmap (chsm_tune_malloc) and whose pages fault in on every use; a
/// sequential recall's pipeline (one per read-ahead window) did the same with its slots.
///
/// One set of kept slots serves both: a recall of one block uses the first slot, a
/// pipeline lends all it needs. A recall does one or the other at a time, so a worker
/// that has run a pipeline keeps no separate block buffer besides (docs/BENCHMARKS.md,
/// "Peak RSS": 1 MiB per worker less). Slots already lent are never lent again: a nested
/// request gets buffers of its own.
///
/// Owned by one thread (not Sendable); the pipeline lends its slots to its reader threads
/// only while it runs. Requests whose slots come to more than `keptSlotBytes` (files of
/// more than ~24 GiB get larger blocks; S3's wide pipelines) get buffers of their own for
/// that recall, so that a worker keeps at most 16 MiB (recall_threads of them in all).
final class WorkerBuffer {
    /// One pipeline of the widest reader: 4 reads in flight of up to 4 MiB (S3).
    static let keptSlotBytes = 16 << 20
    /// Kept slots, each of `slotBytes`; their total stays within `keptSlotBytes`.
    private var slots: [UnsafeMutableRawBufferPointer] = []
    private var slotBytes = 0
    /// The kept slots are out (acquire or acquireSlots, not yet given back).
    private var lent = false

    init() {}

    deinit {
        for s in slots { s.deallocate() }
    }

    /// A buffer of exactly `byteCount` bytes, page aligned; give it back with `release`.
    func acquire(_ byteCount: Int) -> UnsafeMutableRawBufferPointer {
        acquireSlots(1, bytes: byteCount)[0]
    }

    func release(_ buffer: UnsafeMutableRawBufferPointer) {
        releaseSlots([buffer])
    }

    /// `count` distinct buffers of exactly `byteCount` bytes each, page aligned, for a
    /// pipeline's slots; give them back with `releaseSlots`.
    func acquireSlots(_ count: Int, bytes byteCount: Int) -> [UnsafeMutableRawBufferPointer] {
        guard !lent, count * byteCount <= Self.keptSlotBytes else { return Self.freshSlots(count, bytes: byteCount) }
        if slotBytes < byteCount || count * slotBytes > Self.keptSlotBytes {
            // Kept ones too small, or too many bytes at their size: start again at this one.
            for s in slots { s.deallocate() }
            slots = []
            slotBytes = byteCount
        }
        while slots.count < count { slots.append(.allocate(byteCount: slotBytes, alignment: 4096)) }
        lent = true
        return slots[0..<count].map { UnsafeMutableRawBufferPointer(rebasing: $0[0..<byteCount]) }
    }

    func releaseSlots(_ given: [UnsafeMutableRawBufferPointer]) {
        var ownReturned = false
        for b in given {
            if slots.contains(where: { $0.baseAddress == b.baseAddress }) { ownReturned = true } else { b.deallocate() }
        }
        if ownReturned { lent = false }
    }

    /// Kept slot bytes (tests).
    var keptSlotTotal: Int { slots.count * slotBytes }

    static func freshSlots(_ count: Int, bytes: Int) -> [UnsafeMutableRawBufferPointer] {
        (0..<count).map { _ in .allocate(byteCount: bytes, alignment: 4096) }
    }
}
