/// A small, strict JSON reader for input hsmd must not trust (control requests).
///
/// Foundation's JSONDecoder reports a number that does not fit its field, or a fraction
/// where an integer belongs, as "The given data was not valid JSON" without naming the
/// field; here every value keeps enough of itself for the caller to say exactly what was
/// wrong and where. Bounded: nesting deeper than `maxDepth` is an error (no unbounded
/// recursion on a thread's stack), strings must be valid UTF-8, and duplicate keys are
/// refused rather than resolved by a guess.
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in 64 bits.
    case integer(Int64)
    /// Any other number, as written (a fraction, an exponent, or too big for 64 bits).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// What a value is, for messages: "a string", "an array".
    public var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .integer: return "an integer"
        case .number(let text): return "the number \(text)"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

public struct JSONSyntaxError: Error, Equatable, CustomStringConvertible {
    /// Byte offset of the problem in the input.
    public let offset: Int
    public let reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

public enum StrictJSON {
    /// Deeper nesting than any request needs; deep enough to keep unknown keys usable.
    public static let maxDepth = 64

    /// Parses exactly one JSON value, with only whitespace around it.
    public static func parse(_ bytes: [UInt8]) throws(JSONSyntaxError) -> JSONValue {
        var p = Parser(bytes: bytes)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.at == bytes.count else { throw p.error("unexpected \(p.describeHere()) after the JSON value") }
        return v
    }

    private struct Parser {
        let bytes: [UInt8]
        var at = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        func error(_ reason: String) -> JSONSyntaxError { JSONSyntaxError(offset: at, reason: reason) }

        func describeHere() -> String {
            guard at < bytes.count else { return "end of input" }
            let b = bytes[at]
            if b >= 0x21 && b < 0x7F { return "character '\(Character(Unicode.Scalar(b)))'" }
            return "byte 0x\(String(b, radix: 16))"
        }

        mutating func skipWhitespace() {
            while at < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
        }

        mutating func expect(_ literal: String, _ value: JSONValue) throws(JSONSyntaxError) -> JSONValue {
            let l = Array(literal.utf8)
            guard bytes.count - at >= l.count, Array(bytes[at..<at + l.count]) == l else {
                throw error("unexpected \(describeHere())")
            }
            at += l.count
            return value
        }

        mutating func value(depth: Int) throws(JSONSyntaxError) -> JSONValue {
            guard at < bytes.count else { throw error("unexpected end of input") }
            switch bytes[at] {
            case UInt8(ascii: "{"): return try object(depth: depth + 1)
            case UInt8(ascii: "["): return try array(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try expect("true", .bool(true))
            case UInt8(ascii: "f"): return try expect("false", .bool(false))
            case UInt8(ascii: "n"): return try expect("null", .null)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw error("unexpected \(describeHere())")
            }
        }

        mutating func array(depth: Int) throws(JSONSyntaxError) -> JSONValue {
            guard depth <= StrictJSON.maxDepth else { throw error("nested deeper than \(StrictJSON.maxDepth) levels") }
            at += 1
            var out: [JSONValue] = []
            skipWhitespace()
            if at < bytes.count && bytes[at] == UInt8(ascii: "]") { at += 1; return .array(out) }
            while true {
                skipWhitespace()
                out.append(try value(depth: depth))
                skipWhitespace()
                guard at < bytes.count else { throw error("unexpected end of input in an array") }
                if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                if bytes[at] == UInt8(ascii: "]") { at += 1; return .array(out) }
                throw error("expected ',' or ']' in an array, found \(describeHere())")
            }
        }

        mutating func object(depth: Int) throws(JSONSyntaxError) -> JSONValue {
            guard depth <= StrictJSON.maxDepth else { throw error("nested deeper than \(StrictJSON.maxDepth) levels") }
            at += 1
            var out: [String: JSONValue] = [:]
            skipWhitespace()
            if at < bytes.count && bytes[at] == UInt8(ascii: "}") { at += 1; return .object(out) }
            while true {
                skipWhitespace()
                guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw error("expected a key in quotes, found \(describeHere())") }
                let keyAt = at
                let key = try string()
                skipWhitespace()
                guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw error("expected ':' after a key, found \(describeHere())") }
                at += 1
                skipWhitespace()
                let v = try value(depth: depth)
                guard out.updateValue(v, forKey: key) == nil else {
                    throw JSONSyntaxError(offset: keyAt, reason: "key \"\(key)\" given twice")
                }
                skipWhitespace()
                guard at < bytes.count else { throw error("unexpected end of input in an object") }
                if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
                if bytes[at] == UInt8(ascii: "}") { at += 1; return .object(out) }
                throw error("expected ',' or '}' in an object, found \(describeHere())")
            }
        }

        mutating func number() throws(JSONSyntaxError) -> JSONValue {
            let start = at
            func digits(_ p: inout Parser) -> Int {
                let s = p.at
                while p.at < p.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p.bytes[p.at]) { p.at += 1 }
                return p.at - s
            }
            let negative = bytes[at] == UInt8(ascii: "-")
            if negative { at += 1 }
            let intStart = at
            let intDigits = digits(&self)
            guard intDigits > 0 else { throw error("expected a digit") }
            if intDigits > 1 && bytes[intStart] == UInt8(ascii: "0") { throw JSONSyntaxError(offset: intStart, reason: "a number may not start with 0") }
            var integral = true
            if at < bytes.count && bytes[at] == UInt8(ascii: ".") {
                at += 1
                guard digits(&self) > 0 else { throw error("expected a digit after '.'") }
                integral = false
            }
            if at < bytes.count && (bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E")) {
                at += 1
                if at < bytes.count && (bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-")) { at += 1 }
                guard digits(&self) > 0 else { throw error("expected a digit in the exponent") }
                integral = false
            }
            let text = String(decoding: bytes[start..<at], as: UTF8.self)
            guard integral else { return .number(text) }
            // Accumulate negatively so Int64.min fits; any overflow keeps the text instead.
            var v: Int64 = 0
            for b in bytes[intStart..<intStart + intDigits] {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.subtractingReportingOverflow(Int64(b - UInt8(ascii: "0")))
                if o1 || o2 { return .number(text) }
                v = s
            }
            if negative { return .integer(v) }
            let (pos, o) = Int64(0).subtractingReportingOverflow(v)
            return o ? .number(text) : .integer(pos)
        }

        mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
            guard bytes.count - at >= 4 else { throw error("expected 4 hex digits after \\u") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[at]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: throw error("expected a hex digit after \\u, found \(describeHere())")
                }
                v = v << 4 | UInt32(d)
                at += 1
            }
            return v
        }

        /// A string in quotes; `at` is on the opening quote.
        mutating func string() throws(JSONSyntaxError) -> String {
            at += 1
            var out: [UInt8] = []
            while true {
                guard at < bytes.count else { throw error("unterminated string") }
                let b = bytes[at]
                switch b {
                case UInt8(ascii: "\""):
                    at += 1
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    at += 1
                    guard at < bytes.count else { throw error("unterminated escape") }
                    let e = bytes[at]
                    at += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard bytes.count - at >= 2, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else {
                                throw error("a \\u escape of a high surrogate must be followed by a low one")
                            }
                            at += 2
                            let low = try hex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw error("a \\u escape of a high surrogate must be followed by a low one") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(scalar) {
                            throw error("a lone low surrogate in a \\u escape")
                        }
                        guard let s = Unicode.Scalar(scalar) else { throw error("\\u escape is not a Unicode scalar") }
                        out += Array(String(Character(s)).utf8)
                    default:
                        at -= 1
                        throw error("unknown escape \\\(describeHere())")
                    }
                case 0x00..<0x20:
                    throw error("a control character (byte 0x\(String(b, radix: 16))) inside a string; escape it")
                case 0x20..<0x80:
                    out.append(b)
                    at += 1
                default:
                    let n = try utf8Sequence()
                    out += bytes[at..<at + n]
                    at += n
                }
            }
        }

        /// The length of the well-formed UTF-8 sequence at `at` (Unicode 15, table 3-7).
        func utf8Sequence() throws(JSONSyntaxError) -> Int {
            let b0 = bytes[at]
            let n: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch b0 {
            case 0xC2...0xDF: n = 2
            case 0xE0: n = 3; lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: n = 3
            case 0xED: n = 3; hi = 0x9F
            case 0xF0: n = 4; lo = 0x90
            case 0xF1...0xF3: n = 4
            case 0xF4: n = 4; hi = 0x8F
            default: throw error("not UTF-8 (byte 0x\(String(b0, radix: 16)))")
            }
            guard bytes.count - at >= n else { throw error("not UTF-8 (a sequence cut short)") }
            for i in 1..<n {
                let b = bytes[at + i]
                let (l, h) = i == 1 ? (lo, hi) : (UInt8(0x80), UInt8(0xBF))
                guard (l...h).contains(b) else { throw JSONSyntaxError(offset: at + i, reason: "not UTF-8 (byte 0x\(String(b, radix: 16)))") }
            }
            return n
        }
    }
}
