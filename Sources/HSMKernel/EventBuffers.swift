import CHSMKernel

/// The two buffers of a fanotify reader: the raw bytes `read` fills and the C parser's
/// output. The parse array is left uninitialized: the parser writes each entry it
/// returns, and filling thousands of entries up front kept hundreds of KiB resident that
/// a typical batch of a few events never touches. One per reading thread.
final class EventBuffers<Entry> {
    private let raw: UnsafeMutableRawBufferPointer
    private let parsed: UnsafeMutableBufferPointer<Entry>

    /// `smallestEvent`: the fewest bytes one event takes, so `parsed` can hold a full read.
    init(bytes: Int, smallestEvent: Int) {
        raw = .allocate(byteCount: bytes, alignment: 8)
        parsed = .allocate(capacity: bytes / smallestEvent)
    }

    deinit {
        raw.deallocate()
        parsed.deallocate()
    }

    /// Reads one batch from `fd` with the C reader `parse` (read + parse, -errno on
    /// failure) and returns the parsed entries, valid until the next call.
    func read(_ fd: Int32, _ operation: String,
              _ parse: (Int32, UnsafeMutableRawPointer?, Int, UnsafeMutablePointer<Entry>?, Int32) -> Int32) throws(SystemError) -> UnsafeMutableBufferPointer<Entry> {
        let n = parse(fd, raw.baseAddress, raw.count, parsed.baseAddress, Int32(parsed.count))
        try SystemError.check(n, operation)
        return UnsafeMutableBufferPointer(rebasing: parsed[0..<Int(n)])
    }
}
