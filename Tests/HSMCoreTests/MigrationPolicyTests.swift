import XCTest
import TestSupport
@testable import HSMCore
import HSMKernel

final class MigrationPolicyTests: XCTestCase {
    private let second: Int64 = 1_000_000_000
    private var now: Int64 { 1_700_000_000 * second }

    private func stat(size: Int64 = 1 << 20, ageSeconds: Int64 = 86_400 * 365) throws -> FileStat {
        try makeStat(size: size, mtimeNs: now - ageSeconds * second, atimeNs: now - ageSeconds * second)
    }

    /// btrfs keeps any 64-bit second, so a file's times reach hsmd saturated to Int64.min
    /// or Int64.max; the age computation overflowed on the old one and killed hsmd.
    func testTimesAtTheEdgesOfInt64AreNotATrap() throws {
        let base = try stat()
        let outcome = runIsolated { _ in
            let p = MigrationPolicy(olderThanSeconds: 86_400)
            for (atime, mtime, now, old) in [(Int64.min, Int64.min, self.now, true), (Int64.min, Int64.min, Int64.max, true),
                                             (-9_000_000_000 * 1_000_000_000, Int64.min, self.now, true),
                                             (Int64.max, Int64.max, self.now, false), (Int64.max, Int64.min, Int64.min, false),
                                             (Int64.min, Int64.min, Int64.min, false)] {
                var st = base
                st.atimeNs = atime
                st.mtimeNs = mtime
                let skip = p.skipReason(path: "/d/f", stat: st, nowNs: now)
                if (skip == nil) != old { return "atime \(atime) mtime \(mtime) now \(now): \(skip ?? "migrates")" }
            }
            return nil
        }
        assertIsolatedPasses(outcome, "policy with extreme times")
    }

    func testMigratesWhenEverythingPasses() throws {
        let p = MigrationPolicy(olderThanSeconds: 3600, minSize: 4096, exclude: ["*.tmp", "/data/keep/*"])
        XCTAssertNil(p.skipReason(path: "/data/big.iso", stat: try stat(), nowNs: now))
        XCTAssertNil(MigrationPolicy().skipReason(path: "/data/x", stat: try stat(size: 0, ageSeconds: 0), nowNs: now),
                     "an empty policy migrates everything")
    }

    func testExcludedByNameGlob() throws {
        let p = MigrationPolicy(exclude: ["*.tmp"])
        let r = p.skipReason(path: "/data/sub/scratch.tmp", stat: try stat(), nowNs: now)
        XCTAssertEqual(r, "excluded by *.tmp")
        XCTAssertNil(p.skipReason(path: "/data/sub/scratch.tmpx", stat: try stat(), nowNs: now))
        // A name glob looks at the last component only, not at directories.
        XCTAssertNil(p.skipReason(path: "/data/dir.tmp/file", stat: try stat(), nowNs: now))
        XCTAssertNil(MigrationPolicy(exclude: ["data"]).skipReason(path: "/data/file", stat: try stat(), nowNs: now))
        XCTAssertNotNil(MigrationPolicy(exclude: ["file"]).skipReason(path: "/data/file", stat: try stat(), nowNs: now))
        XCTAssertNotNil(MigrationPolicy(exclude: ["core.[0-9]*"]).skipReason(path: "/x/core.123", stat: try stat(), nowNs: now))
    }

    func testExcludedByPathGlob() throws {
        let p = MigrationPolicy(exclude: ["/data/keep/*"])
        XCTAssertEqual(p.skipReason(path: "/data/keep/a.bin", stat: try stat(), nowNs: now), "excluded by /data/keep/*")
        XCTAssertNil(p.skipReason(path: "/data/other/a.bin", stat: try stat(), nowNs: now))
        // A glob with a slash is matched against the whole path, not the name.
        XCTAssertNil(MigrationPolicy(exclude: ["keep/*"]).skipReason(path: "/data/keep/a.bin", stat: try stat(), nowNs: now))
        XCTAssertNotNil(MigrationPolicy(exclude: ["*/keep/*"]).skipReason(path: "/data/keep/a.bin", stat: try stat(), nowNs: now))
    }

    func testExclusionIsCheckedFirst() throws {
        let p = MigrationPolicy(olderThanSeconds: 3600, minSize: 1 << 30, exclude: ["*.tmp"])
        XCTAssertEqual(p.skipReason(path: "/d/a.tmp", stat: try stat(size: 1, ageSeconds: 0), nowNs: now), "excluded by *.tmp")
    }

    func testTooSmall() throws {
        let p = MigrationPolicy(minSize: 4096)
        let r = p.skipReason(path: "/data/small", stat: try stat(size: 4095), nowNs: now)
        XCTAssertEqual(r, "smaller than 4.0 KiB")
        XCTAssertNil(p.skipReason(path: "/data/exact", stat: try stat(size: 4096), nowNs: now), "min size is inclusive")
    }

    func testTooRecentUsesLaterOfAtimeAndMtime() throws {
        let p = MigrationPolicy(olderThanSeconds: 3600)
        var st = try stat()
        // Modified long ago but read a minute ago: recently used.
        st.mtimeNs = now - 7200 * second
        st.atimeNs = now - 60 * second
        let reason = p.skipReason(path: "/d/f", stat: st, nowNs: now)
        XCTAssertTrue(reason?.hasPrefix("used in the last") == true, "\(reason ?? "nil")")
        // Read long ago but modified a minute ago: recently used.
        st.atimeNs = now - 7200 * second
        st.mtimeNs = now - 60 * second
        XCTAssertNotNil(p.skipReason(path: "/d/f", stat: st, nowNs: now))
        // Both old: migrates.
        st.mtimeNs = now - 7200 * second
        XCTAssertNil(p.skipReason(path: "/d/f", stat: st, nowNs: now))
        // Exactly at the threshold counts as old enough; a nanosecond less does not.
        st.atimeNs = now - 3600 * second
        st.mtimeNs = now - 3600 * second
        XCTAssertNil(p.skipReason(path: "/d/f", stat: st, nowNs: now))
        st.atimeNs += 1
        XCTAssertNotNil(p.skipReason(path: "/d/f", stat: st, nowNs: now))
    }

    /// A huge --older-than must not overflow and trap the daemon: no file is that old, so
    /// every file is simply skipped. Isolated in a child.
    func testHugeOlderThanDoesNotTrap() throws {
        // Units refuses durations over 100 years; the policy must still survive any value
        // a client could send over the socket.
        XCTAssertNil(Units.parseDuration("20000w"))
        let age = try XCTUnwrap(Units.parseDuration("5000w"))  // about 96 years
        let st = try stat()
        let nowNs = now
        let outcome = runIsolated { _ in
            let p = MigrationPolicy(olderThanSeconds: age)
            return p.skipReason(path: "/d/f", stat: st, nowNs: nowNs) == nil ? "a file was old enough" : nil
        }
        assertIsolatedPasses(outcome, "MigrationPolicy(olderThanSeconds: \(age)).skipReason")
    }
}

final class MigrationPolicyExtremeTests: XCTestCase {
    func testInt64MaxAgeFromTheSocketDoesNotTrap() throws {
        let st = try FileStat.of(path: "/")
        let outcome = runIsolated { _ in
            MigrationPolicy(olderThanSeconds: Int64.max).skipReason(path: "/d/f", stat: st, nowNs: 1_700_000_000_000_000_000) == nil ? "a file was old enough" : nil
        }
        assertIsolatedPasses(outcome, "MigrationPolicy(olderThanSeconds: Int64.max)")
    }
}
