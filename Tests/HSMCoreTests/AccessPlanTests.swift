import XCTest
import TestSupport
@testable import HSMCore
import HSMKernel

final class AccessRangeTests: XCTestCase {
    func testCountZeroMeansToTheEndOfTheFile() {
        XCTAssertEqual(AccessRange(offset: 0, count: 0).bytes(fileSize: 8 << 20), 0..<(8 << 20))
        XCTAssertEqual(AccessRange(offset: 4096, count: 0).bytes(fileSize: 10_000), 4096..<10_000)
        XCTAssertEqual(AccessRange(offset: 20_000, count: 0).bytes(fileSize: 10_000), 20_000..<20_000, "past the end: nothing")
        XCTAssertTrue(AccessRange.wholeFile.toEndOfFile)
        XCTAssertEqual(AccessRange(offset: 8192, count: 4096).bytes(fileSize: 0), 8192..<12288)
        XCTAssertEqual(AccessRange(offset: 4096, count: 0).description, "4096..EOF")
    }

    func testHugeOrNegativeValuesDoNotTrap() {
        XCTAssertEqual(AccessRange(offset: Int64.max - 1, count: 100).bytes(fileSize: 0).upperBound, Int64.max)
        XCTAssertEqual(AccessRange(offset: -5, count: -1), AccessRange(offset: 0, count: 0))
    }
}

final class AccessPlanTests: XCTestCase {
    private let mib: Int64 = 1 << 20

    /// 8 MiB file, 1 MiB blocks, all offline.
    private func released(size: Int64 = 8 << 20, offline: [Int]? = nil) -> Marker {
        let count = Int((size + mib - 1) / mib)
        return makeMarker(size: size, shift: 20, offline: offline ?? Array(0..<count))
    }

    func testAPlainEventNeedsItsRangeOnlyWhenTheEndIsOnABlockBoundary() {
        let m = released()
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 8192, count: 4096), .event, fileSize: 8 * mib, marker: m), [0])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: mib - 4096, count: 8192), .event, fileSize: 8 * mib, marker: m), [0, 1])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 3 * mib, count: 2 * mib), .event, fileSize: 8 * mib, marker: m), [3, 4])
    }

    func testAnEventAlsoNeedsTheBlockHoldingAnUnalignedEnd() {
        // O_APPEND writes report the fd's position (0 here), not the end they write at.
        let size: Int64 = 5_000_000
        let m = released(size: size)
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 4096), .event, fileSize: size, marker: m), [0, 4])
        // A write past the end: only the old last block.
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 6_000_000, count: 4096), .event, fileSize: size, marker: m), [4])
        // A request (hsmctl recall) wants exactly its range.
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 4096), .request, fileSize: size, marker: m), [0])
        // The last block already local: nothing more.
        let partial = released(size: size, offline: [0, 1, 2, 3])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 4096), .event, fileSize: size, marker: partial), [0])
    }

    func testCountZeroNeedsEverythingFromTheOffset() {
        let m = released()
        XCTAssertEqual(AccessPlan.neededBlocks(.wholeFile, .event, fileSize: 8 * mib, marker: m), Array(0..<8), "FICLONE")
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 3 * mib, count: 0), .event, fileSize: 8 * mib, marker: m), Array(3..<8))
        XCTAssertEqual(AccessPlan.neededBlocks(nil, .event, fileSize: 8 * mib, marker: m), Array(0..<8), "no range record: the whole file")
    }

    func testAShiftingEventNeedsEverythingFromItsOffsetToTheEnd() {
        let m = released()
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: mib, count: mib), .shiftingEvent, fileSize: 8 * mib, marker: m), Array(1..<8))
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 4096, count: 4096), .shiftingEvent, fileSize: 8 * mib, marker: m), Array(0..<8))
        let some = released(offline: [0, 2, 6])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: mib, count: mib), .shiftingEvent, fileSize: 8 * mib, marker: some), [2, 6])
    }

    func testATruncationNeedsNothingExceptTheOldEndWhenItExtends() {
        let size: Int64 = 5_000_000
        let m = released(size: size)
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 3 * mib, count: 0), .truncation, fileSize: size, marker: m), [], "cut")
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 0), .truncation, fileSize: size, marker: m), [], "to zero")
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 12 * mib, count: 0), .truncation, fileSize: size, marker: m), [4], "extend")
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 12 * mib, count: 0), .truncation, fileSize: 8 * mib, marker: released()), [],
                       "an end on a block boundary leaves no partial block")
    }

    func testBlocksPastTheCurrentEndAreNeverNeeded() {
        let m = released()
        // Cut to 3.5 MiB: blocks 4-7 are gone; block 3 holds the new end.
        let size = 3 * mib + mib / 2
        XCTAssertEqual(AccessPlan.neededBlocks(.wholeFile, .event, fileSize: size, marker: m), [0, 1, 2, 3])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 6 * mib, count: 4096), .event, fileSize: size, marker: m), [3])
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 4096), .request, fileSize: size, marker: m), [0, 3],
                       "a request in a cut file also brings the new last block back, so that past the end there are only holes")
        XCTAssertEqual(AccessPlan.neededBlocks(.wholeFile, .event, fileSize: 0, marker: m), [])
    }

    func testAFileGrownPastItsArchivedSizeNeedsNoEndBlock() {
        let m = released(size: 5_000_000)
        XCTAssertEqual(AccessPlan.neededBlocks(AccessRange(offset: 0, count: 4096), .event, fileSize: 9_000_000, marker: m), [0])
        XCTAssertEqual(AccessPlan.neededBlocks(.wholeFile, .shiftingEvent, fileSize: 9_000_000, marker: m), Array(0..<5))
    }

    func testTheIntentMattersOnlyWhenTheAnswersDiffer() {
        let m = released()
        let r = AccessRange(offset: mib, count: 4096)
        XCTAssertTrue(AccessPlan.intentMatters(r, fileSize: 8 * mib, marker: m, canShift: true))
        XCTAssertFalse(AccessPlan.intentMatters(r, fileSize: 8 * mib, marker: m, canShift: false), "btrfs: no shifting")
        XCTAssertFalse(AccessPlan.intentMatters(r, fileSize: 8 * mib, marker: released(offline: [1]), canShift: true),
                       "nothing offline after the range")
        XCTAssertTrue(AccessPlan.intentMatters(AccessRange(offset: 0, count: 0), fileSize: 8 * mib, marker: m, canShift: false),
                      "count 0: a truncation needs nothing, a clone everything")
        XCTAssertFalse(AccessPlan.intentMatters(AccessRange(offset: 9 * mib, count: 0), fileSize: 8 * mib, marker: m, canShift: true),
                       "count 0 past an aligned end: nothing either way")
    }

    func testTheConservativeIntentIsAlwaysASuperset() {
        var rng = SeededGenerator(seed: 10)
        let intents: [AccessIntent] = [.event, .shiftingEvent, .truncation]
        for _ in 0..<2000 {
            let size = Int64.random(in: 1...(12 * mib), using: &rng)
            let archived = Int64.random(in: 1...(12 * mib), using: &rng)
            let blocks = Int((archived + mib - 1) / mib)
            let m = makeMarker(size: archived, shift: 20, offline: (0..<blocks).filter { _ in Bool.random(using: &rng) })
            let r = AccessRange(offset: Int64.random(in: 0...(13 * mib), using: &rng),
                                count: Bool.random(using: &rng) ? 0 : Int64.random(in: 1...(2 * mib), using: &rng))
            for canShift in [false, true] {
                let worst = Set(AccessPlan.neededBlocks(r, AccessPlan.conservativeIntent(r, canShift: canShift), fileSize: size, marker: m))
                for intent in intents where intent != .shiftingEvent || canShift {
                    let need = AccessPlan.neededBlocks(r, intent, fileSize: size, marker: m)
                    XCTAssertTrue(Set(need).isSubset(of: worst), "\(r) \(intent) size \(size) archived \(archived)")
                    XCTAssertEqual(need, need.sorted())
                    XCTAssertTrue(need.allSatisfy { m.offline[$0] && Int64($0) * mib < min(size, archived) })
                }
            }
        }
    }
}

final class BlockedThreadsTests: XCTestCase {
    // x86_64 numbers, so the lines below are real ones from tools/probe-range-events.py --who.
    private let n = SyscallNumbers(fallocate: 285, ftruncate: 77, truncate: 76, ioctl: 16, ioUringEnter: 426,
                                   copyFileRange: 326, madvise: 28)
    private let write = "1 0xc 0x7f36dc53db20 0x3 0x0 0x0 0x0 0x7ffe4ded2f98 0x7f36dca319d0"
    private let futex = "202 0x7fbc08000b70 0x189 0x0 0x0 0x0 0xffffffff 0x7ffc7c1955e0 0x7fbc0e5cd690"
    private let insert = "285 0x5 0x20 0x100000 0x100000 0x0 0x0 0x7fbc0e5cd690 0x7fbc0e5cd6a0"
    private let punch = "285 0x5 0x3 0x100000 0x100000 0x0 0x0 0x7fbc0e5cd690 0x7fbc0e5cd6a0"
    private let collapse = "285 0x5 0x8 0x100000 0x100000 0x0 0x0 0x7fbc0e5cd690 0x7fbc0e5cd6a0"
    private let ftruncate = "77 0x5 0x300000 0x7ffc2e5d4218 0x0 0x0 0x0 0x7ffc2e5d4218 0x7f36dca319d0"
    private let clone = "16 0x9 0x40049409 0x8 0x0 0x0 0x0 0x7ffc2e5d41a0 0x7f36dca319d0"
    private let uringWorker = "426 0x4 0x1 0x1 0x1 0x0 0x0 0x0 0x0"

    private func states(_ lines: [String?]) -> [ThreadState] { lines.map { ThreadState(line: $0) } }
    private let page = AccessRange(offset: 1 << 20, count: 1 << 20)

    func testParsesTheKernelsLines() {
        XCTAssertEqual(ThreadState(line: "running"), .running)
        XCTAssertEqual(ThreadState(line: "-1 0x7ffc7c1955e0 0x7fbc0e5cd690\n"), .noSyscall(pc: 0x7fbc0e5cd690))
        XCTAssertEqual(ThreadState(line: insert), .syscall(number: 285, args: [5, 0x20, 0x100000, 0x100000, 0, 0], pc: 0x7fbc0e5cd6a0))
        XCTAssertEqual(ThreadState(line: nil), .unknown)
        XCTAssertEqual(ThreadState(line: ""), .unknown)
        XCTAssertEqual(ThreadState(line: "285 0x5"), .unknown)
        XCTAssertEqual(ThreadState(line: "285 5 6 7 8 9 10 11 12"), .unknown, "arguments are hex with 0x")
        XCTAssertEqual(ThreadState(line: "running\n"), .running)
        XCTAssertEqual(ThreadState(line: "285 0x1ffffffffffffffff 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), .unknown, "overflow")
        XCTAssertEqual(ThreadState(line: "285 0xg 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), .unknown)
        XCTAssertEqual(ThreadState(line: "-2 0x0 0x0"), .unknown)
        XCTAssertEqual(ThreadState(line: "0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), .syscall(number: 0, args: [0, 0, 0, 0, 0, 0], pc: 0),
                       "a kernel thread: read(0) with instruction pointer 0")
    }

    func testAPlainWriteIsAnEventThatCannotCut() {
        XCTAssertEqual(BlockedThreads.classify(page, states: states([write]), canShift: true, numbers: n),
                       EventNature(intent: .event, mayCut: false, mayMakeHoles: false))
        XCTAssertEqual(BlockedThreads.classify(page, states: states([futex, write, "running"]), canShift: true, numbers: n),
                       EventNature(intent: .event, mayCut: false, mayMakeHoles: false))
        XCTAssertEqual(BlockedThreads.classify(page, states: states([punch]), canShift: true, numbers: n).intent, .event)
    }

    /// Only an event no thread of which can make holes may leave a block partly recalled.
    func testWhatMayMakeHoles() {
        let pread = "17 0x3 0x7f0000000000 0x1000 0x3000000 0x0 0x0 0x7ffe4ded2f98 0x7f36dca319d0"
        let copyRange = "326 0x3 0x0 0x4 0x0 0x10000 0x0 0x7ffe4ded2f98 0x7f36dca319d0"
        let madvise = "28 0x7f0000000000 0x100000 0x9 0x0 0x0 0x0 0x7ffe4ded2f98 0x7f36dca319d0"
        let fault = "-1 0x7ffc7c1955e0 0x7fbc0e5cd690"
        for (lines, holes) in [([pread], false), ([futex, pread, "running"], false), ([fault], false), ([write], false),
                               ([pread, punch], true), ([copyRange], true), ([madvise], true), ([clone], true),
                               ([ftruncate], true), ([uringWorker], true), ([nil], true),
                               ([pread, "0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0"], true)] as [([String?], Bool)] {
            XCTAssertEqual(BlockedThreads.classify(page, states: states(lines), canShift: true, numbers: n).mayMakeHoles, holes, "\(lines)")
            XCTAssertEqual(BlockedThreads.classify(page, states: states(lines), canShift: false, numbers: n).mayMakeHoles, holes, "\(lines)")
        }
        XCTAssertTrue(BlockedThreads.classify(page, states: nil, canShift: true, numbers: n).mayMakeHoles)
        XCTAssertTrue(EventNature(intent: .event, mayCut: false).mayMakeHoles, "unless known otherwise")
    }

    func testAnInsertOrCollapseAnywhereInTheProcessShifts() {
        XCTAssertEqual(BlockedThreads.classify(page, states: states([futex, insert]), canShift: true, numbers: n),
                       EventNature(intent: .shiftingEvent, mayCut: false))
        XCTAssertEqual(BlockedThreads.classify(page, states: states([collapse]), canShift: true, numbers: n),
                       EventNature(intent: .shiftingEvent, mayCut: true))
        XCTAssertEqual(BlockedThreads.classify(page, states: states([insert]), canShift: false, numbers: n).intent, .event,
                       "btrfs refuses insert-range after the event")
        let unknownMode = "285 0x5 0x100 0x0 0x1000 0x0 0x0 0x7f 0x7f"
        XCTAssertEqual(BlockedThreads.classify(page, states: states([unknownMode]), canShift: true, numbers: n).intent, .shiftingEvent)
    }

    func testWhatCannotBeSeenIsTheWorstCase() {
        for lines in [[nil], [write, nil], [uringWorker], [write, uringWorker]] as [[String?]] {
            XCTAssertEqual(BlockedThreads.classify(page, states: states(lines), canShift: true, numbers: n),
                           EventNature(intent: .shiftingEvent, mayCut: true), "\(lines)")
        }
        XCTAssertEqual(BlockedThreads.classify(page, states: nil, canShift: true, numbers: n), EventNature(intent: .shiftingEvent, mayCut: true))
        XCTAssertEqual(BlockedThreads.classify(page, states: [], canShift: false, numbers: n), EventNature(intent: .event, mayCut: true))
        XCTAssertEqual(BlockedThreads.classify(.wholeFile, states: nil, canShift: true, numbers: n), EventNature(intent: .event, mayCut: true),
                       "count 0 unseen: everything to the end")
    }

    func testCountZeroIsATruncationOnlyWhenNothingElseCouldHaveRaisedIt() {
        let toEnd = AccessRange(offset: 3 << 20, count: 0)
        XCTAssertEqual(BlockedThreads.classify(toEnd, states: states([ftruncate]), canShift: true, numbers: n),
                       EventNature(intent: .truncation, mayCut: true))
        XCTAssertEqual(BlockedThreads.classify(toEnd, states: states([futex, ftruncate]), canShift: false, numbers: n).intent, .truncation)
        XCTAssertEqual(BlockedThreads.classify(toEnd, states: states([clone]), canShift: true, numbers: n),
                       EventNature(intent: .event, mayCut: false), "FICLONE: the whole source")
        XCTAssertEqual(BlockedThreads.classify(toEnd, states: states([ftruncate, clone]), canShift: true, numbers: n).intent, .event)
        XCTAssertEqual(BlockedThreads.classify(toEnd, states: states([ftruncate, nil]), canShift: true, numbers: n).intent, .event)
    }
}
