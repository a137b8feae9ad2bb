import HSMCore
import XCTest

@testable import HSMDaemon

final class SpaceWatcherTests: XCTestCase {
    /// How much recalling brings the next look forward: 1% of the smallest watched
    /// filesystem, never under 1 MiB nor over 256 MiB.
    func testRecallTrigger() {
        XCTAssertEqual(SpaceWatcher.recallTrigger([]), 256 << 20)
        XCTAssertEqual(SpaceWatcher.recallTrigger([1 << 40, 200 << 20]), 2 << 20)
        XCTAssertEqual(SpaceWatcher.recallTrigger([10 << 20]), 1 << 20)
        XCTAssertEqual(SpaceWatcher.recallTrigger([Int64.max]), 256 << 20)
    }

    /// A reload's new settings are what the next snapshot holds.
    func testSettingsReplace() throws {
        let first = try Config.parse("[[policy]]\nname = \"a\"\n")
        let settings = PolicySettings(first)
        XCTAssertEqual(settings.snapshot.policies.map(\.name), ["a"])
        var second = first
        second.policies = [NamedPolicy(name: "b", policy: MigrationPolicy(minSize: 1))]
        second.watermarkIntervalSeconds = 5
        settings.replace(with: second)
        XCTAssertEqual(settings.snapshot.policies.map(\.name), ["b"])
        XCTAssertEqual(settings.snapshot.intervalSeconds, 5)
    }
}
