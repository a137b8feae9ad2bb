import XCTest
@testable import HSMCore
import HSMKernel

final class JournalRulesTests: XCTestCase {
    private func epochs(_ spec: [(Int64, Bool)]) -> [JournalEpoch] {
        spec.map { JournalEpoch(epoch: $0.0, started: Double($0.0) * 100, complete: $0.1, reason: $0.1 ? nil : "queue overflow") }
    }

    func testRangeOfCompleteEpochsHasNoProblem() {
        XCTAssertNil(JournalRules.rangeProblem(since: 2, epochs: epochs([(1, false), (2, true), (3, true)])))
        XCTAssertNil(JournalRules.rangeProblem(since: 3, epochs: epochs([(1, true), (2, true), (3, true)])))
    }

    func testAnIncompleteEpochInRangeIsNamedWithItsReason() {
        let p = JournalRules.rangeProblem(since: 1, epochs: epochs([(1, true), (2, false), (3, true)]))
        XCTAssertEqual(p, "epoch 2 is incomplete: queue overflow")
        // The current epoch counts too.
        XCTAssertNotNil(JournalRules.rangeProblem(since: 3, epochs: epochs([(1, true), (2, true), (3, false)])))
    }

    func testEpochsOutsideTheJournalAreProblems() {
        let e = epochs([(4, true), (5, true)])
        XCTAssertTrue(JournalRules.rangeProblem(since: 3, epochs: e)!.contains("predates"))
        XCTAssertTrue(JournalRules.rangeProblem(since: 6, epochs: e)!.contains("has not begun"))
        XCTAssertTrue(JournalRules.rangeProblem(since: 1, epochs: [])!.contains("no epochs"))
        XCTAssertTrue(JournalRules.rangeProblem(since: 4, epochs: epochs([(4, true), (6, true)]))!.contains("epoch 5 is missing"))
    }

    func testVerdictExitCodes() {
        let e = epochs([(1, true), (2, true), (3, true)])
        let changed = JournalRules.verdict(path: "/d", since: 2, epochs: e, pathRecordedIn: [3])
        XCTAssertEqual(changed.answer, .changed)
        XCTAssertEqual(changed.exitCode, 0)
        XCTAssertTrue(changed.reason.hasPrefix("changed:"))
        // A record before the range does not count.
        let unchanged = JournalRules.verdict(path: "/d", since: 2, epochs: e, pathRecordedIn: [1])
        XCTAssertEqual(unchanged.exitCode, 1)
        XCTAssertTrue(unchanged.reason.hasPrefix("unchanged:"))
        // Unknown wins over a record: an incomplete epoch may hide nothing or more.
        let unknown = JournalRules.verdict(path: "/d", since: 1, epochs: epochs([(1, false), (2, true)]), pathRecordedIn: [2])
        XCTAssertEqual(unknown.exitCode, 3)
        XCTAssertTrue(unknown.reason.contains("incomplete"))
        XCTAssertFalse(changed.reason.contains("\n"))
    }

    func testIsUnder() {
        XCTAssertTrue(JournalRules.isUnder("/mnt/a", "/mnt/a"))
        XCTAssertTrue(JournalRules.isUnder("/mnt/a/b", "/mnt/a"))
        XCTAssertFalse(JournalRules.isUnder("/mnt/ab", "/mnt/a"))
        XCTAssertTrue(JournalRules.isUnder("/x", "/"))
    }

    func testCtimeSlackErrsTowardsChanged() {
        let start = 1000.0
        XCTAssertTrue(JournalRules.ctimeWithin(Int64(1000.01 * 1e9), epochStart: start))
        XCTAssertTrue(JournalRules.ctimeWithin(Int64(999.97 * 1e9), epochStart: start), "coarse clock lag is within the slack")
        XCTAssertFalse(JournalRules.ctimeWithin(Int64(999.0 * 1e9), epochStart: start))
    }

    func testStartupMarksUncleanStopsUnwatchedAndReplacedFilesystems() {
        let known = [(path: "/a", fsid: UInt64(1)), (path: "/b", fsid: UInt64(2)), (path: "/c", fsid: UInt64(3))]
        let watched = [(path: "/a", fsid: UInt64(1)), (path: "/c", fsid: UInt64(9))]
        let clean = JournalRules.incompleteAtStart(previousRunUnclean: false, known: known, watched: watched, held: Set(watched.map(\.fsid)), now: "T")
        XCTAssertNil(clean["/a"], "a clean stop with the group kept keeps a watched filesystem's epoch complete")
        XCTAssertTrue(clean["/b"]!.contains("not watched"))
        XCTAssertTrue(clean["/c"]!.contains("different filesystem"))
        let unclean = JournalRules.incompleteAtStart(previousRunUnclean: true, known: known, watched: watched, held: Set(watched.map(\.fsid)), now: "T")
        XCTAssertTrue(unclean["/a"]!.contains("did not stop cleanly"))
        let notHeld = JournalRules.incompleteAtStart(previousRunUnclean: false, known: known, watched: watched, held: [], now: "T")
        XCTAssertTrue(notHeld["/a"]!.contains("not watched between"), "a clean stop without the group kept misses what happened meanwhile")
        // A filesystem new to the journal has nothing to mark.
        XCTAssertTrue(JournalRules.incompleteAtStart(previousRunUnclean: true, known: [], watched: watched, held: [], now: "T").isEmpty)
    }

    func testInodeHandleEncodingRoundTrips() {
        let h = InodeHandle(type: 1, bytes: [1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertEqual(h.encoded.count, 12)
        XCTAssertEqual(InodeHandle(encoded: h.encoded), h)
        XCTAssertNil(InodeHandle(encoded: [1, 0, 0]), "too short")
        XCTAssertNil(InodeHandle(encoded: [UInt8](repeating: 0, count: 4 + 129)), "longer than MAX_HANDLE_SZ")
        XCTAssertNotEqual(InodeHandle(type: 2, bytes: h.bytes), h, "the handle type is part of its identity")
    }

    func testJournalConfigKey() throws {
        let base = "[[store]]\nname = \"t\"\ntype = \"posix\"\npath = \"/s\"\n"
        XCTAssertTrue(try Config.parse(base).journal, "on by default")
        XCTAssertFalse(try Config.parse("journal = false\n" + base).journal)
        XCTAssertThrowsError(try Config.parse("journal = \"yes\"\n" + base)) { e in
            XCTAssertTrue("\(e)".contains("journal"))
        }
    }

    func testJournalRequestsRoundTrip() throws {
        let r = ControlRequest(op: .journalList, paths: ["/m"], since: 4, incremental: nil)
        let back = try ControlCodec.decode(ControlRequest.self, ControlCodec.encode(r))
        XCTAssertEqual(back, r)
        XCTAssertTrue(String(decoding: ControlCodec.encode(r), as: UTF8.self).contains("\"op\":\"journal_list\""))
        let reply = ControlReply(type: .result, changes: [JournalEntry(path: nil, epoch: 3, deleted: true)],
                                 verdict: JournalVerdict(answer: .unknown, reason: "unknown: x"))
        let decoded = try ControlCodec.decode(ControlReply.self, ControlCodec.encode(reply))
        XCTAssertEqual(decoded.changes, reply.changes)
        XCTAssertEqual(decoded.verdict?.exitCode, 3)
    }
}
