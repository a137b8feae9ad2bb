import HSMCore
import HSMKernel
import XCTest

/// The rules that tie an event a killed hsmd read and did not record to a file, from the
/// threads of the process that raised it (docs/ARCHITECTURE.md, "Restart without harm").
final class UnrecordedEventMatchTests: XCTestCase {
    private let x = InodeKey(device: 7, inode: 100)
    private let y = InodeKey(device: 7, inode: 200)
    /// What read(fd, buf, 1 MiB) at position 12345 raises: the page-rounded range.
    private let readRange = AccessRange(offset: 12288, count: (12345 + (1 << 20) + 4095) / 4096 * 4096 - 12288)
    private var reader: StoppedAccess { .range(file: x, start: 12345, count: 1 << 20) }

    func testTheOneThreadThatAccessesTheRangeNamesTheFile() {
        XCTAssertEqual(UnrecordedEventMatch.match(range: readRange, threads: [reader]), .file(x, thread: 0))
        // A thread in an open waits on an open-permission event: it does not count.
        XCTAssertEqual(UnrecordedEventMatch.match(range: readRange, threads: [.opening, reader]), .file(x, thread: 1))
        // Two threads reading the same range of the same file: still that file.
        XCTAssertEqual(UnrecordedEventMatch.match(range: readRange, threads: [reader, reader]), .file(x, thread: 0))
    }

    func testTheRangeMustBeExactlyWhatTheAccessRaises() {
        for wrong in [AccessRange(offset: 8192, count: readRange.count + 4096),  // not the start's page
                      AccessRange(offset: 12288, count: readRange.count - 4096), // short
                      AccessRange(offset: 12288, count: readRange.count + 4096)] // long
        {
            guard case .unidentified = UnrecordedEventMatch.match(range: wrong, threads: [reader]) else {
                return XCTFail("\(wrong) matched a read it is not")
            }
        }
        // pwrite(3 B @ 300000) raises 299008+4096 (docs/KERNEL-FACTS.md).
        let write = StoppedAccess.range(file: x, start: 300000, count: 3)
        XCTAssertEqual(UnrecordedEventMatch.match(range: AccessRange(offset: 299008, count: 4096), threads: [write]), .file(x, thread: 0))
        // A count of 0 raises nothing hsmd could tie to it.
        let empty = StoppedAccess.range(file: x, start: 8192, count: 0)
        guard case .unidentified = UnrecordedEventMatch.match(range: AccessRange(offset: 8192, count: 4096), threads: [empty]) else {
            return XCTFail("a zero-byte access matched")
        }
    }

    func testAVectorAccessWithoutItsCountMatchesOnItsStart() {
        let readv = StoppedAccess.range(file: x, start: 2 << 20, count: nil)
        XCTAssertEqual(UnrecordedEventMatch.match(range: AccessRange(offset: 2 << 20, count: 77824), threads: [readv]), .file(x, thread: 0))
        guard case .unidentified = UnrecordedEventMatch.match(range: AccessRange(offset: (2 << 20) + 4096, count: 4096), threads: [readv]) else {
            return XCTFail("a vector read matched a range that does not start at its page")
        }
    }

    func testAnythingInDoubtIsRefused() {
        func refused(_ range: AccessRange?, _ threads: [StoppedAccess], _ why: String, line: UInt = #line) {
            guard case .unidentified(let text) = UnrecordedEventMatch.match(range: range, threads: threads) else {
                return XCTFail("matched", line: line)
            }
            XCTAssertTrue(text.contains(why), text, line: line)
        }
        // Two files at that range: either could be the event's.
        refused(readRange, [reader, .range(file: y, start: 12345, count: 1 << 20)], "more than one file")
        // A thread whose access cannot be seen may be the event's own, on another file.
        refused(readRange, [reader, .unknown], "cannot see")
        refused(readRange, [.unknown, reader], "cannot see")
        refused(readRange, [], "no waiting thread")
        refused(readRange, [.opening], "no waiting thread")
        refused(nil, [reader], "an open")
        refused(AccessRange(offset: 8192, count: 0), [.range(file: x, start: 8192, count: nil)], "end of the file")
        // Values at the edges of the types do not trap.
        refused(AccessRange(offset: Int64.max - 4095, count: Int64.max),
                [.range(file: x, start: UInt64.max - 10, count: UInt64.max)], "no waiting thread")
    }

    #if arch(x86_64)
    /// Lines as /proc/PID/task/TID/syscall shows them on x86_64 (tools/probe-range-events.py).
    func testSyscallLinesNameTheirFdAndRange() {
        func request(_ line: String) -> UnrecordedEventMatch.Request {
            UnrecordedEventMatch.request(of: ThreadState(line: line))
        }
        let sp = "0x7ffc2e5d4218 0x7f36dca319d0"
        XCTAssertEqual(request("0 0x5 0x7f8a69bd3020 0x100000 0x0 0x0 0x0 \(sp)"), .file(fd: 5, start: nil, count: 0x100000))
        XCTAssertEqual(request("17 0x5 0x7f8a69bd3020 0x64 0x2000 0x0 0x0 \(sp)"), .file(fd: 5, start: 0x2000, count: 0x64))
        XCTAssertEqual(request("18 0x5 0x7f8a699ddc10 0x3 0x493e0 0x0 0x0 \(sp)"), .file(fd: 5, start: 300000, count: 3))
        XCTAssertEqual(request("19 0x6 0x7f8a699ddc10 0x2 0x0 0x0 0x0 \(sp)"), .file(fd: 6, start: nil, count: nil))
        XCTAssertEqual(request("327 0x6 0x7f8a699ddc10 0x2 0xffffffffffffffff 0x0 0x0 \(sp)"), .file(fd: 6, start: nil, count: nil))
        XCTAssertEqual(request("327 0x6 0x7f8a699ddc10 0x2 0x1000 0x0 0x0 \(sp)"), .file(fd: 6, start: 0x1000, count: nil))
        XCTAssertEqual(request("9 0x0 0x3000 0x1 0x1 0x5 0x1000 \(sp)"), .file(fd: 5, start: 0x1000, count: 0x3000))
        XCTAssertEqual(request("257 0xffffff9c 0x7fb811330370 0x80000 0x0 0x0 0x0 \(sp)"), .opening)
        // fallocate, a futex wait, an fd that is no int, a thread with no user context.
        XCTAssertEqual(request("285 0x5 0x20 0x100000 0x100000 0x0 0x0 \(sp)"), .unknown)
        XCTAssertEqual(request("202 0x7fbc08000b70 0x189 0x0 0x0 0x0 0xffffffff \(sp)"), .unknown)
        XCTAssertEqual(request("0 0xffffffffffffff9c 0x0 0x10 0x0 0x0 0x0 \(sp)"), .unknown)
        XCTAssertEqual(request("0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), .unknown)
        XCTAssertEqual(request("running"), .unknown)
        XCTAssertEqual(request("-1 0x7ffc7c1955e0 0x7fbc0e5cd690"), .unknown)
    }
    #endif
}
