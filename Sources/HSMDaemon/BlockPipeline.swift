import Dispatch
import HSMCore
import HSMStores
import Synchronization

/// Reads and verifies store blocks on threads of its own while the caller writes the
/// previous ones into the file: the two copies of a recall overlap instead of adding up.
/// (Writes to one file serialize on its inode lock, so more writers would not help.)
///
/// A store whose reads wait on a network round trip (`ObjectReader.parallelReads` > 1:
/// S3's ranged GETs) gets that many reader threads, so that many reads are in flight at
/// once, and each read may cover several consecutive blocks (`blocksPerRead`: one GET for
/// them). The blocks go in units of up to that many consecutive blocks; reader thread t
/// reads units t, t+W, t+2W… in order, each into the next of its own `perReader` slots,
/// so a slot is only ever filled by one thread and handed over through that slot's two
/// semaphores; memory is W × perReader × blocksPerRead blocks.
final class BlockPipeline: @unchecked Sendable {
    // @unchecked: each slot of `buffers` and `outcomes` is written by exactly one reader
    // thread and read by the consumer, and every hand-over goes through that slot's
    // `filled`/`emptied` semaphores, which order the accesses; the flag is an atomic.
    // `reader` is called from several threads only when it says that is safe
    // (`parallelReads` > 1).
    /// Runs of consecutive blocks, each read at once.
    private let units: [Range<Int>]
    private let blockSize: Int
    private let reader: any ObjectReader
    private let width: Int
    private let perReader: Int
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var outcomes: [Result<[Int], StoreError>]
    private let filled: [DispatchSemaphore]
    private let emptied: [DispatchSemaphore]
    private let finished = DispatchSemaphore(value: 0)
    private let cancelled = Atomic<Bool>(false)

    init(blocks: [Int], reader: any ObjectReader, blockSize: Int) {
        let span = max(1, reader.blocksPerRead)
        var units: [Range<Int>] = []
        for b in blocks {
            if let last = units.last, last.upperBound == b, last.count < span {
                units[units.count - 1] = last.lowerBound..<(b + 1)
            } else {
                units.append(b..<(b + 1))
            }
        }
        self.units = units
        self.blockSize = blockSize
        self.reader = reader
        // Never more reader threads than units.
        width = max(1, min(reader.parallelReads, units.count))
        // One reader: two slots, so the next read overlaps the write of this one.
        // Several: one each is enough, the others' reads overlap the write.
        perReader = width == 1 ? 2 : 1
        let slots = width * perReader
        let slotBytes = blockSize * (units.map(\.count).max() ?? 1)
        buffers = (0..<slots).map { _ in .allocate(byteCount: slotBytes, alignment: 4096) }
        outcomes = Array(repeating: .success([]), count: slots)
        filled = (0..<slots).map { _ in DispatchSemaphore(value: 0) }
        // Start at zero and signal: libdispatch traps when a semaphore is freed below its
        // initial value, which an early stop would otherwise leave it at.
        emptied = (0..<slots).map { _ in
            let s = DispatchSemaphore(value: 0)
            s.signal()
            return s
        }
    }

    /// The slot unit number `i` goes through.
    private func slot(_ i: Int) -> Int { (i % width) * perReader + (i / width) % perReader }

    /// Calls `consume(block, bytes)` for each block in order; stops at the first error
    /// (of the store, or thrown by `consume`) and rethrows it.
    func run(_ consume: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        for t in 0..<width { startThread("hsmd-prefetch") { self.produce(t) } }
        defer {
            cancelled.store(true, ordering: .releasing)
            for s in emptied { s.signal() }
            for _ in 0..<width { finished.wait() }
            for b in buffers { b.deallocate() }
        }
        for (i, unit) in units.enumerated() {
            let s = slot(i)
            filled[s].wait()
            let lengths = try outcomes[s].get()
            for (k, block) in unit.enumerated() {
                let at = k * blockSize
                try consume(block, UnsafeMutableRawBufferPointer(rebasing: buffers[s][at..<(at + lengths[k])]))
            }
            emptied[s].signal()
        }
    }

    private func produce(_ t: Int) {
        defer { finished.signal() }
        var i = t
        while i < units.count {
            let s = slot(i)
            emptied[s].wait()
            if cancelled.load(ordering: .acquiring) { return }
            let unit = units[i]
            let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[s][0..<(unit.count * blockSize)])
            do throws(StoreError) {
                let lengths = try reader.read(blocks: unit, into: buffer)
                guard lengths.count == unit.count, lengths.allSatisfy({ (0...blockSize).contains($0) }) else {
                    throw StoreError.unusable("the store's reader gave \(lengths.count) block lengths for \(unit.count) blocks")
                }
                outcomes[s] = .success(lengths)
            } catch {
                outcomes[s] = .failure(error)
                filled[s].signal()
                return
            }
            filled[s].signal()
            i += width
        }
    }
}
