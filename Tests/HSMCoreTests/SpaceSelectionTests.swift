import XCTest
@testable import HSMCore
import HSMKernel

/// Watermark arithmetic and which files a pass frees, in which order.
final class SpaceSelectionTests: XCTestCase {
    private let second: Int64 = 1_000_000_000
    private var now: Int64 { 1_700_000_000 * second }
    private let mib: Int64 = 1 << 20

    func testPercentAndBytesToFree() {
        let u = SpaceUsage(usedBytes: 85 * mib, availableBytes: 15 * mib)
        XCTAssertEqual(u.percentUsed, 85, accuracy: 1e-9)
        XCTAssertTrue(u.isAtOrAbove(percent: 85))
        XCTAssertFalse(u.isAtOrAbove(percent: 86))
        XCTAssertTrue(u.isBelow(percent: 86))
        XCTAssertEqual(u.bytesToFree(below: 90), 0)
        // Below 60% of 100 MiB: at most 60 MiB - 1 byte used.
        let need = u.bytesToFree(below: 60)
        XCTAssertEqual(need, 25 * mib + 1)
        XCTAssertTrue(SpaceUsage(usedBytes: u.usedBytes - need, availableBytes: u.availableBytes + need).isBelow(percent: 60))
        XCTAssertFalse(SpaceUsage(usedBytes: u.usedBytes - need + 1, availableBytes: u.availableBytes + need - 1).isBelow(percent: 60))
        XCTAssertEqual(SpaceUsage(usedBytes: 0, availableBytes: 0).percentUsed, 0)
    }

    func testUsageDuringAPassTakesTheMoreAdvancedView() {
        let start = SpaceUsage(usedBytes: 80 * mib, availableBytes: 20 * mib)
        // btrfs: statvfs has not seen the punches yet; the count has.
        let lagging = SpaceUsage.during(start: start, now: start, freed: 30 * mib)
        XCTAssertEqual(lagging, SpaceUsage(usedBytes: 50 * mib, availableBytes: 50 * mib))
        // statvfs ahead of the count (someone deleted files): statvfs.
        let ahead = SpaceUsage(usedBytes: 40 * mib, availableBytes: 60 * mib)
        XCTAssertEqual(SpaceUsage.during(start: start, now: ahead, freed: 10 * mib), ahead)
        // Nonsense counts are clamped.
        XCTAssertEqual(SpaceUsage.during(start: start, now: start, freed: Int64.max).usedBytes, 0)
        XCTAssertEqual(SpaceUsage.during(start: start, now: start, freed: -5), start)
    }

    func testFromStatvfsCountsSaturates() {
        let u = SpaceUsage(fragmentSize: 4096, blocks: 1000, free: 300, available: 250)
        XCTAssertEqual(u.usedBytes, 700 * 4096)
        XCTAssertEqual(u.availableBytes, 250 * 4096)
        let huge = SpaceUsage(fragmentSize: UInt64.max, blocks: UInt64.max, free: 0, available: UInt64.max)
        XCTAssertEqual(huge.usedBytes, Int64.max)
        XCTAssertEqual(SpaceUsage(fragmentSize: 4096, blocks: 10, free: 20, available: 5).usedBytes, 0, "free above blocks is not negative use")
        XCTAssertEqual(huge.bytesToFree(below: 50) > 0, true)
        // The edges of Int64 and of the percent range do not trap.
        let full = SpaceUsage(usedBytes: Int64.max, availableBytes: 0)
        for p in [0, 1, 99, 100, -5] { XCTAssertGreaterThan(full.bytesToFree(below: p), 0, "\(p)") }
        XCTAssertEqual(full.bytesToFree(below: 0), Int64.max)
        XCTAssertEqual(full.bytesToFree(below: 1000), 0, "100% is below 1000%")
    }

    private func stat(size: Int64 = 4 << 20, allocated: Int64? = nil, ageSeconds: Int64) throws -> FileStat {
        var st = try makeStat(size: size, mtimeNs: now - ageSeconds * second, atimeNs: now - ageSeconds * second)
        st.allocatedBytes = allocated ?? size
        return st
    }

    private func classify(_ st: FileStat, path: String = "/d/f", marker: [UInt8]? = nil, policy: MigrationPolicy = MigrationPolicy(),
                          minAge: Int64 = 3600) -> Result<SpaceCandidate, WatermarkRules.Skip> {
        WatermarkRules.classify(path: path, stat: st, markerBytes: marker, policy: policy, minAgeSeconds: minAge, nowNs: now)
    }

    func testMinAgeProtectsRecentFilesWhateverThePolicy() throws {
        // The policy says 1 minute, min_age says 1 hour: 10 minutes old is too recent.
        let p = MigrationPolicy(olderThanSeconds: 60)
        guard case .failure(.policy(let why)) = classify(try stat(ageSeconds: 600), policy: p) else { return XCTFail("a recent file was a candidate") }
        XCTAssertTrue(why.hasPrefix("used in the last 1h"), why)
        // The policy's older age wins over a shorter min_age.
        guard case .failure = classify(try stat(ageSeconds: 600), policy: MigrationPolicy(olderThanSeconds: 3600), minAge: 60) else { return XCTFail() }
        // Read a minute ago, written long ago: used.
        var st = try stat(ageSeconds: 86400)
        st.atimeNs = now - 60 * second
        guard case .failure = classify(st) else { return XCTFail("recently read file was a candidate") }
        XCTAssertEqual(try classify(try stat(ageSeconds: 7200)).get().action, .migrate)
    }

    func testExcludesAndMinSizeApplyToReleasesToo() throws {
        let st = try stat(ageSeconds: 86400)
        let archived = encoded(makeMarker(size: st.size, mtimeNs: st.mtimeNs))
        let p = MigrationPolicy(minSize: 8 << 20, exclude: ["*.keep"])
        XCTAssertEqual(classify(st, path: "/d/a.keep", marker: archived, policy: MigrationPolicy(exclude: ["*.keep"])), .failure(.policy("excluded by *.keep")))
        guard case .failure(.policy) = classify(st, path: "/d/a", marker: archived, policy: p) else { return XCTFail("smaller than min_size was released") }
        XCTAssertEqual(try classify(st, path: "/d/a", marker: archived).get(),
                       SpaceCandidate(path: "/d/a", lastUsedNs: st.mtimeNs, bytes: st.allocatedBytes, action: .release))
    }

    func testMarkerStates() throws {
        let st = try stat(size: 4 << 20, ageSeconds: 86400)
        // Dirty: size or mtime moved on since the archive. Archived again, then released.
        XCTAssertEqual(try classify(st, marker: encoded(makeMarker(size: st.size, mtimeNs: st.mtimeNs - 1))).get().action, .migrate)
        // Partial: some blocks back.
        XCTAssertEqual(try classify(st, marker: encoded(makeMarker(size: st.size, mtimeNs: st.mtimeNs, offline: [0, 1]))).get().action, .release)
        // Released whole: what is allocated is only the marker's xattr block.
        var released = try stat(size: 4 << 20, allocated: 4096, ageSeconds: 86400)
        released.mtimeNs = st.mtimeNs
        XCTAssertEqual(classify(released, marker: encoded(makeMarker(size: st.size, mtimeNs: st.mtimeNs, offline: [0, 1, 2, 3]))), .failure(.nothingLocal))
        XCTAssertEqual(classify(st, marker: encoded(makeMarker(size: st.size, mtimeNs: st.mtimeNs, flags: .objectDamaged))), .failure(.damaged))
        XCTAssertEqual(classify(st, marker: [1, 2, 3]), .failure(.damaged))
        XCTAssertEqual(classify(try stat(allocated: 0, ageSeconds: 86400)), .failure(.nothingLocal))
    }

    private func c(_ name: String, age: Int64, mib n: Int64 = 1, _ action: SpaceCandidate.Action = .migrate) -> SpaceCandidate {
        SpaceCandidate(path: "/d/\(name)", lastUsedNs: now - age * second, bytes: n * mib, action: action)
    }

    func testOrderReleasesFirstThenLeastRecentlyUsed() {
        let list = [c("m-new", age: 10), c("r-new", age: 20, .release), c("m-old", age: 1000), c("r-old", age: 500, .release),
                    c("m-tie-b", age: 100), c("m-tie-a", age: 100)]
        XCTAssertEqual(WatermarkRules.order(list).map(\.path), ["/d/r-old", "/d/r-new", "/d/m-old", "/d/m-tie-a", "/d/m-tie-b", "/d/m-new"])
    }

    func testSelectorKeepsTheOldestThatReachTheTarget() {
        var s = CandidateSelector(targetBytes: 5 * mib)
        var rng = SystemRandomNumberGenerator()
        var all: [SpaceCandidate] = []
        for i in 0..<500 {
            let x = c("f\(i)", age: Int64.random(in: 0..<1_000_000, using: &rng), mib: Int64.random(in: 1...3, using: &rng))
            all.append(x)
            s.offer(x)
        }
        let sorted = all.sorted(by: SpaceCandidate.lessRecentlyUsed)
        // The shortest LRU prefix whose bytes reach 5 MiB.
        var prefix: [SpaceCandidate] = [], sum: Int64 = 0
        for x in sorted where sum < 5 * mib { prefix.append(x); sum += x.bytes }
        XCTAssertEqual(s.ordered(), prefix)
        XCTAssertEqual(s.totalBytes, sum)
        XCTAssertEqual(s.count, prefix.count)
    }

    func testSelectorKeepsAtMostMaxCountOfTheOldest() {
        var s = CandidateSelector(targetBytes: 1000 * mib, maxCount: 3)
        for (i, age) in [5, 30, 9, 50, 1, 40].enumerated() { s.offer(c("f\(i)", age: Int64(age))) }
        XCTAssertEqual(s.ordered().map(\.path), ["/d/f3", "/d/f5", "/d/f1"])
        XCTAssertEqual(s.totalBytes, 3 * mib)
    }

    func testSelectorWithTooFewCandidatesKeepsThemAll() {
        var s = CandidateSelector(targetBytes: 100 * mib)
        for (i, age) in [5, 3, 9].enumerated() { s.offer(c("f\(i)", age: Int64(age))) }
        XCTAssertEqual(s.ordered().map(\.path), ["/d/f2", "/d/f0", "/d/f1"])
        var none = CandidateSelector(targetBytes: 0)
        none.offer(c("x", age: 1))
        XCTAssertEqual(none.count, 0, "nothing to free: nothing kept")
    }

    func testSelectorSaturatesInsteadOfOverflowing() {
        var s = CandidateSelector(targetBytes: Int64.max)
        s.offer(SpaceCandidate(path: "/a", lastUsedNs: 1, bytes: Int64.max, action: .migrate))
        s.offer(SpaceCandidate(path: "/b", lastUsedNs: 0, bytes: Int64.max, action: .migrate))
        // Sums saturate (a file cannot really be that big): no trap, and the oldest leads.
        XCTAssertEqual(s.ordered().first?.path, "/b")
    }
}
