import Dispatch
import HSMCore
import HSMStores
import Synchronization

/// Reads and verifies store blocks on other threads while the caller writes the previous
/// ones into the file: the two copies of a recall overlap instead of adding up.
/// (Writes to one file serialize on its inode lock, so more writers would not help.)
///
/// A store whose reads wait on a network round trip (`ObjectReader.parallelReads` > 1:
/// S3's ranged GETs) gets that many readers, so that many reads are in flight at once, and
/// each read may cover several consecutive blocks (`blocksPerRead`: one GET for them). The
/// blocks go in units of up to that many consecutive blocks; reader t reads units t, t+W,
/// t+2W… in order, each into the next of its own `perReader` slots, so a slot is only ever
/// filled by one thread and handed over through that slot's two semaphores; memory is
/// W × perReader × blocksPerRead blocks.
///
/// The readers run on kept threads (`ReaderThreads`), W of them claimed per run; a run
/// that gets fewer gets narrower, one that gets none reads on the caller's thread (no
/// overlap, same blocks in the same order). The slots come from the recall worker's
/// `WorkerBuffer` when there is one, so consecutive windows reuse pages already faulted in.
final class BlockPipeline {
    /// Runs of consecutive blocks, each read at once.
    private let units: [Range<Int>]
    private let blockSize: Int
    private let reader: any ObjectReader
    private let threads: ReaderThreads
    private let buffers: WorkerBuffer?

    init(blocks: [Int], reader: any ObjectReader, blockSize: Int, threads: ReaderThreads = .shared,
         buffers: WorkerBuffer? = nil) {
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
        self.threads = threads
        self.buffers = buffers
    }

    /// Calls `consume(block, bytes)` for each block in order; stops at the first error
    /// (of the store, or thrown by `consume`) and rethrows it. No reader touches a slot
    /// any more when it returns.
    func run(_ consume: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        guard !units.isEmpty else { return }
        // Never more readers than units.
        let claimed = threads.claim(upTo: max(1, min(reader.parallelReads, units.count)))
        let width = claimed.count
        // One reader: two slots, so the next read overlaps the write of this one.
        // Several: one each is enough, the others' reads overlap the write.
        // None (all the pool's threads busy): one slot, read then written here.
        let perReader = width == 1 ? 2 : 1
        let slotBytes = blockSize * (units.map(\.count).max() ?? 1)
        let slotCount = max(1, width) * perReader
        let slots = buffers?.acquireSlots(slotCount, bytes: slotBytes) ?? WorkerBuffer.freshSlots(slotCount, bytes: slotBytes)
        defer {
            if let buffers { buffers.releaseSlots(slots) } else { for b in slots { b.deallocate() } }
        }
        guard width > 0 else {
            for unit in units {
                let lengths = try Flow.read(unit, reader: reader, blockSize: blockSize, into: slots[0])
                try Flow.give(unit, lengths, slots[0], blockSize: blockSize, consume)
            }
            return
        }
        let flow = Flow(units: units, blockSize: blockSize, reader: reader, width: width, perReader: perReader, buffers: slots)
        for (t, worker) in claimed.enumerated() {
            threads.start(worker, done: flow.finished) { flow.produce(t) }
        }
        // Before the slots go back (the defer above runs after this one).
        defer {
            flow.cancelled.store(true, ordering: .releasing)
            for s in flow.emptied { s.signal() }
            for _ in 0..<width { flow.finished.wait() }
        }
        for (i, unit) in units.enumerated() {
            let s = flow.slot(i)
            flow.filled[s].wait()
            try Flow.give(unit, try flow.outcomes[s].get(), slots[s], blockSize: blockSize, consume)
            flow.emptied[s].signal()
        }
    }
}

/// One run's hand-over between its readers and the consumer.
private final class Flow: @unchecked Sendable {
    // @unchecked: each slot of `buffers` and `outcomes` is written by exactly one reader
    // thread and read by the consumer, and every hand-over goes through that slot's
    // `filled`/`emptied` semaphores, which order the accesses; the flag is an atomic. The
    // consumer waits for every reader's `finished` before the slots go back to their
    // owner, so no reader outlives its run's use of them. `reader` is called from several
    // threads only when it says that is safe (`parallelReads` > 1).
    let units: [Range<Int>]
    let blockSize: Int
    let reader: any ObjectReader
    let width: Int
    let perReader: Int
    let buffers: [UnsafeMutableRawBufferPointer]
    let outcomes: UnsafeMutableBufferPointer<Result<[Int], StoreError>>
    let filled: [DispatchSemaphore]
    let emptied: [DispatchSemaphore]
    let finished = DispatchSemaphore(value: 0)
    let cancelled = Atomic<Bool>(false)

    init(units: [Range<Int>], blockSize: Int, reader: any ObjectReader, width: Int, perReader: Int,
         buffers: [UnsafeMutableRawBufferPointer]) {
        self.units = units
        self.blockSize = blockSize
        self.reader = reader
        self.width = width
        self.perReader = perReader
        self.buffers = buffers
        outcomes = .allocate(capacity: buffers.count)
        outcomes.initialize(repeating: .success([]))
        filled = buffers.map { _ in DispatchSemaphore(value: 0) }
        // Start at zero and signal: libdispatch traps when a semaphore is freed below its
        // initial value, which an early stop would otherwise leave it at.
        emptied = buffers.map { _ in
            let s = DispatchSemaphore(value: 0)
            s.signal()
            return s
        }
    }

    deinit {
        outcomes.deinitialize()
        outcomes.deallocate()
    }

    /// The slot unit number `i` goes through.
    func slot(_ i: Int) -> Int { (i % width) * perReader + (i / width) % perReader }

    /// Reader t's loop; its thread signals `finished` once it returned (ReaderThreads).
    func produce(_ t: Int) {
        var i = t
        while i < units.count {
            let s = slot(i)
            emptied[s].wait()
            if cancelled.load(ordering: .acquiring) { return }
            do throws(StoreError) {
                outcomes[s] = .success(try Self.read(units[i], reader: reader, blockSize: blockSize, into: buffers[s]))
            } catch {
                outcomes[s] = .failure(error)
                filled[s].signal()
                return
            }
            filled[s].signal()
            i += width
        }
    }

    /// Reads one unit into the start of `slot`; the lengths of its blocks.
    static func read(_ unit: Range<Int>, reader: any ObjectReader, blockSize: Int,
                     into slot: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        let buffer = UnsafeMutableRawBufferPointer(rebasing: slot[0..<(unit.count * blockSize)])
        let lengths = try reader.read(blocks: unit, into: buffer)
        guard lengths.count == unit.count, lengths.allSatisfy({ (0...blockSize).contains($0) }) else {
            throw StoreError.unusable("the store's reader gave \(lengths.count) block lengths for \(unit.count) blocks")
        }
        return lengths
    }

    /// Gives the blocks of one unit read into `slot` to `consume`, in order.
    static func give(_ unit: Range<Int>, _ lengths: [Int], _ slot: UnsafeMutableRawBufferPointer, blockSize: Int,
                     _ consume: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        for (k, block) in unit.enumerated() {
            let at = k * blockSize
            try consume(block, UnsafeMutableRawBufferPointer(rebasing: slot[at..<(at + lengths[k])]))
        }
    }
}
