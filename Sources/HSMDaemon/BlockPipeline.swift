import Dispatch
import HSMCore
import HSMStores
import Synchronization

/// Reads and verifies store blocks on a thread of its own while the caller writes the
/// previous ones into the file: the two copies of a recall overlap instead of adding up.
/// (Writes to one file serialize on its inode lock, so more writers would not help.)
final class BlockPipeline: @unchecked Sendable {
    // @unchecked: `buffers` and `outcomes` are shared between exactly two threads and every
    // slot is handed over through the `filled`/`emptied` semaphores, which order the
    // accesses; the flags are atomics.
    private let blocks: [Int]
    private let reader: any ObjectReader
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var outcomes: [Result<Int, StoreError>]
    private let filled = DispatchSemaphore(value: 0)
    private let emptied: DispatchSemaphore
    private let finished = DispatchSemaphore(value: 0)
    private let cancelled = Atomic<Bool>(false)

    init(blocks: [Int], reader: any ObjectReader, blockSize: Int, depth: Int = 2) {
        self.blocks = blocks
        self.reader = reader
        buffers = (0..<depth).map { _ in .allocate(byteCount: blockSize, alignment: 4096) }
        outcomes = Array(repeating: .success(0), count: depth)
        // Start at zero and signal: libdispatch traps when a semaphore is freed below its
        // initial value, which an early stop would otherwise leave it at.
        emptied = DispatchSemaphore(value: 0)
        for _ in 0..<depth { emptied.signal() }
    }

    /// Calls `consume(block, bytes)` for each block in order; stops at the first error
    /// (of the store, or thrown by `consume`) and rethrows it.
    func run(_ consume: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        startThread("hsmd-prefetch") { self.produce() }
        defer {
            cancelled.store(true, ordering: .releasing)
            emptied.signal()
            finished.wait()
            for b in buffers { b.deallocate() }
        }
        for (i, block) in blocks.enumerated() {
            filled.wait()
            let slot = i % buffers.count
            let n = try outcomes[slot].get()
            try consume(block, UnsafeMutableRawBufferPointer(rebasing: buffers[slot][0..<n]))
            emptied.signal()
        }
    }

    private func produce() {
        defer { finished.signal() }
        for (i, block) in blocks.enumerated() {
            emptied.wait()
            if cancelled.load(ordering: .acquiring) { return }
            let slot = i % buffers.count
            do { outcomes[slot] = .success(try reader.read(block: block, into: buffers[slot])) } catch {
                outcomes[slot] = .failure(error)
                filled.signal()
                return
            }
            filled.signal()
        }
    }
}
