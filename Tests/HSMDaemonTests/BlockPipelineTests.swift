import Dispatch
import Glibc
import Synchronization
import XCTest
import HSMCore
import HSMStores

@testable import HSMDaemon

/// The calling thread's kernel id (Glibc has no gettid here).
private func currentTID() -> Int32 {
    var buf = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buf, 63)
    guard n > 0 else { return -1 }
    return Int32(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").last ?? "") ?? -1
}

/// Threads of this process named hsmd-prefetch now.
private func prefetchThreads() -> Int {
    guard let dir = opendir("/proc/self/task") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard name.first != "." else { continue }
        let fd = open("/proc/self/task/\(name)/comm", O_RDONLY)
        guard fd >= 0 else { continue }
        var buf = [UInt8](repeating: 0, count: 32)
        let n = read(fd, &buf, 32)
        close(fd)
        if n > 0, String(decoding: buf[0..<n], as: UTF8.self) == "hsmd-prefetch\n" { count += 1 }
    }
    return count
}

/// A store reader whose block b holds the byte b & 0xff; it can fail at one block, and
/// counts reads in flight at once and blocks per read, and notes the threads that read
/// and the buffers they read into.
private final class FakeReader: ObjectReader, Sendable {
    let parallelReads: Int
    let blocksPerRead: Int
    let blockSize: Int
    let failAt: Int?
    let inFlight = Atomic<Int>(0)
    let mostInFlight = Atomic<Int>(0)
    let widest = Atomic<Int>(0)
    let threads = Mutex<Set<Int32>>([])
    let buffers = Mutex<Set<UInt>>([])

    init(parallel: Int, span: Int, blockSize: Int, failAt: Int? = nil) {
        parallelReads = parallel
        blocksPerRead = span
        self.blockSize = blockSize
        self.failAt = failAt
    }

    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try read(blocks: index..<(index + 1), into: buffer)[0]
    }

    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        try readWholeBlock(index, layout: BlockLayout(shift: UInt8(blockSize.trailingZeroBitCount), fileSize: Int64(1) << 40), into: buffer)
    }

    func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        let now = inFlight.wrappingAdd(1, ordering: .relaxed).newValue
        defer { inFlight.wrappingSubtract(1, ordering: .relaxed) }
        _ = mostInFlight.max(now, ordering: .relaxed)
        _ = widest.max(blocks.count, ordering: .relaxed)
        let tid = currentTID()
        threads.withLock { _ = $0.insert(tid) }
        buffers.withLock { _ = $0.insert(UInt(bitPattern: buffer.baseAddress)) }
        usleep(2000)  // a round trip, so the readers overlap
        XCTAssertEqual(buffer.count, blocks.count * blockSize)
        for (i, b) in blocks.enumerated() {
            if b == failAt { throw .corrupt(ObjectID.random(), block: b, path: "fake") }
            UnsafeMutableRawBufferPointer(rebasing: buffer[(i * blockSize)..<((i + 1) * blockSize)])
                .initializeMemory(as: UInt8.self, repeating: UInt8(b & 0xff))
        }
        return Array(repeating: blockSize, count: blocks.count)
    }

    func prefetch(blocks: Range<Int>) {}
    func close() {}
}

final class BlockPipelineTests: XCTestCase {
    /// Blocks with gaps (what the offline bits give), several readers, several blocks per
    /// read: every block arrives once, in order, with its own bytes.
    func testBlocksArriveInOrderWithTheirBytes() throws {
        let blocks = [0, 1, 2, 3, 4, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 40]
        for (parallel, span) in [(1, 1), (4, 1), (4, 4), (3, 2)] {
            let reader = FakeReader(parallel: parallel, span: span, blockSize: 4096)
            var seen: [Int] = []
            try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096).run { b, data in
                XCTAssertEqual(data.count, 4096)
                XCTAssertTrue(data.allSatisfy { $0 == UInt8(b & 0xff) }, "block \(b) has another block's bytes")
                seen.append(b)
            }
            XCTAssertEqual(seen, blocks, "parallel \(parallel) span \(span)")
            XCTAssertLessThanOrEqual(reader.mostInFlight.load(ordering: .relaxed), parallel)
            XCTAssertLessThanOrEqual(reader.widest.load(ordering: .relaxed), span)
            if parallel > 1 { XCTAssertGreaterThan(reader.mostInFlight.load(ordering: .relaxed), 1, "no reads overlapped") }
            if span > 1 { XCTAssertGreaterThan(reader.widest.load(ordering: .relaxed), 1, "no read covered several blocks") }
        }
    }

    /// A store error stops the run at that block: the blocks before it were given, none
    /// after it, and the error comes out.
    func testAStoreErrorStopsAtItsBlock() {
        let blocks = Array(0..<32)
        let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096, failAt: 13)
        var seen: [Int] = []
        XCTAssertThrowsError(try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096).run { b, _ in seen.append(b) }) { error in
            guard case .corrupt(_, let block, _)? = error as? StoreError else { return XCTFail("\(error)") }
            XCTAssertEqual(block, 13)
        }
        // Block 12 shares the failed read with 13 (span 2): it is not given either.
        XCTAssertEqual(seen, Array(0..<12))
    }

    /// Fifty windows of one recall: the same reader threads and the same slots each time,
    /// no new thread, and every read ended when `run` returned.
    func testConsecutiveRunsReuseThreadsAndSlots() throws {
        let pool = ReaderThreads(limit: 4)
        let buffer = WorkerBuffer()
        let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096)
        let blocks = Array(0..<24)
        var threadsAfterFirst = -1
        for run in 0..<50 {
            var seen: [Int] = []
            try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096, threads: pool, buffers: buffer).run { b, data in
                XCTAssertTrue(data.allSatisfy { $0 == UInt8(b & 0xff) }, "run \(run) block \(b)")
                seen.append(b)
            }
            XCTAssertEqual(seen, blocks)
            XCTAssertEqual(reader.inFlight.load(ordering: .relaxed), 0, "a read outlived its run")
            XCTAssertEqual(pool.idleCount, pool.threadCount, "a reader thread did not come back")
            if run == 0 { threadsAfterFirst = prefetchThreads() }
        }
        XCTAssertEqual(pool.threadCount, 4)
        XCTAssertEqual(reader.threads.withLock { $0.count }, 4, "reads ran on new threads")
        XCTAssertGreaterThanOrEqual(threadsAfterFirst, 4, "the reader threads did not stay")
        XCTAssertEqual(prefetchThreads(), threadsAfterFirst, "hsmd-prefetch threads were started or ended")
        // 4 slots of 2 blocks, the same ones every run.
        XCTAssertEqual(reader.buffers.withLock { $0.count }, 4)
        XCTAssertEqual(buffer.keptSlotTotal, 4 * 2 * 4096)
    }

    /// More pipelines at once than the pool has threads for: all complete, with the right
    /// bytes in order (narrower, or on their callers' threads), and no more threads start.
    func testConcurrentPipelinesOnASmallPoolAllComplete() {
        let pool = ReaderThreads(limit: 4)
        let blocks = [0, 1, 2, 3, 4, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 40, 41, 42, 43, 44]
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        for p in 0..<6 {
            group.enter()
            startThread("test-pipeline\(p)") {
                defer { group.leave() }
                let buffer = WorkerBuffer()
                let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096)
                for run in 0..<20 {
                    var seen: [Int] = []
                    do {
                        try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096, threads: pool, buffers: buffer).run { b, data in
                            if !data.allSatisfy({ $0 == UInt8(b & 0xff) }) { failures.withLock { $0.append("pipeline \(p) run \(run): block \(b)'s bytes") } }
                            seen.append(b)
                        }
                    } catch {
                        failures.withLock { $0.append("pipeline \(p) run \(run): \(error)") }
                    }
                    if seen != blocks { failures.withLock { $0.append("pipeline \(p) run \(run): \(seen)") } }
                    if reader.inFlight.load(ordering: .relaxed) != 0 { failures.withLock { $0.append("pipeline \(p): a read outlived its run") } }
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success, "pipelines did not finish (deadlock?)")
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertLessThanOrEqual(pool.threadCount, 4)
        XCTAssertEqual(pool.idleCount, pool.threadCount)
    }

    /// A store error and a consumer's error mid-run leave the pool and the slots usable:
    /// the next run on them gives every block.
    func testARunAfterAnErrorOnTheSamePoolWorks() throws {
        struct Stop: Error {}
        let pool = ReaderThreads(limit: 4)
        let buffer = WorkerBuffer()
        let blocks = Array(0..<32)
        let failing = FakeReader(parallel: 4, span: 2, blockSize: 4096, failAt: 13)
        XCTAssertThrowsError(try BlockPipeline(blocks: blocks, reader: failing, blockSize: 4096, threads: pool, buffers: buffer).run { _, _ in }) {
            guard case .corrupt(_, let block, _)? = $0 as? StoreError else { return XCTFail("\($0)") }
            XCTAssertEqual(block, 13)
        }
        XCTAssertEqual(failing.inFlight.load(ordering: .relaxed), 0)
        XCTAssertEqual(pool.idleCount, pool.threadCount)
        let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096)
        var given = 0
        XCTAssertThrowsError(try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096, threads: pool, buffers: buffer).run { _, _ in
            given += 1
            if given == 5 { throw Stop() }
        }) { XCTAssertTrue($0 is Stop, "\($0)") }
        XCTAssertEqual(given, 5)
        XCTAssertEqual(reader.inFlight.load(ordering: .relaxed), 0)
        XCTAssertEqual(pool.idleCount, pool.threadCount)
        var seen: [Int] = []
        try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096, threads: pool, buffers: buffer).run { b, data in
            XCTAssertTrue(data.allSatisfy { $0 == UInt8(b & 0xff) }, "block \(b)")
            seen.append(b)
        }
        XCTAssertEqual(seen, blocks)
        XCTAssertEqual(pool.threadCount, 4)
    }

    /// A pool with no thread to give: the caller reads itself, same blocks, same order,
    /// same stop at an error; one with a single thread: one read in flight.
    func testAnExhaustedPoolReadsNarrowerOrOnTheCallersThread() throws {
        let blocks = [0, 1, 2, 3, 4, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 40]
        let none = ReaderThreads(limit: 0)
        let reader = FakeReader(parallel: 4, span: 2, blockSize: 4096)
        var seen: [Int] = []
        try BlockPipeline(blocks: blocks, reader: reader, blockSize: 4096, threads: none).run { b, data in
            XCTAssertTrue(data.allSatisfy { $0 == UInt8(b & 0xff) }, "block \(b)")
            seen.append(b)
        }
        XCTAssertEqual(seen, blocks)
        XCTAssertEqual(reader.threads.withLock { $0 }, [currentTID()])
        XCTAssertEqual(none.threadCount, 0)
        let failing = FakeReader(parallel: 4, span: 2, blockSize: 4096, failAt: 13)
        seen = []
        XCTAssertThrowsError(try BlockPipeline(blocks: Array(0..<32), reader: failing, blockSize: 4096, threads: none).run { b, _ in seen.append(b) })
        XCTAssertEqual(seen, Array(0..<12))

        let one = ReaderThreads(limit: 1)
        let narrow = FakeReader(parallel: 4, span: 1, blockSize: 4096)
        seen = []
        try BlockPipeline(blocks: blocks, reader: narrow, blockSize: 4096, threads: one).run { b, _ in seen.append(b) }
        XCTAssertEqual(seen, blocks)
        XCTAssertEqual(narrow.mostInFlight.load(ordering: .relaxed), 1)
        XCTAssertFalse(narrow.threads.withLock { $0.contains(currentTID()) })
    }

    /// A recall of one block uses the first kept pipeline slot: a worker that has run a
    /// pipeline keeps no second buffer. Slots already out are never lent twice.
    func testWorkerBufferServesOneBlockFromItsPipelineSlots() {
        let buffer = WorkerBuffer()
        let pipeline = buffer.acquireSlots(2, bytes: 1 << 20)
        buffer.releaseSlots(pipeline)
        let one = buffer.acquire(1 << 20)
        XCTAssertEqual(one.baseAddress, pipeline[0].baseAddress)
        XCTAssertEqual(one.count, 1 << 20)
        // Nested: the kept slots are out, so these are buffers of their own.
        let nested = buffer.acquireSlots(2, bytes: 1 << 20)
        XCTAssertTrue(nested.allSatisfy { n in !pipeline.contains { $0.baseAddress == n.baseAddress } })
        nested.forEach { $0.storeBytes(of: 0xff, toByteOffset: 0, as: UInt8.self) }
        buffer.releaseSlots(nested)
        buffer.release(one)
        XCTAssertEqual(buffer.keptSlotTotal, 2 << 20, "one set of slots, no block buffer besides")
        let smaller = buffer.acquire(4096)
        XCTAssertEqual(smaller.baseAddress, pipeline[0].baseAddress)
        XCTAssertEqual(smaller.count, 4096)
        buffer.release(smaller)
    }

    /// The worker's slots: reused while they fit, never more than `keptSlotBytes` kept,
    /// larger sets of slots given and freed.
    func testWorkerBufferKeepsBoundedSlots() {
        let buffer = WorkerBuffer()
        let a = buffer.acquireSlots(4, bytes: 4 << 20)
        XCTAssertEqual(Set(a.map { UInt(bitPattern: $0.baseAddress) }).count, 4)
        XCTAssertTrue(a.allSatisfy { UInt(bitPattern: $0.baseAddress) % 4096 == 0 && $0.count == 4 << 20 })
        buffer.releaseSlots(a)
        let b = buffer.acquireSlots(2, bytes: 1 << 20)
        XCTAssertEqual(b.map(\.baseAddress), a[0..<2].map(\.baseAddress))
        XCTAssertTrue(b.allSatisfy { $0.count == 1 << 20 })
        buffer.releaseSlots(b)
        XCTAssertEqual(buffer.keptSlotTotal, 16 << 20)
        let big = buffer.acquireSlots(2, bytes: 16 << 20)
        XCTAssertTrue(big.allSatisfy { $0.count == 16 << 20 })
        buffer.releaseSlots(big)
        XCTAssertEqual(buffer.keptSlotTotal, 16 << 20, "slots past the bound were kept")
        let larger = buffer.acquireSlots(2, bytes: 8 << 20)
        buffer.releaseSlots(larger)
        XCTAssertEqual(buffer.keptSlotTotal, 16 << 20)
        XCTAssertLessThanOrEqual(buffer.keptSlotTotal, WorkerBuffer.keptSlotBytes)
    }
}
