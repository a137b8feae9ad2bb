import HSMKernel

/// An S3 access key pair. The secret never leaves this type except into an HMAC: its
/// description names the key id only, so no log line or error can carry it.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let accessKeyID: String
    fileprivate let secretAccessKey: String

    public init(accessKeyID: String, secretAccessKey: String) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
    }

    public var description: String { "access key \(accessKeyID)" }
    public var debugDescription: String { description }
}

/// AWS Signature Version 4 (header form) for one region and service.
public struct SigV4Signer: Sendable {
    public let credentials: S3Credentials
    public let region: String
    public let service: String

    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// SHA-256 of an empty payload, hex.
    public static let emptyPayloadHash = hex(SHA256.hash([]))

    /// The value of the Authorization header for a request. `path` is the canonical URI
    /// (already percent-encoded, as sent); `headers` are every header to sign (host and
    /// x-amz-date among them); `amzDate` is the x-amz-date value (YYYYMMDD'T'HHMMSS'Z').
    public func authorization(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                              payloadHash: String, amzDate: String) -> String {
        let (canonical, signedHeaders) = Self.canonicalRequest(method: method, path: path, query: query, headers: headers,
                                                                payloadHash: payloadHash)
        let date = String(amzDate.prefix(8))
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let toSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(hex(SHA256.hash(Array(canonical.utf8))))"
        var key = SHA256.hmac(key: Array("AWS4\(credentials.secretAccessKey)".utf8), Array(date.utf8))
        for part in [region, service, "aws4_request"] { key = SHA256.hmac(key: key, Array(part.utf8)) }
        let signature = hex(SHA256.hmac(key: key, Array(toSign.utf8)))
        return "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
    }

    /// The canonical request and the signed-headers list (exposed for tests).
    public static func canonicalRequest(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                                        payloadHash: String) -> (String, String) {
        let q = query.map { (uriEncode($0.0, keepSlash: false), uriEncode($0.1, keepSlash: false)) }
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        // Lower-case names, values trimmed with inner runs of spaces folded; repeated
        // names joined by commas in the order given.
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            merged[name.lowercased(), default: []].append(foldSpaces(value))
        }
        let names = merged.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(merged[$0, default: []].joined(separator: ","))\n" }.joined()
        let signed = names.joined(separator: ";")
        return ("\(method)\n\(path.isEmpty ? "/" : path)\n\(q)\n\(canonicalHeaders)\n\(signed)\n\(payloadHash)", signed)
    }

    static func foldSpaces(_ s: String) -> String {
        var out = ""
        var space = false
        for c in s.trimmingSpaces() {
            if c == " " || c == "\t" { space = true; continue }
            if space && !out.isEmpty { out.append(" ") }
            space = false
            out.append(c)
        }
        return out
    }

    /// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, '/' stays
    /// in a path, everything else is %XX of its UTF-8 bytes.
    public static func uriEncode(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += "%" + hexDigits(b, uppercase: true)
            }
        }
        return out
    }

    /// x-amz-date for a time in seconds since 1970 (UTC).
    public static func amzDate(secondsSince1970 t: Int64) -> String {
        let days = t >= 0 ? t / 86400 : (t - 86399) / 86400
        let secs = t - days * 86400
        // Civil date from days since 1970 (Howard Hinnant's algorithm).
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func pad(_ v: Int64, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(y, 4))\(pad(m, 2))\(pad(d, 2))T\(pad(secs / 3600, 2))\(pad(secs % 3600 / 60, 2))\(pad(secs % 60, 2))Z"
    }
}

func hexDigits(_ b: UInt8, uppercase: Bool = false) -> String {
    let digits = Array((uppercase ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
    return String(decoding: [digits[Int(b >> 4)], digits[Int(b & 15)]], as: UTF8.self)
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { hexDigits($0) }.joined() }

extension StringProtocol {
    func trimmingSpaces() -> Substring {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return s
    }
}
