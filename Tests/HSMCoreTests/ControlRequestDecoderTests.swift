import Foundation
import XCTest
import TestSupport
@testable import HSMCore

/// Why an accepted request is not one hsmd can serve without further checks, or nil.
/// Does the arithmetic the server does, with overflow reported instead of trapping.
private func outOfRange(_ r: ControlRequest) -> String? {
    if let range = r.range {
        guard range.count == 2 else { return "range has \(range.count) values" }
        guard range[0] >= 0, range[1] > 0 else { return "range \(range) has a negative offset or an empty length" }
        if range[0].addingReportingOverflow(range[1]).overflow { return "range \(range): offset + length overflows" }
        guard let rr = r.recallRange, rr.lowerBound == range[0], rr.count == Int(range[1]) else { return "recallRange disagrees with range \(range)" }
    } else if r.recallRange != nil {
        return "recallRange without a range"
    }
    guard (1...64).contains(r.jobs) else { return "jobs \(r.jobs)" }
    if let s = r.olderThanSeconds, s < 0 || s > Units.maxDuration { return "older_than_seconds \(s)" }
    if let m = r.minSize, m < 0 { return "min_size \(m)" }
    if let s = r.since, s < 0 { return "since \(s)" }
    guard r.paths.count <= ControlRequestLimits.maxPaths, r.exclude.count <= ControlRequestLimits.maxExcludes else { return "too many entries" }
    for p in r.paths where !p.hasPrefix("/") || p.utf8.contains(0) || p.utf8.count > 4095 { return "path \(p.debugDescription)" }
    for g in r.exclude where g.utf8.contains(0) || g.utf8.count > 4095 { return "glob \(g.debugDescription)" }
    return nil
}

/// The message of the error decoding `text` gives, or nil if it decoded.
private func refusal(_ text: String) -> String? { refusal(Array(text.utf8)) }
private func refusal(_ bytes: [UInt8]) -> String? {
    do {
        _ = try ControlRequest.decode(line: bytes)
        return nil
    } catch {
        return error.message
    }
}

private func line(_ fields: String) -> String {
    #"{"op":"recall","paths":["/mnt/a"]"# + (fields.isEmpty ? "" : ",") + fields + "}"
}

final class ControlRequestDecoderTests: XCTestCase {
    func testWhatHsmctlSendsDecodesToTheSameRequest() throws {
        let requests = [
            ControlRequest(op: .ping),
            ControlRequest(op: .recall, paths: ["/data/a b", "/data/ü/ß"], range: [4096, 1 << 20]),
            ControlRequest(op: .recall, paths: ["/x"], range: [Int64.max - 1, 1]),
            ControlRequest(op: .migrate, paths: ["/data"], olderThanSeconds: 86_400, minSize: 1 << 20,
                           exclude: ["*.tmp", "/data/keep/*", "quote\"back\\slash\u{1}"], dryRun: true, jobs: 64, progress: true,
                           incremental: true),
            ControlRequest(op: .migrate, paths: ["/"], olderThanSeconds: Units.maxDuration, minSize: Int64.max, jobs: 1),
            ControlRequest(op: .journalList, paths: ["/mnt"], since: 0),
            ControlRequest(op: .journalChanged, paths: ["/mnt/\u{1F600}"], since: Int64.max),
        ]
        for r in requests {
            XCTAssertEqual(try ControlRequest.decode(line: ControlCodec.encode(r)), r)
            XCTAssertNoThrow(try r.validate())
        }
        for op in ["ping", "archive", "release", "migrate", "recall", "status",
                   "journal_status", "journal_snapshot", "journal_list", "journal_changed", "report", "check",
                   "remove", "gc", "pin", "unpin", "queue", "metrics"] {
            XCTAssertEqual(try ControlRequest.decode(line: Array(#"{"op":"\#(op)"}"#.utf8)).op.rawValue, op)
        }
    }

    func testPinAndUnpinRoundTripAndAnUnknownOpNamesEveryKnownOne() throws {
        for op in [ControlRequest.Operation.pin, .unpin] {
            let r = ControlRequest(op: op, paths: ["/mnt/keep me"])
            XCTAssertEqual(try ControlRequest.decode(line: ControlCodec.encode(r)), r)
        }
        let message = try XCTUnwrap(refusal(#"{"op":"pinn"}"#))
        XCTAssertTrue(message.hasPrefix(#"op: "pinn" is not an operation (known: ping, archive"#), message)
        for op in ControlRequest.Operation.allCases { XCTAssertTrue(message.contains(op.rawValue), "\(op) missing from: \(message)") }
    }

    func testRemoveGcAndImportFields() throws {
        var remove = ControlRequest(op: .remove, paths: ["/mnt/a"])
        remove.recall = true
        var gc = ControlRequest(op: .gc, dryRun: true)
        gc.graceSeconds = 0
        var imp = ControlRequest(op: .importStore)
        imp.store = "tier1"
        imp.into = "/mnt/restore"
        for r in [remove, gc, imp] { XCTAssertEqual(try ControlRequest.decode(line: ControlCodec.encode(r)), r) }
        XCTAssertEqual(try ControlRequest.decode(line: Array(#"{"op":"import","store":"t"}"#.utf8)).op, .importStore)
        XCTAssertEqual(refusal(#"{"op":"import"}"#), "store: import needs the name of a store of hsmd's config")
        XCTAssertEqual(refusal(#"{"op":"import","store":"t","into":"rel"}"#), "into: rel is not absolute; hsmd needs absolute paths")
        XCTAssertEqual(refusal(#"{"op":"gc","grace_seconds":-1}"#), "grace_seconds: -1 is out of range (0 to \(Units.maxDuration), 100 years)")
        XCTAssertEqual(refusal(#"{"op":"gc","grace_seconds":"1d"}"#), "malformed request: grace_seconds: expected an integer, found a string")
        XCTAssertEqual(refusal(#"{"op":"remove","recall":1}"#), "malformed request: recall: expected true or false, found an integer")
        XCTAssertEqual(refusal(#"{"op":"import","store":7}"#), "malformed request: store: expected a string, found an integer")
    }

    func testCheckOptionsRoundTripAndABadRateIsRefused() throws {
        var r = ControlRequest(op: .check, paths: ["/mnt"])
        r.scrub = true
        r.repair = true
        r.rate = 50 << 20
        XCTAssertEqual(try ControlRequest.decode(line: ControlCodec.encode(r)), r)
        for bad in ["0", "-1"] {
            XCTAssertThrowsError(try ControlRequest.decode(line: Array(#"{"op":"check","scrub":true,"rate":\#(bad)}"#.utf8))) {
                XCTAssertTrue("\($0)".contains("rate"), "\($0)")
            }
        }
        XCTAssertThrowsError(try ControlRequest.decode(line: Array(#"{"op":"check","scrub":"yes"}"#.utf8)))
    }

    func testAbsentOptionalFieldsTakeTheirDefaults() throws {
        let r = try ControlRequest.decode(line: Array(#"{"op":"status","paths":["/a"],"range":null,"since":null}"#.utf8))
        XCTAssertEqual(r, ControlRequest(op: .status, paths: ["/a"]))
        XCTAssertNil(r.recallRange)
    }

    /// The request that crashed hsmd (`hsmctl recall --range 9223372036854775807:1`) and its
    /// neighbours: refused with the field named, never computed with.
    func testRecallRangesThatOverflowAreRefused() {
        for (range, words) in [
            ("[9223372036854775807,1]", ["range", "9223372036854775807", "1"]),
            ("[1,9223372036854775807]", ["range"]),
            ("[4611686018427387904,4611686018427387904]", ["range"]),
            ("[9223372036854775807,9223372036854775807]", ["range"]),
            ("[-1,4096]", ["range", "offset", "-1", "negative"]),
            ("[-9223372036854775808,1]", ["range", "offset"]),
            ("[0,0]", ["range", "length", "0"]),
            ("[0,-9223372036854775808]", ["range", "length"]),
            ("[]", ["range", "2", "found 0"]),
            ("[1]", ["range", "found 1"]),
            ("[1,2,3]", ["range", "found 3"]),
            ("[9223372036854775808,1]", ["range[0]", "9223372036854775808", "not an integer"]),
            ("[0,1e400]", ["range[1]", "1e400"]),
            ("[0.5,1]", ["range[0]", "0.5"]),
            ("[\"0\",1]", ["range[0]", "expected an integer", "a string"]),
            ("{\"offset\":1}", ["range", "an object"]),
            ("4096", ["range", "an integer"]),
        ] {
            guard let m = refusal(line(#""range":\#(range)"#)) else { XCTFail("range \(range) was accepted"); continue }
            for w in words { XCTAssertTrue(m.contains(w), "range \(range): \(m) lacks \(w)") }
        }
        XCTAssertNil(refusal(line(#""range":[9223372036854775806,1]"#)), "ending exactly at Int64.max is fine")
        XCTAssertNil(refusal(line(#""range":[0,9223372036854775807]"#)))
    }

    func testNumbersOutOfRangeNameTheirField() {
        for (fields, words) in [
            (#""jobs":0"#, ["jobs", "0", "1 to 64"]),
            (#""jobs":-1"#, ["jobs", "-1"]),
            (#""jobs":65"#, ["jobs", "65"]),
            (#""jobs":-9223372036854775808"#, ["jobs"]),
            (#""jobs":99999999999999999999999"#, ["jobs", "99999999999999999999999"]),
            (#""jobs":1.0"#, ["jobs", "1.0"]),
            (#""jobs":1e0"#, ["jobs"]),
            (#""jobs":"8""#, ["jobs", "a string"]),
            (#""jobs":null"#, []),
            (#""older_than_seconds":-1"#, ["older_than_seconds", "-1"]),
            (#""older_than_seconds":9223372036854775807"#, ["older_than_seconds"]),
            (#""min_size":-1"#, ["min_size", "-1"]),
            (#""min_size":-0.0e99999"#, ["min_size"]),
            (#""since":-1"#, ["since", "-1"]),
            (#""since":true"#, ["since", "a boolean"]),
            (#""dry_run":1"#, ["dry_run", "true or false"]),
            (#""progress":"yes""#, ["progress"]),
            (#""incremental":[]"#, ["incremental"]),
        ] {
            let m = refusal(line(fields))
            if words.isEmpty { XCTAssertNil(m, fields); continue }
            guard let m else { XCTFail("\(fields) was accepted"); continue }
            for w in words { XCTAssertTrue(m.contains(w), "\(fields): \(m) lacks \(w)") }
        }
        XCTAssertNil(refusal(line(#""jobs":64,"dry_run":true,"progress":false,"incremental":null"#)))
        XCTAssertNil(refusal(line(#""older_than_seconds":0,"min_size":0,"since":0"#)))
    }

    func testArraysAndStrings() {
        func paths(_ n: Int, _ p: String = "/x") -> String { "[" + Array(repeating: "\"\(p)\"", count: n).joined(separator: ",") + "]" }
        let cases: [(String, [String])] = [
            (#"{"op":"status","paths":\#(paths(100_001))}"#, ["paths", "100001", "100000"]),
            (#"{"op":"migrate","paths":["/m"],"exclude":\#(paths(10_001, "*"))}"#, ["exclude", "10000"]),
            (#"{"op":"status","paths":["/\#(String(repeating: "a", count: 4095))"]}"#, ["paths[0]", "4096 bytes", "4096"]),
            (#"{"op":"status","paths":["/ok","/a\u0000b"]}"#, ["paths[1]", "NUL"]),
            (#"{"op":"status","paths":["relative"]}"#, ["paths[0]", "relative", "absolute"]),
            (#"{"op":"status","paths":[""]}"#, ["paths[0]", "absolute"]),
            (#"{"op":"status","paths":"/x"}"#, ["paths", "an array of strings", "a string"]),
            (#"{"op":"status","paths":[1]}"#, ["paths[0]", "an integer"]),
            (#"{"op":"status","paths":[null]}"#, ["paths[0]", "null"]),
            (#"{"op":"status","paths":[["/x"]]}"#, ["paths[0]", "an array"]),
            (#"{"op":"migrate","paths":["/m"],"exclude":["a\u0000"]}"#, ["exclude[0]", "NUL"]),
            (#"{"op":"migrate","paths":["/m"],"exclude":[{}]}"#, ["exclude[0]", "an object"]),
            (#"{"op":5}"#, ["op", "a string"]),
            (#"{"op":"explode"}"#, ["op", "explode", "journal_changed"]),
            (#"{"paths":[]}"#, ["op", "missing"]),
            (#"{"op":null}"#, ["op", "null"]),
        ]
        for (text, words) in cases {
            guard let m = refusal(text) else { XCTFail("\(text.prefix(80)) was accepted"); continue }
            for w in words { XCTAssertTrue(m.contains(w), "\(text.prefix(80)): \(m) lacks \(w)") }
        }
        XCTAssertNil(refusal(#"{"op":"status","paths":\#(paths(100_000))}"#), "the limit itself is allowed")
        XCTAssertNil(refusal(#"{"op":"status","paths":["/\#(String(repeating: "a", count: 4094))"]}"#))
    }

    /// A fixed corpus of hostile lines: each is refused with a message, and decoding never traps.
    func testNastyCorpusIsRefused() {
        var corpus: [[UInt8]] = [
            [], Array("   ".utf8), Array("not json".utf8), Array("[]".utf8), Array("42".utf8), Array("null".utf8),
            Array("\"op\"".utf8), Array("{".utf8), Array("}".utf8), Array("{\"op\":\"ping\",".utf8),
            Array("{\"op\":\"ping\"} {\"op\":\"ping\"}".utf8), Array("{\"op\":\"ping\"}x".utf8),
            Array("{\"op\":\"ping\",\"op\":\"status\"}".utf8), Array("{'op':'ping'}".utf8), Array("{op:\"ping\"}".utf8),
            Array("{\"op\":\"ping\",}".utf8), Array("{\"op\":\"ping\" \"paths\":[]}".utf8),
            Array("{\"op\":\"status\",\"paths\":[\"/a\",]}".utf8), Array("{\"op\":\"status\",\"paths\":[,\"/a\"]}".utf8),
            [0xFF, 0xFE] + Array("{\"op\":\"ping\"}".utf8), [0xEF, 0xBB, 0xBF] + Array("{\"op\":\"ping\"}".utf8),
            [0, 0, 0, 0], Array(repeating: 0x7B, count: 100_000), Array(repeating: 0x5B, count: 1_000_000),
            Array("{\"op\":\"ping\",\"x\":".utf8) + Array(repeating: 0x5B, count: 65) + Array(repeating: 0x5D, count: 65) + [0x7D],
            Array("{\"op\":\"status\",\"paths\":[\"/\\ud800\"]}".utf8), Array("{\"op\":\"status\",\"paths\":[\"/\\udc00\"]}".utf8),
            Array("{\"op\":\"status\",\"paths\":[\"/\\ud800\\u0041\"]}".utf8), Array("{\"op\":\"status\",\"paths\":[\"/\\u12\"]}".utf8),
            Array("{\"op\":\"status\",\"paths\":[\"/\\x41\"]}".utf8), Array("{\"op\":\"status\",\"paths\":[\"/\\".utf8),
            Array("{\"op\":\"status\",\"paths\":[\"/a\tb\"]}".utf8), Array("{\"op\":\"status\",\"paths\":[\"/a\nb\"]}".utf8),
            Array("{\"op\":\"recall\",\"range\":[01,1]}".utf8), Array("{\"op\":\"recall\",\"range\":[-,1]}".utf8),
            Array("{\"op\":\"recall\",\"range\":[1.,1]}".utf8), Array("{\"op\":\"recall\",\"range\":[.5,1]}".utf8),
            Array("{\"op\":\"recall\",\"range\":[1e,1]}".utf8), Array("{\"op\":\"recall\",\"range\":[+1,1]}".utf8),
            Array("{\"op\":\"recall\",\"range\":[NaN,1]}".utf8), Array("{\"op\":\"recall\",\"range\":[Infinity,1]}".utf8),
            Array("{\"op\":\"recall\",\"range\":[0x10,1]}".utf8), Array("{\"op\":\"ping\",\"dry_run\":tru}".utf8),
            Array("{\"op\":\"ping\",\"dry_run\":nul}".utf8), Array("{\"op\":\"ping\",\"dry_run\":True}".utf8),
        ]
        // Invalid UTF-8 inside a string: overlong, surrogate, past U+10FFFF, lone continuation, cut short.
        for bad: [UInt8] in [[0xC0, 0xAF], [0xC1, 0xBF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
                             [0xF5, 0x80, 0x80, 0x80], [0x80], [0xBF], [0xC3], [0xE2, 0x82], [0xFE], [0xFF]] {
            corpus.append(Array("{\"op\":\"status\",\"paths\":[\"/".utf8) + bad + Array("\"]}".utf8))
        }
        let crash = runIsolated { crumb in
            for (i, b) in corpus.enumerated() {
                crumb.record(Array(b.prefix(200)))
                guard let m = refusal(b) else { return "corpus entry \(i) was accepted: \(String(decoding: b.prefix(80), as: UTF8.self))" }
                if m.isEmpty { return "corpus entry \(i): empty message" }
            }
            return nil
        }
        assertIsolatedPasses(crash, "nasty corpus")
        XCTAssertTrue(refusal(Array("{\"op\":\"ping\",\"op\":\"status\"}".utf8))?.contains("given twice") ?? false)
        XCTAssertTrue(refusal([])?.contains("empty") ?? false)
        XCTAssertTrue(refusal(Array("{\"op\":\"status\",\"paths\":[\"/\u{00}\"]}".utf8))?.contains("control character") ?? false)
    }

    /// Valid UTF-8 of every length decodes to the same string.
    func testValidUTF8AndEscapesDecode() throws {
        let s = "/a\u{7F}\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}é😀"
        let r = try ControlRequest.decode(line: Array(#"{"op":"status","paths":["\#(s)"]}"#.utf8))
        XCTAssertEqual(r.paths, [s])
        let escaped = #"{"op":"status","paths":["\/a\"b\\c\b\f\n\r\t\u00e9\ud83d\ude00\u0041"]}"#
        XCTAssertEqual(try ControlRequest.decode(line: Array(escaped.utf8)).paths, ["/a\"b\\c\u{8}\u{C}\n\r\té😀A"])
    }
}

final class StrictJSONTests: XCTestCase {
    private func parse(_ s: String) -> JSONValue? { try? StrictJSON.parse(Array(s.utf8)) }

    func testIntegersAtTheEdges() {
        XCTAssertEqual(parse("9223372036854775807"), .integer(.max))
        XCTAssertEqual(parse("-9223372036854775808"), .integer(.min))
        XCTAssertEqual(parse("9223372036854775808"), .number("9223372036854775808"))
        XCTAssertEqual(parse("-9223372036854775809"), .number("-9223372036854775809"))
        XCTAssertEqual(parse("99999999999999999999999999999"), .number("99999999999999999999999999999"))
        XCTAssertEqual(parse("-0"), .integer(0))
        XCTAssertEqual(parse("0"), .integer(0))
        XCTAssertEqual(parse("1.5e3"), .number("1.5e3"))
        XCTAssertEqual(parse("1E+2"), .number("1E+2"))
        XCTAssertEqual(parse(" \t\r\n7 \n"), .integer(7))
        for bad in ["01", "-", "--1", "+1", "1.", ".1", "1e", "1e+", "0x1", "NaN", "Infinity", "-Infinity", "1 2", "١"] {
            XCTAssertNil(parse(bad), bad)
        }
    }

    func testDepthLimit() {
        let ok = String(repeating: "[", count: StrictJSON.maxDepth) + String(repeating: "]", count: StrictJSON.maxDepth)
        XCTAssertNotNil(parse(ok))
        let deep = "[" + ok + "]"
        XCTAssertThrowsError(try StrictJSON.parse(Array(deep.utf8))) { e in
            XCTAssertTrue("\(e)".contains("nested deeper"), "\(e)")
        }
        let objects = String(repeating: "{\"a\":", count: StrictJSON.maxDepth + 1) + "1" + String(repeating: "}", count: StrictJSON.maxDepth + 1)
        XCTAssertNil(parse(objects))
    }

    func testStructure() {
        XCTAssertEqual(parse(#"{"a":[1,"x",true,false,null,{}],"b":{"c":[]}}"#),
                       .object(["a": .array([.integer(1), .string("x"), .bool(true), .bool(false), .null, .object([:])]),
                                "b": .object(["c": .array([])])]))
        for bad in ["", "{", "[", "[1,]", "[,1]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "{\"a\":1 \"b\":2}",
                    "\"abc", "\"a\\\"", "\"\\u00\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "[1]]", "{}{}"] {
            XCTAssertNil(parse(bad), bad)
        }
    }

    /// Random documents written by Foundation parse back to the same values.
    func testAgreesWithFoundationOnGeneratedDocuments() throws {
        var g = SeededGenerator(seed: 0xD0C)
        func randomString() -> String {
            let pool: [Unicode.Scalar] = ["a", "/", "\"", "\\", "\u{0}", "\u{1F}", "\u{7F}", "é", "\u{FFFF}", "😀", " ", "\n"]
            return String(String.UnicodeScalarView((0..<Int.random(in: 0...6, using: &g)).map { _ in pool.randomElement(using: &g)! }))
        }
        func random(_ depth: Int) -> (Any, JSONValue) {
            switch Int.random(in: 0..<(depth > 5 ? 4 : 7), using: &g) {
            case 0: return (NSNull(), .null)
            case 1: let b = Bool.random(using: &g); return (b, .bool(b))
            case 2:
                let n = [Int64.min, Int64.max, 0, -1, 1, Int64.random(in: .min ... .max, using: &g)].randomElement(using: &g)!
                return (NSNumber(value: n), .integer(n))
            case 3: let s = randomString(); return (s, .string(s))
            case 4, 5:
                var a: [Any] = [], v: [JSONValue] = []
                for _ in 0..<Int.random(in: 0...4, using: &g) { let (x, y) = random(depth + 1); a.append(x); v.append(y) }
                return (a, .array(v))
            default:
                var o: [String: Any] = [:], v: [String: JSONValue] = [:]
                for _ in 0..<Int.random(in: 0...4, using: &g) {
                    let k = randomString()
                    let (x, y) = random(depth + 1)
                    o[k] = x; v[k] = y
                }
                return (o, .object(v))
            }
        }
        for i in 0..<2000 {
            let (doc, value) = random(0)
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.fragmentsAllowed])
            XCTAssertEqual(try StrictJSON.parse([UInt8](data)), value, "document \(i): \(String(decoding: data, as: UTF8.self))")
        }
    }
}

final class ControlRequestFuzzTests: XCTestCase {
    private static let seeds: [[UInt8]] = [
        ControlCodec.encode(ControlRequest(op: .recall, paths: ["/mnt/a"], range: [4096, 1 << 20])),
        ControlCodec.encode(ControlRequest(op: .migrate, paths: ["/mnt"], olderThanSeconds: 86_400, minSize: 65_536,
                                           exclude: ["*.tmp"], dryRun: true, jobs: 8, progress: true, incremental: true)),
        ControlCodec.encode(ControlRequest(op: .journalList, paths: ["/mnt/ü"], since: 3)),
        ControlCodec.encode(ControlRequest(op: .migrate, jobs: 2, policy: "nightly")),
        Array(#"{"op":"recall","range":[9223372036854775806,1],"paths":["/a"]}"#.utf8),
    ]

    /// Every truncation of a valid line is refused (a request cut short is never run as
    /// something else); every single bit flip and every deleted byte decodes to an
    /// in-range request or is refused. In a child process, so a trap fails the test.
    func testExhaustiveTruncationsBitFlipsAndDeletions() {
        let seeds = Self.seeds
        let outcome = runIsolated { crumb in
            for seed in seeds {
                for n in 0..<seed.count {
                    let b = Array(seed[0..<n])
                    crumb.record(b)
                    if refusal(b) == nil { return "prefix of \(n) bytes decoded: \(String(decoding: b, as: UTF8.self))" }
                }
                var variants: [[UInt8]] = []
                for bit in 0..<(seed.count * 8) {
                    var b = seed
                    b[bit / 8] ^= 1 << UInt8(bit % 8)
                    variants.append(b)
                }
                for i in 0..<seed.count {
                    var b = seed
                    b.remove(at: i)
                    variants.append(b)
                }
                for b in variants {
                    crumb.record(b)
                    if let r = try? ControlRequest.decode(line: b), let problem = outOfRange(r) {
                        return "accepted an out-of-range request (\(problem)): \(String(decoding: b, as: UTF8.self))"
                    }
                }
            }
            return nil
        }
        assertIsolatedPasses(outcome, "control request bit flips")
    }

    /// Random bytes, random mutations, and structure-aware requests with extreme numbers:
    /// decode either throws or returns a request whose numbers are in range.
    func testRandomRequestsNeverTrapNorPassOutOfRangeValues() {
        let seeds = Self.seeds
        let outcome = runIsolated { crumb in
            var g = SeededGenerator(seed: 0xC0_47_20_1)
            let extremes = ["0", "-0", "1", "-1", "64", "65", "9223372036854775807", "-9223372036854775808",
                            "9223372036854775808", "4611686018427387904", "1e400", "0.5", "-1e-400", "\"7\"", "null", "true",
                            "[]", "{}", "[1]", "[1,2]", "[9223372036854775807,1]", "[-1,1]", "[0,0]", "[1,2,3]"]
            let keys = ["op", "paths", "range", "older_than_seconds", "min_size", "exclude", "dry_run", "jobs", "progress",
                        "since", "incremental", "x"]
            let ops = ["\"ping\"", "\"recall\"", "\"migrate\"", "\"journal_list\"", "\"bogus\"", "1"]
            var accepted = 0
            for iteration in 0..<30_000 {
                var b: [UInt8]
                switch iteration % 3 {
                case 0:
                    b = (0..<Int.random(in: 0...120, using: &g)).map { _ in
                        Bool.random(using: &g) ? UInt8.random(in: 0...255, using: &g)
                                               : Array("{}[],:\"0123456789-.eE".utf8).randomElement(using: &g)!
                    }
                case 1:
                    var members = ["\"op\":" + ops.randomElement(using: &g)!]
                    for _ in 0..<Int.random(in: 0...5, using: &g) {
                        let k = keys.randomElement(using: &g)!
                        let v: String
                        switch k {
                        case "paths", "exclude": v = ["[\"/a\"]", "[\"rel\"]", "[\"/a\\u0000\"]", "[]", "[1]", "\"/a\""].randomElement(using: &g)!
                        case "op": continue
                        default: v = extremes.randomElement(using: &g)!
                        }
                        members.append("\"\(k)\":\(v)")
                    }
                    b = Array(("{" + members.shuffled(using: &g).joined(separator: ",") + "}").utf8)
                default:
                    b = seeds.randomElement(using: &g)!
                    for _ in 0..<Int.random(in: 1...4, using: &g) {
                        switch Int.random(in: 0..<5, using: &g) {
                        case 0 where !b.isEmpty: b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...255, using: &g)
                        case 1: b = Array(b.prefix(Int.random(in: 0...b.count, using: &g)))
                        case 2: b.insert(Array("\"[]{},:\\0-9e".utf8).randomElement(using: &g)!, at: Int.random(in: 0...b.count, using: &g))
                        case 3 where !b.isEmpty: b.remove(at: Int.random(in: 0..<b.count, using: &g))
                        default:
                            // Splice an extreme number over a run of digits.
                            if let i = b.firstIndex(where: { (0x30...0x39).contains($0) }) {
                                var j = i
                                while j < b.count, (0x30...0x39).contains(b[j]) { j += 1 }
                                b.replaceSubrange(i..<j, with: Array(extremes.randomElement(using: &g)!.utf8))
                            }
                        }
                    }
                }
                crumb.record(b)
                do throws(ControlRequestError) {
                    let r = try ControlRequest.decode(line: b)
                    if let problem = outOfRange(r) {
                        return "iteration \(iteration): accepted an out-of-range request (\(problem)): \(String(decoding: b, as: UTF8.self))"
                    }
                    accepted += 1
                } catch {
                    if error.message.isEmpty { return "iteration \(iteration): an error without a message" }
                }
            }
            // The fuzz must reach the success path too, or the property was never exercised.
            return accepted > 500 ? nil : "only \(accepted) inputs decoded"
        }
        assertIsolatedPasses(outcome, "control request fuzz")
    }
}
