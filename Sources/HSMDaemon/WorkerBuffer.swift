/// The block buffer of one recall worker, kept for the thread's life: a recall of one
/// block (every small file) used to allocate a fresh 1 MiB buffer, which malloc serves
/// with mmap and munmap (chsm_tune_malloc) and whose pages fault in on every use.
///
/// Owned by one thread (not Sendable). Blocks larger than `keptBytes` (files of more
/// than ~24 GiB get larger blocks) get a buffer of their own for that recall, so that
/// a worker keeps at most 1 MiB (recall_threads of them in all).
final class WorkerBuffer {
    static let keptBytes = 1 << 20
    private var kept: UnsafeMutableRawBufferPointer?

    init() {}

    deinit { kept?.deallocate() }

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
}
