import XCTest
@testable import HSMCore

final class UnitsTests: XCTestCase {
    func testParseDuration() {
        XCTAssertEqual(Units.parseDuration("90"), 90)
        XCTAssertEqual(Units.parseDuration("0"), 0)
        XCTAssertEqual(Units.parseDuration("45s"), 45)
        XCTAssertEqual(Units.parseDuration("30m"), 1800)
        XCTAssertEqual(Units.parseDuration("12h"), 43_200)
        XCTAssertEqual(Units.parseDuration("30d"), 2_592_000)
        XCTAssertEqual(Units.parseDuration("2w"), 1_209_600)
        XCTAssertEqual(Units.parseDuration("12H"), 43_200, "case-insensitive")
        XCTAssertEqual(Units.parseDuration(" 5m "), 300, "surrounding spaces are trimmed")
    }

    func testParseDurationRejects() {
        for bad in ["", " ", "x", "s", "-1d", "-5", "5y", "1.5h", "5 m", "1h30m", "m5", "9223372036854775807w", "99999999999999999999"] {
            XCTAssertNil(Units.parseDuration(bad), "\"\(bad)\" should be refused")
        }
    }

    func testParseSize() {
        XCTAssertEqual(Units.parseSize("4096"), 4096)
        XCTAssertEqual(Units.parseSize("0"), 0)
        XCTAssertEqual(Units.parseSize("64k"), 65_536)
        XCTAssertEqual(Units.parseSize("64K"), 65_536)
        XCTAssertEqual(Units.parseSize("64KiB"), 65_536)
        XCTAssertEqual(Units.parseSize("64kb"), 65_536)
        XCTAssertEqual(Units.parseSize("1M"), 1 << 20)
        XCTAssertEqual(Units.parseSize("1MiB"), 1 << 20)
        XCTAssertEqual(Units.parseSize("2G"), 2 << 30)
        XCTAssertEqual(Units.parseSize("1T"), 1 << 40)
        XCTAssertEqual(Units.parseSize("512B"), 512)
        XCTAssertEqual(Units.parseSize(" 8m "), 8 << 20)
    }

    func testParseSizeRejects() {
        for bad in ["", "k", "KiB", "b", "-1", "-1k", "1.5M", "10x", "1P", "1 M", "M1", "99999999999T", "abc"] {
            XCTAssertNil(Units.parseSize(bad), "\"\(bad)\" should be refused")
        }
    }

    func testFormatBytes() {
        XCTAssertEqual(Units.formatBytes(0), "0 B")
        XCTAssertEqual(Units.formatBytes(1), "1 B")
        XCTAssertEqual(Units.formatBytes(1023), "1023 B")
        XCTAssertEqual(Units.formatBytes(1024), "1.0 KiB")
        XCTAssertEqual(Units.formatBytes(1536), "1.5 KiB")
        XCTAssertEqual(Units.formatBytes(4096), "4.0 KiB")
        XCTAssertEqual(Units.formatBytes(1 << 20), "1.0 MiB")
        XCTAssertEqual(Units.formatBytes((1 << 20) + (1 << 19)), "1.5 MiB")
        XCTAssertEqual(Units.formatBytes(27 << 30), "27.0 GiB")
        XCTAssertEqual(Units.formatBytes(3 << 40), "3.0 TiB")
        XCTAssertEqual(Units.formatBytes(2048 << 40), "2048.0 TiB", "TiB is the largest unit")
    }

    func testFormatDuration() {
        XCTAssertEqual(Units.formatDuration(0), "0s")
        XCTAssertEqual(Units.formatDuration(45), "45s")
        XCTAssertEqual(Units.formatDuration(90), "90s")
        XCTAssertEqual(Units.formatDuration(60), "1m")
        XCTAssertEqual(Units.formatDuration(5400), "90m")
        XCTAssertEqual(Units.formatDuration(3600), "1h")
        XCTAssertEqual(Units.formatDuration(2_592_000), "30d")
        XCTAssertEqual(Units.formatDuration(1_209_600), "2w")
        XCTAssertEqual(Units.formatDuration(86_400 + 1), "86401s")
        for s: Int64 in [0, 1, 59, 60, 61, 3599, 3600, 86_400, 604_800, 1_000_000, 31_536_000] {
            XCTAssertEqual(Units.parseDuration(Units.formatDuration(s)), s, "round trip of \(s)")
        }
    }

    func testFormatThenParseRoundTrip() {
        for n: Int64 in [1 << 10, 64 << 10, 1 << 20, 2 << 30, 1 << 40] {
            let text = Units.formatBytes(n).replacingOccurrences(of: ".0 ", with: "")
            XCTAssertEqual(Units.parseSize(text), n, text)
        }
    }
}
