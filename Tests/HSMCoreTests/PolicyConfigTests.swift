import XCTest
@testable import HSMCore

/// [[policy]] tables and the watermark keys of [[filesystem]].
final class PolicyConfigTests: XCTestCase {
    private let base = """
        [[store]]
        name = "a"
        type = "posix"
        path = "/srv/a"

        """

    private func parse(_ text: String) throws(Config.Error) -> Config { try Config.parse(text + "\n" + base) }

    private func message(_ text: String) -> String? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error.message
        }
    }

    private func assertRefused(_ text: String, naming parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard let m = message(text) else { return XCTFail("accepted:\n\(text)", file: file, line: line) }
        for p in parts { XCTAssertTrue(m.contains(p), "message \"\(m)\" does not name \(p)", file: file, line: line) }
    }

    func testPoliciesAndWatermarksParse() throws {
        let c = try parse("""
            watermark_interval = "10s"

            [[policy]]
            name = "nightly"
            older_than = "30d"
            min_size = "64k"
            exclude = ["*.tmp", "/data/keep/*"]

            [[policy]]
            name = "all"

            [[filesystem]]
            path = "/data"
            store = "a"
            high_watermark = 90
            low_watermark = 75
            watermark_policy = "nightly"
            min_age = "2h"

            [[filesystem]]
            path = "/home"
            store = "a"
            """)
        XCTAssertEqual(c.watermarkIntervalSeconds, 10)
        XCTAssertEqual(c.policies, [
            NamedPolicy(name: "nightly", policy: MigrationPolicy(olderThanSeconds: 30 * 86400, minSize: 64 << 10, exclude: ["*.tmp", "/data/keep/*"])),
            NamedPolicy(name: "all", policy: MigrationPolicy()),
        ])
        XCTAssertEqual(c.filesystems[0].watermarks, Watermarks(highPercent: 90, lowPercent: 75, policy: "nightly", minAgeSeconds: 7200))
        XCTAssertNil(c.filesystems[1].watermarks, "no watermark keys: no watermarks")
        XCTAssertEqual(c.policy(named: "all"), MigrationPolicy())
        XCTAssertNil(c.policy(named: "nope"))
    }

    func testDefaults() throws {
        let c = try parse("""
            [[policy]]
            name = "p"
            min_size = 4096
            older_than = 60
            [[filesystem]]
            path = "/data"
            store = "a"
            high_watermark = 100
            low_watermark = 1
            """)
        XCTAssertEqual(c.watermarkIntervalSeconds, 30)
        XCTAssertEqual(c.policies[0].policy, MigrationPolicy(olderThanSeconds: 60, minSize: 4096))
        XCTAssertEqual(c.filesystems[0].watermarks, Watermarks(highPercent: 100, lowPercent: 1, policy: nil, minAgeSeconds: 3600))
    }

    func testWatermarkOrderAndRangeRefused() {
        let fs = { (keys: String) in "[[filesystem]]\npath = \"/data\"\nstore = \"a\"\n" + keys }
        assertRefused(fs("high_watermark = 70\nlow_watermark = 80"), naming: ["filesystem[0]", "low_watermark 80", "below high_watermark 70"])
        assertRefused(fs("high_watermark = 70\nlow_watermark = 70"), naming: ["low_watermark 70", "below high_watermark 70"])
        assertRefused(fs("high_watermark = 101\nlow_watermark = 80"), naming: ["high_watermark 101", "over 100"])
        assertRefused(fs("high_watermark = 50\nlow_watermark = 0"), naming: ["low_watermark 0", "greater than 0"])
        assertRefused(fs("high_watermark = 50\nlow_watermark = -5"), naming: ["low_watermark -5"])
        assertRefused(fs("high_watermark = 90"), naming: ["filesystem[0]", "without low_watermark"])
        assertRefused(fs("low_watermark = 50"), naming: ["without high_watermark"])
        assertRefused(fs("min_age = \"1h\""), naming: ["min_age", "without high_watermark"])
        assertRefused(fs("high_watermark = \"90%\"\nlow_watermark = 50"), naming: ["filesystem[0].high_watermark", "whole percent"])
        assertRefused(fs("high_watermark = 90.5\nlow_watermark = 50"), naming: ["high_watermark"])
        assertRefused(fs("high_watermark = 90\nlow_watermark = 50\nmin_age = \"soon\""), naming: ["filesystem[0].min_age"])
        assertRefused(fs("high_watermark = 90\nlow_watermark = 50\nwatermark = 1"), naming: ["unknown key \"filesystem[0].watermark\"", "high_watermark"])
    }

    func testWatermarkPolicyMustExist() {
        let fs = "[[filesystem]]\npath = \"/data\"\nstore = \"a\"\nhigh_watermark = 90\nlow_watermark = 80\nwatermark_policy = \"nightly\"\n"
        assertRefused(fs, naming: ["filesystem[0].watermark_policy", "\"nightly\"", "defines no policies"])
        assertRefused("[[policy]]\nname = \"other\"\n[[policy]]\nname = \"more\"\n" + fs, naming: ["\"nightly\"", "known: other, more"])
    }

    func testBadPolicies() {
        assertRefused("[[policy]]\nolder_than = \"1d\"", naming: ["policy[0].name is required"])
        assertRefused("[[policy]]\nname = \"\"", naming: ["policy[0].name"])
        assertRefused("[[policy]]\nname = \"a b\"", naming: ["policy[0].name", "\"a b\""])
        assertRefused("[[policy]]\nname = \"p\"\n[[policy]]\nname = \"p\"", naming: ["policy \"p\" is defined twice"])
        assertRefused("[[policy]]\nname = \"p\"\nolder_than = \"30x\"", naming: ["policy[0].older_than"])
        assertRefused("[[policy]]\nname = \"p\"\nmin_size = \"big\"", naming: ["policy[0].min_size", "\"big\""])
        assertRefused("[[policy]]\nname = \"p\"\nmin_size = -1", naming: ["policy[0].min_size", "negative"])
        assertRefused("[[policy]]\nname = \"p\"\nexclude = \"*.tmp\"", naming: ["policy[0].exclude", "array"])
        assertRefused("[[policy]]\nname = \"p\"\nexclude = [1]", naming: ["policy[0].exclude[0]"])
        assertRefused("[[policy]]\nname = \"p\"\nexclude = [\"\"]", naming: ["policy[0].exclude[0]"])
        assertRefused("[[policy]]\nname = \"p\"\nolder = \"1d\"", naming: ["unknown key \"policy[0].older\"", "older_than"])
        assertRefused("[policy]\nname = \"p\"", naming: ["policy", "[[policy]]"])
        assertRefused("watermark_interval = \"2h\"", naming: ["watermark_interval", "out of range"])
        assertRefused("watermark_interval = 0", naming: ["watermark_interval"])
    }

    func testUnknownPolicyMessageListsTheKnownOnes() throws {
        let c = try parse("[[policy]]\nname = \"nightly\"\n[[policy]]\nname = \"big\"\n")
        XCTAssertEqual(c.unknownPolicyMessage("nighty"), "no [[policy]] named \"nighty\" (known: nightly, big)")
        XCTAssertEqual(Config().unknownPolicyMessage("x"), "no [[policy]] named \"x\": hsmd's config defines no policies")
    }

    func testMigrateRequestTakesItsNamedPolicy() throws {
        let policies = [NamedPolicy(name: "nightly", policy: MigrationPolicy(olderThanSeconds: 86400, minSize: 4096, exclude: ["*.tmp"]))]
        let line = Array(#"{"op":"migrate","paths":[],"policy":"nightly","jobs":2}"#.utf8)
        let r = try ControlRequest.decode(line: line)
        XCTAssertEqual(r.policy, "nightly")
        let resolved = try r.resolvingPolicy(policies, defaultPaths: ["/a", "/b"])
        XCTAssertEqual(resolved.paths, ["/a", "/b"], "no path: every managed filesystem")
        XCTAssertEqual(resolved.olderThanSeconds, 86400)
        XCTAssertEqual(resolved.minSize, 4096)
        XCTAssertEqual(resolved.exclude, ["*.tmp"])
        XCTAssertEqual(resolved.jobs, 2)
        var named = r
        named.paths = ["/a/sub"]
        XCTAssertEqual(try named.resolvingPolicy(policies, defaultPaths: ["/a"]).paths, ["/a/sub"])
        XCTAssertEqual(policies[0].policy.summary, "older than 1d, at least 4.0 KiB, 1 exclude")
        XCTAssertEqual(MigrationPolicy().summary, "every file")
    }

    func testMigrateRequestPolicyRefusals() throws {
        let policies = [NamedPolicy(name: "nightly", policy: MigrationPolicy()), NamedPolicy(name: "big", policy: MigrationPolicy())]
        func refusal(_ r: ControlRequest) -> String? {
            do { _ = try r.resolvingPolicy(policies, defaultPaths: ["/a"]); return nil } catch { return error.message }
        }
        XCTAssertEqual(refusal(ControlRequest(op: .migrate, policy: "nighty")), "no [[policy]] named \"nighty\" (known: nightly, big)")
        XCTAssertTrue(refusal(ControlRequest(op: .migrate, olderThanSeconds: 5, policy: "nightly"))?.contains("do not combine") == true)
        XCTAssertTrue(refusal(ControlRequest(op: .migrate, exclude: ["x"], policy: "nightly"))?.contains("do not combine") == true)
        XCTAssertTrue(refusal(ControlRequest(op: .migrate))?.contains("name at least one") == true)
        XCTAssertNil(refusal(ControlRequest(op: .migrate, paths: ["/a"])), "no policy, a path: as before")
        XCTAssertThrowsError(try ControlRequest.decode(line: Array(#"{"op":"migrate","paths":["/a"],"policy":7}"#.utf8)))
        XCTAssertThrowsError(try ControlRequest.decode(line: Array(#"{"op":"migrate","paths":["/a"],"policy":"a\u0000"}"#.utf8)))
    }
}
