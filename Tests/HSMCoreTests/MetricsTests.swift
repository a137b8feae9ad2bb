import XCTest
@testable import HSMCore

final class MetricsTests: XCTestCase {
    func testHistogramBucketsAreCumulativeAndEndAtTheCount() {
        let h = MetricHistogram(bounds: [10, 100], perUnit: 1)
        for v: UInt64 in [1, 10, 11, 100, 101, 5000] { h.observe(v) }
        let s = h.snapshot
        XCTAssertEqual(s.cumulative, [2, 4, 6])
        XCTAssertEqual(s.count, 6)
        XCTAssertEqual(s.sum, 5223)
        var w = PrometheusWriter()
        w.histogram("x_seconds", "help", h)
        XCTAssertEqual(w.text, """
            # HELP x_seconds help
            # TYPE x_seconds histogram
            x_seconds_bucket{le="10"} 2
            x_seconds_bucket{le="100"} 4
            x_seconds_bucket{le="+Inf"} 6
            x_seconds_sum 5223
            x_seconds_count 6

            """)
    }

    func testLatencyBoundsPrintInSeconds() {
        var w = PrometheusWriter()
        w.histogram("l_seconds", "h", MetricHistogram.latency())
        XCTAssertTrue(w.text.contains("l_seconds_bucket{le=\"0.0001\"} 0\n"), w.text)
        XCTAssertTrue(w.text.contains("l_seconds_bucket{le=\"60\"} 0\n"), w.text)
        XCTAssertTrue(w.text.contains("l_seconds_sum 0\n"), w.text)
    }

    func testLabelValuesAndHelpAreEscaped() {
        let f = MetricFamily<MetricCounter>(name: "c_total", help: "a \\ b\nc", labels: ["path"]) { MetricCounter() }
        f.child("/x\"y\\z\nw").add(3)
        var w = PrometheusWriter()
        w.family(f)
        XCTAssertEqual(w.text, """
            # HELP c_total a \\\\ b\\nc
            # TYPE c_total counter
            c_total{path="/x\\"y\\\\z\\nw"} 3

            """)
    }

    func testFamilyChildIsFoundAgain() {
        let f = MetricFamily<MetricCounter>(name: "e_total", help: "h", labels: ["errno"]) { MetricCounter() }
        f.child("EIO").add(1)
        f.child("EIO").add(signed: 2)
        f.child("EIO").add(signed: -5)
        XCTAssertEqual(f.child("EIO").current, 3)
        XCTAssertEqual(f.all.count, 1)
    }

    func testFormat() {
        XCTAssertEqual(PrometheusWriter.format(3), "3")
        XCTAssertEqual(PrometheusWriter.format(0.5), "0.5")
        XCTAssertEqual(PrometheusWriter.format(.infinity), "+Inf")
        XCTAssertEqual(PrometheusWriter.format(.nan), "NaN")
    }

    func testMetricsListen() {
        XCTAssertNil(MetricsListen.problem("127.0.0.1:9464"))
        XCTAssertNil(MetricsListen.problem("[::1]:9464"))
        XCTAssertNil(MetricsListen.problem("localhost:9464"))
        XCTAssertEqual(MetricsListen.split("localhost:9464")?.host, "127.0.0.1")
        XCTAssertNotNil(MetricsListen.problem("127.0.0.1"))
        XCTAssertNotNil(MetricsListen.problem("127.0.0.1:0"))
        XCTAssertNotNil(MetricsListen.problem("127.0.0.1:70000"))
        XCTAssertNotNil(MetricsListen.problem("host.example:9464"))
        XCTAssertNotNil(MetricsListen.problem("::1:9464"))
        XCTAssertNotNil(MetricsListen.problem("[::1]9464"))
        XCTAssertNotNil(MetricsListen.problem("999.1.1.1:80"))
    }
}

final class ConfigReloadTests: XCTestCase {
    private let base = """
        log_level = "info"
        [[store]]
        name = "a"
        type = "posix"
        path = "/srv/a"
        [[filesystem]]
        path = "/data"
        store = "a"
        """

    private func config(_ head: String = "", extraFS: String = "") throws -> Config {
        try Config.parse(head + "\n" + base + "\n" + extraFS)
    }

    /// Every key the parser knows is in ConfigReload.keys, as reloadable or not: a new key
    /// must be placed there (the one list).
    func testEveryConfigKeyIsClassified() {
        var message = ""
        do { _ = try Config.parse("no_such_key = 1") } catch { message = error.message }
        guard let known = message.range(of: "(known: ") else { return XCTFail(message) }
        let names = message[known.upperBound...].dropLast().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        XCTAssertGreaterThan(names.count, 5)
        let classified = Set(ConfigReload.keys.map(\.name))
        for n in names { XCTAssertTrue(classified.contains(n), "config key \(n) is not in ConfigReload.keys") }
    }

    func testReloadableChangesApply() throws {
        let old = try config()
        let new = try config("full_recall_programs = [\"rsync\"]\nrecall_timeout = \"30s\"").with { $0.logLevel = "debug" }
        XCTAssertEqual(ConfigReload.verdict(running: old, new: new), .apply(changed: ["log_level", "full_recall_programs", "recall_timeout"]))
        XCTAssertEqual(ConfigReload.verdict(running: old, new: old), .apply(changed: []))
    }

    func testRestartKeysRefuseTheWholeChange() throws {
        let old = try config()
        let new = try config("state_dir = \"/var/lib/other\"\nlog_level2 = 1".replacingOccurrences(of: "\nlog_level2 = 1", with: ""))
            .with { $0.logLevel = "debug" }
        XCTAssertEqual(ConfigReload.verdict(running: old, new: new), .needsRestart(keys: ["state_dir"]))
        let moreFS = try config(extraFS: "[[filesystem]]\npath = \"/data2\"\nstore = \"a\"")
        XCTAssertEqual(ConfigReload.verdict(running: old, new: moreFS), .needsRestart(keys: ["[[filesystem]]"]))
        XCTAssertEqual(ConfigReload.details(running: old, new: moreFS), ["filesystem /data2 added"])
        XCTAssertEqual(ConfigReload.details(running: moreFS, new: old), ["filesystem /data2 removed"])
        let metrics = try config("metrics_listen = \"127.0.0.1:9464\"")
        XCTAssertEqual(ConfigReload.verdict(running: old, new: metrics), .needsRestart(keys: ["metrics_listen"]))
    }
}

private extension Config {
    func with(_ change: (inout Config) -> Void) -> Config {
        var c = self
        change(&c)
        return c
    }
}

final class OpsRequestDecoderTests: XCTestCase {
    private func message(_ json: String) -> String? {
        do { _ = try ControlRequest.decode(line: Array(json.utf8)); return nil } catch { return error.message }
    }

    func testCancelNeedsAJobID() throws {
        XCTAssertEqual(message(#"{"op":"cancel"}"#), "cancel: id is missing (hsmctl queue lists the jobs' ids)")
        XCTAssertEqual(message(#"{"op":"cancel","id":0}"#), "cancel: id 0 is not a job id (ids count from 1)")
        XCTAssertEqual(message(#"{"op":"cancel","id":"7"}"#), "malformed request: id: expected an integer, found a string")
        XCTAssertEqual(try ControlRequest.decode(line: Array(#"{"op":"cancel","id":7}"#.utf8)).id, 7)
        XCTAssertNil(message(#"{"op":"queue"}"#))
        XCTAssertNil(message(#"{"op":"metrics"}"#))
    }
}
