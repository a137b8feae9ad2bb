/// The block buffers of one recall worker, kept for the thread's life: a recall of one
/// block (every small file) used to allocate a fresh 1 MiB buffer, which malloc serves
/// with mmap and munmap (chsm_tune_malloc) and whose pages fault in on every use; a
/// sequential recall's pipeline (one per read-ahead window) did the same with its slots.
///
/// Owned by one thread (not Sendable); the pipeline lends its slots to its reader threads
/// only while it runs. Blocks larger than `keptBytes` (files of more than ~24 GiB get
/// larger blocks) get a buffer of their own for that recall, and pipelines whose slots
/// come to more than `keptSlotBytes` get slots of their own, so that a worker keeps at
/// most 1 MiB + 16 MiB (recall_threads of them in all).
final class WorkerBuffer {
    static let keptBytes = 1 << 20
    /// One pipeline of the widest reader: 4 reads in flight of up to 4 MiB (S3).
    static let keptSlotBytes = 16 << 20
    private var kept: UnsafeMutableRawBufferPointer?
    /// Kept pipeline slots, each of `slotBytes`; their total stays within `keptSlotBytes`.
    private var slots: [UnsafeMutableRawBufferPointer] = []
    private var slotBytes = 0

    init() {}

    deinit {
        kept?.deallocate()
        for s in slots { s.deallocate() }
    }

    /// A buffer of exactly `byteCount` bytes, page aligned; give it back with `release`.
    func acquire(_ byteCount: Int) -> UnsafeMutableRawBufferPointer {
        guard byteCount <= Self.keptBytes else { return .allocate(byteCount: byteCount, alignment: 4096) }
        let buffer = kept ?? .allocate(byteCount: Self.keptBytes, alignment: 4096)
        kept = buffer
        return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<byteCount])
    }

    func release(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.baseAddress != kept?.baseAddress { buffer.deallocate() }
    }

    /// `count` distinct buffers of exactly `byteCount` bytes each, page aligned, for a
    /// pipeline's slots; give them back with `releaseSlots`.
    func acquireSlots(_ count: Int, bytes byteCount: Int) -> [UnsafeMutableRawBufferPointer] {
        guard count * byteCount <= Self.keptSlotBytes else { return Self.freshSlots(count, bytes: byteCount) }
        if slotBytes < byteCount || count * slotBytes > Self.keptSlotBytes {
            // Kept ones too small, or too many bytes at their size: start again at this one.
            for s in slots { s.deallocate() }
            slots = []
            slotBytes = byteCount
        }
        while slots.count < count { slots.append(.allocate(byteCount: slotBytes, alignment: 4096)) }
        return slots[0..<count].map { UnsafeMutableRawBufferPointer(rebasing: $0[0..<byteCount]) }
    }

    func releaseSlots(_ given: [UnsafeMutableRawBufferPointer]) {
        for b in given where !slots.contains(where: { $0.baseAddress == b.baseAddress }) { b.deallocate() }
    }

    /// Kept pipeline slot bytes (tests).
    var keptSlotTotal: Int { slots.count * slotBytes }

    static func freshSlots(_ count: Int, bytes: Int) -> [UnsafeMutableRawBufferPointer] {
        (0..<count).map { _ in .allocate(byteCount: bytes, alignment: 4096) }
    }
}
