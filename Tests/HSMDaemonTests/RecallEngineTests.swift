import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization
import XCTest

@testable import HSMDaemon

/// The rule of DESIGN invariant 7 for every outcome of a recall: each event is answered
/// exactly once, and never ALLOW over offline data that was not brought back. Real files
/// (on the test machine's root filesystem, no fanotify marks), a real posix store, and a
/// store wrapper that fails on demand; answers go to a recorder instead of the kernel.
final class RecallEngineTests: XCTestCase {
    static let blockShift: UInt8 = 20
    static let block = 1 << 20

    var dir = ""
    var posix: PosixStore!
    var store: FaultyStore!
    var fs: ManagedFilesystem!
    var recorder: AnswerRecorder!
    var engine: RecallEngine?

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "trusted.* xattrs need root")
        dir = NSTemporaryDirectory() + "hsmd-engine-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/store", withIntermediateDirectories: true)
        posix = PosixStore(name: "t", root: dir + "/store", stateDir: dir)
        posix.identity.establish()
        store = FaultyStore(posix)
        let st = try FileStat.of(path: dir)
        // The engine opens each file for writing by handle on the filesystem's root.
        let root = try FileDescriptor.open(dir, [.directory])
        fs = ManagedFilesystem(path: dir, device: st.device, rootFD: root.rawValue, type: "ext4", store: store)
        recorder = AnswerRecorder()
    }

    override func tearDown() {
        _ = engine?.stop(drainSeconds: 5)
        engine = nil
        if let root = fs?.rootFD, root >= 0 { close(root) }
        if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) }
    }

    // MARK: Helpers

    /// `started` false: the caller starts it, so events can queue before any is answered.
    func makeEngine(timeoutSeconds: Int64 = 30, threads: Int = 2, started: Bool = true) -> RecallEngine {
        var config = Config()
        config.recallTimeoutSeconds = timeoutSeconds
        config.recallThreads = threads
        let e = RecallEngine(group: FanotifyGroup(fd: -1), filesystems: ManagedFilesystems([fs]), locks: InodeLocks(),
                             config: config, log: Logger(label: "test"))
        if started { e.start() }
        engine = e
        return e
    }

    /// Writes `size` random bytes, archives them into the store and releases every block
    /// (marker first, then holes), as hsmd's release does. Returns path and content.
    func releasedFile(_ name: String, size: Int) throws -> (String, [UInt8]) {
        let path = dir + "/" + name
        let data = (0..<size).map { _ in UInt8.random(in: 0...255) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(data)))
        let fd = try FileDescriptor.open(path, [.readWrite])
        defer { fd.close() }
        let st = try fd.stat()
        let record = try store.put(fd, as: ObjectID.random(), stat: st, blockShift: Self.blockShift, originalPath: path, xattrs: [:])
        try store.makeDurable()
        var marker = Marker(object: record.object, size: st.size, mtimeNs: st.mtimeNs, blockShift: Self.blockShift)
        for b in 0..<marker.offline.count { marker.offline[b] = true }
        marker.releasedBlocks = UInt32(marker.offline.count)
        try fd.setXattr(Marker.xattrName, MarkerCodec.encode(marker))
        try fd.punchHole(offset: 0, length: Int64((size + 4095) / 4096 * 4096))
        try fd.setModificationTime(st.mtimeNs)
        return (path, data)
    }

    /// An event for `range` of `path`, answered to the recorder. Its fd stands in for the
    /// event fd, read-only like the kernel's: the engine writes through its own.
    @discardableResult
    func submit(_ path: String, _ range: Range<Int64>, to engine: RecallEngine, atOpen: Bool = false) throws -> Int32 {
        let fd = try FileDescriptor.open(path, [.readOnly])
        let key = try fd.stat().inodeKey
        recorder.watch(fd.rawValue, path: path, range: range)
        let event = PermissionEvent(number: fd.rawValue, pid: getpid(), group: recorder, log: nil, slot: -1)
        engine.submit(PendingEvent(event, range: AccessRange(offset: range.lowerBound, count: range.upperBound - range.lowerBound),
                                   atOpen: atOpen, filesystem: fs), key: key)
        return fd.rawValue
    }

    func marker(_ path: String) throws -> Marker? {
        try Xattr.get(path: path, Marker.xattrName).map { try MarkerCodec.decode($0) }
    }

    func read(_ path: String, _ range: Range<Int>) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, [.readOnly])
        defer { fd.close() }
        var out = [UInt8](repeating: 0, count: range.count)
        let n = try out.withUnsafeMutableBytes { try fd.read(into: $0, at: Int64(range.lowerBound)) }
        return Array(out[0..<n])
    }

    // MARK: Outcomes

    func testASuccessfulRecallAllowsOnlyOnceTheBytesAreIn() throws {
        let (path, data) = try releasedFile("ok.bin", size: 3 * Self.block + 100)
        let engine = makeEngine()
        try submit(path, 1_500_000..<1_504_096, to: engine)
        let answers = recorder.wait(count: 1)
        XCTAssertEqual(answers.map(\.response), [.allow])
        XCTAssertEqual(answers.first?.bytesWereIn, true, "allowed before the range was back")
        // A random access brings back the pages it touches (format 2 records: chunk
        // checksums); its block stays offline while it has holes that should hold data.
        XCTAssertEqual(try read(path, 1_500_000..<1_504_096), Array(data[1_500_000..<1_504_096]))
        _ = engine.stop(drainSeconds: 5)
        let m = try XCTUnwrap(try marker(path))
        XCTAssertTrue(m.offline[1], "a partly recalled block stays offline")
        XCTAssertTrue(m.offline[0] && m.offline[2], "blocks not asked for stay offline")
        // The partial last block comes back with any access (AccessPlan: an O_APPEND write
        // reports the fd's position, not the end of file it rewrites).
        XCTAssertFalse(m.offline[3], "the block holding the end of the file is local")
    }

    /// A worker keeps its block buffer from one recall to the next (WorkerBuffer): what a
    /// recall of one file left in it must never reach the next file.
    func testAWorkersReusedBufferGivesEachFileOnlyItsOwnBytes() throws {
        // big's second block holds its end of file, so it comes back whole, through the
        // worker's buffer, filling nearly all of it.
        let (big, bigData) = try releasedFile("big.bin", size: 2 * Self.block - 10)
        let (small, smallData) = try releasedFile("small.bin", size: 5000)
        let (empty, _) = try releasedFile("tiny.bin", size: 1)
        let engine = makeEngine(threads: 1)
        try submit(big, Int64(Self.block)..<Int64(Self.block + 4096), to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.allow])
        try submit(small, 0..<4096, to: engine)
        try submit(empty, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 3).map(\.response), [.allow, .allow, .allow])
        _ = engine.stop(drainSeconds: 5)
        XCTAssertEqual(try read(big, Self.block..<(2 * Self.block - 10)), Array(bigData[Self.block..<(2 * Self.block - 10)]))
        XCTAssertEqual(try read(small, 0..<Self.block), smallData, "the small file has its own bytes and size")
        XCTAssertEqual(try FileStat.of(path: empty).size, 1)
        XCTAssertEqual(try XCTUnwrap(try marker(small)).offline.isEmpty, true)
    }

    func testAMissingObjectIsDeniedWithEIOAndMarkedDamaged() throws {
        let (path, _) = try releasedFile("missing.bin", size: 2 * Self.block)
        let m = try XCTUnwrap(try marker(path))
        try FileManager.default.removeItem(atPath: posix!.dataPath(m.object))
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.deny(errno: EIO)])
        _ = engine.stop(drainSeconds: 5)
        XCTAssertTrue(try XCTUnwrap(try marker(path)).flags.contains(.objectDamaged))
    }

    /// A released file of three blocks whose middle block's bytes are all back in the file
    /// (mtime put back, marker unchanged), and whose object's data is gone from the store.
    func releasedFileWithBlockOneLocalAndTheObjectGone(_ name: String) throws -> (String, [UInt8], Marker) {
        let (path, data) = try releasedFile(name, size: 3 * Self.block)
        let before = try XCTUnwrap(try marker(path))
        let w = try FileDescriptor.open(path, [.readWrite])
        try w.write(Array(data[Self.block..<2 * Self.block]), at: Int64(Self.block))
        try w.setModificationTime(before.mtimeNs)
        w.close()
        try FileManager.default.removeItem(atPath: posix!.dataPath(before.object))
        return (path, data, before)
    }

    /// A block the marker calls offline whose bytes are all in the file (a recall's data
    /// made durable just before a crash, its marker not written yet) needs nothing from
    /// the store: served with the object gone, and resident from then on.
    func testAnOfflineBlockWhoseBytesAreAllLocalIsServedWithoutTheStore() throws {
        let (path, data, _) = try releasedFileWithBlockOneLocalAndTheObjectGone("local.bin")
        let engine = makeEngine()
        try submit(path, Int64(Self.block)..<Int64(Self.block + 4096), to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.allow])
        _ = engine.stop(drainSeconds: 5)
        let m = try XCTUnwrap(try marker(path))
        XCTAssertFalse(m.offline[1], "a block with nothing missing is resident")
        XCTAssertTrue(m.offline[0] && m.offline[2], "blocks not asked for stay offline")
        XCTAssertFalse(m.flags.contains(.objectDamaged))
        XCTAssertEqual(try read(path, Self.block..<2 * Self.block), Array(data[Self.block..<2 * Self.block]))
    }

    /// The marker after a whole-file recall at open (RecallSettle): written only while no
    /// other process has the file open, and from what is local alone: a block a release
    /// punched since stays offline and nothing is read from the store.
    func testSettleWaitsForOtherOpensAndReadsNothingFromTheStore() throws {
        let (path, _, before) = try releasedFileWithBlockOneLocalAndTheObjectGone("settle.bin")
        let engine = makeEngine()
        defer { _ = engine.stop(drainSeconds: 5) }
        let fd = try FileDescriptor.open(path, [.readWrite])
        defer { fd.close() }
        let key = try fd.stat().inodeKey
        let other = try FileDescriptor.open(path, [.readOnly])
        XCTAssertFalse(engine.locks.withLock(key) { engine.settle(fd, key: key, store: store) }, "open elsewhere: no marker yet")
        XCTAssertEqual(try marker(path), before)
        other.close()
        XCTAssertTrue(engine.locks.withLock(key) { engine.settle(fd, key: key, store: store) })
        let m = try XCTUnwrap(try marker(path))
        XCTAssertEqual(m.offline.setIndices(in: 0..<3), [0, 2], "only the whole block becomes resident")
        XCTAssertFalse(m.flags.contains(.objectDamaged), "the store was not read")
        XCTAssertEqual(try fd.dataExtents(in: 0..<Int64(3 * Self.block)), [Int64(Self.block)..<Int64(2 * Self.block)])
    }

    func testACorruptBlockIsDeniedAndNothingOfItIsWritten() throws {
        let (path, _) = try releasedFile("corrupt.bin", size: 2 * Self.block)
        let m = try XCTUnwrap(try marker(path))
        let object = try FileDescriptor.open(posix!.dataPath(m.object), [.readWrite])
        try object.write([0xff, 0x00, 0xff], at: 100)
        object.close()
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.deny(errno: EIO)])
        _ = engine.stop(drainSeconds: 5)
        let fd = try FileDescriptor.open(path, [.readOnly])
        defer { fd.close() }
        XCTAssertEqual(try fd.dataExtents(in: 0..<Int64(Self.block)), [], "a block failing its checksum must stay a hole")
        XCTAssertTrue(try XCTUnwrap(try marker(path)).offline[0])
    }

    func testATimeoutIsDeniedWithEIOOnceEvenWhenTheRecallEndsLater() throws {
        let (path, _) = try releasedFile("slow.bin", size: Self.block)
        store.delayMicros.store(2_500_000, ordering: .relaxed)
        let engine = makeEngine(timeoutSeconds: 1)
        try submit(path, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 1, timeout: 10).map(\.response), [.deny(errno: EIO)])
        _ = engine.stop(drainSeconds: 10)
        XCTAssertEqual(recorder.all.count, 1, "the worker finishing later must not answer again")
    }

    func testAFileThatCannotBeOpenedForWritingByHandleIsDeniedWithEIO() throws {
        let (path, _) = try releasedFile("nowrite.bin", size: Self.block)
        // The event fd is read-only; the writable fd comes from the handle, which names
        // nothing on this "private mount" (procfs decodes no handles).
        let proc = try FileDescriptor.open("/proc", [.directory])
        defer { proc.close() }
        fs = ManagedFilesystem(path: dir, device: fs.device, rootFD: fs.rootFD, privateRootFD: proc.rawValue, type: "ext4", store: store)
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.deny(errno: EIO)])
        _ = engine.stop(drainSeconds: 5)
        let fd = try FileDescriptor.open(path, [.readOnly])
        defer { fd.close() }
        XCTAssertEqual(try fd.dataExtents(in: 0..<Int64(Self.block)), [], "nothing was written")
    }

    func testADamagedMarkerIsDeniedWithEIO() throws {
        let (path, _) = try releasedFile("damaged.bin", size: Self.block)
        let fd = try FileDescriptor.open(path, [.readWrite])
        try fd.setXattr(Marker.xattrName, [0x48, 0x53, 0x4d, 0x31, 0xff, 0xff])
        fd.close()
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.deny(errno: EIO)])
    }

    func testAMarkerRemovedBeforeTheRecallIsAnsweredNotLeftHanging() throws {
        let (path, _) = try releasedFile("gone.bin", size: Self.block)
        let fd = try FileDescriptor.open(path, [.readWrite])
        try fd.removeXattr(Marker.xattrName)
        fd.close()
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        // No marker: nothing is offline as far as anyone can know.
        XCTAssertEqual(recorder.wait(count: 1, timeout: 5).map(\.response), [.allow])
    }

    func testATruncatedFileGetsNoOldDataBackPastItsEnd() throws {
        let (path, data) = try releasedFile("cut.bin", size: 3 * Self.block)
        let cut = Self.block + Self.block / 2
        XCTAssertEqual(truncate(path, off_t(cut)), 0)
        let engine = makeEngine()
        // An access past the new end (it may be about to extend the file).
        try submit(path, Int64(2 * Self.block)..<Int64(2 * Self.block + 4096), to: engine)
        XCTAssertEqual(recorder.wait(count: 1).map(\.response), [.allow])
        _ = engine.stop(drainSeconds: 5)
        let m = try XCTUnwrap(try marker(path))
        XCTAssertEqual(m.offline.setIndices(in: 2..<m.offline.count), [], "offline bits past the end are dropped")
        XCTAssertFalse(m.offline[1], "the block holding the end came back")
        XCTAssertEqual(try read(path, Self.block..<cut), Array(data[Self.block..<cut]))
        XCTAssertEqual(truncate(path, off_t(3 * Self.block)), 0)
        XCTAssertEqual(try read(path, cut..<3 * Self.block), [UInt8](repeating: 0, count: 3 * Self.block - cut),
                       "what was cut off stays cut off")
    }

    func testAStopDuringARecallStillAnswersItOnceWithTheBytesIn() throws {
        let (path, data) = try releasedFile("stop.bin", size: Self.block)
        store.delayMicros.store(800_000, ordering: .relaxed)
        let engine = makeEngine()
        try submit(path, 0..<4096, to: engine)
        usleep(200_000)
        let left = engine.stop(drainSeconds: 0)
        XCTAssertEqual(left, 1, "the recall was under way")
        let answers = recorder.wait(count: 1, timeout: 10)
        XCTAssertEqual(answers.map(\.response), [.allow])
        XCTAssertEqual(answers.first?.bytesWereIn, true)
        XCTAssertEqual(try read(path, 0..<4096), Array(data[0..<4096]))
        usleep(300_000)
        XCTAssertEqual(recorder.all.count, 1)
    }

    func testManyConcurrentEventsAreEachAnsweredExactlyOnce() throws {
        let files = try (0..<4).map { try releasedFile("many\($0).bin", size: 2 * Self.block) }
        // Every event queued before the workers start: an answered event's fd closes, and
        // a later event could get its number, which would look like a second answer.
        let engine = makeEngine(started: false)
        var numbers: [Int32] = []
        for round in 0..<5 {
            for (path, _) in files {
                let off = Int64((round % 2) * Self.block)
                numbers.append(try submit(path, off..<off + 4096, to: engine))
            }
        }
        XCTAssertEqual(Set(numbers).count, numbers.count)
        engine.start()
        let answers = recorder.wait(count: numbers.count, timeout: 20)
        XCTAssertEqual(answers.count, numbers.count)
        XCTAssertEqual(Set(answers.map(\.number)).count, numbers.count, "one answer per event")
        XCTAssertTrue(answers.allSatisfy { $0.response == .allow && $0.bytesWereIn })
        usleep(300_000)
        XCTAssertEqual(recorder.all.count, numbers.count)
    }

    func testAnEventDroppedUnansweredIsDeniedNotAllowed() throws {
        let fd = try FileDescriptor.open("/dev/null", [.readOnly])
        do {
            let event = PermissionEvent(number: fd.rawValue, pid: getpid(), group: recorder, log: nil, slot: -1)
            _ = event
        }
        XCTAssertEqual(recorder.all.map(\.response), [.deny(errno: EIO)])
        XCTAssertEqual(fcntl(fd.rawValue, F_GETFD), -1, "its fd is closed after the answer")
    }
}

/// Records answers instead of writing them to a fanotify group. For watched events it
/// checks, at the moment of the answer, whether the range's bytes are already in the file
/// (read through another fd, since the event's own may be written to concurrently).
final class AnswerRecorder: EventResponder {
    struct Answer: Sendable {
        let number: Int32
        let response: FanotifyResponse
        let bytesWereIn: Bool
    }
    private struct Watched: Sendable { let path: String; let range: Range<Int64> }
    private let answers = Mutex<[Answer]>([])
    private let watched = Mutex<[Int32: Watched]>([:])

    func watch(_ number: Int32, path: String, range: Range<Int64>) {
        watched.withLock { $0[number] = Watched(path: path, range: range) }
    }

    func respondOrFallBack(to eventFD: Int32, _ response: FanotifyResponse) -> Result<FanotifyResponse, SystemError> {
        var inFile = false
        if let w = watched.withLock({ $0.removeValue(forKey: eventFD) }) {
            inFile = Self.rangeHasNoHoles(w.path, w.range)
        }
        answers.withLock { $0.append(Answer(number: eventFD, response: response, bytesWereIn: inFile)) }
        return .success(response)
    }

    private static func rangeHasNoHoles(_ path: String, _ range: Range<Int64>) -> Bool {
        guard let fd = try? FileDescriptor.open(path, [.readOnly]) else { return false }
        defer { fd.close() }
        guard let size = try? fd.stat().size else { return false }
        // Past the end there is nothing to bring back.
        if range.lowerBound >= size { return true }
        let r = range.lowerBound..<min(range.upperBound, size)
        guard let extents = try? fd.dataExtents(in: r) else { return false }
        return extents.count == 1 && extents[0] == r
    }

    var all: [Answer] { answers.withLock { $0 } }

    func wait(count: Int, timeout: Double = 10) -> [Answer] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let a = all
            if a.count >= count { return a }
            usleep(10_000)
        }
        return all
    }
}

/// A store that forwards to another and can be told to be slow.
final class FaultyStore: ObjectStore {
    let base: any ObjectStore
    let delayMicros = Atomic<UInt32>(0)

    init(_ base: any ObjectStore) { self.base = base }

    var name: String { base.name }
    func put(_ source: FileDescriptor, as id: ObjectID, stat: FileStat, blockShift: UInt8, originalPath: String,
             xattrs: [String: [UInt8]]) throws(StoreError) -> ObjectRecord {
        try base.put(source, as: id, stat: stat, blockShift: blockShift, originalPath: originalPath, xattrs: xattrs)
    }
    func storedRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord { try base.storedRecord(id) }
    func makeDurable() throws(StoreError) { try base.makeDurable() }
    func record(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        let d = delayMicros.load(ordering: .relaxed)
        if d > 0 { usleep(d) }
        return try base.record(id)
    }
    func reader(for record: ObjectRecord) throws(StoreError) -> ObjectReader { try base.reader(for: record) }
    func delete(_ id: ObjectID) throws(StoreError) { try base.delete(id) }
    func contains(_ id: ObjectID) -> Bool { base.contains(id) }
    func list() throws(StoreError) -> [ObjectID] { try base.list() }
    func healthProblem(readingIdentity: Bool) -> String? { base.healthProblem(readingIdentity: readingIdentity) }
}
