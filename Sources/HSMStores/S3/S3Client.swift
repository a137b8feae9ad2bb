import Foundation
import Glibc
import HSMKernel

/// Where an S3 service is and how to reach it (path-style addressing: /bucket/key).
public struct S3Endpoint: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var secure: Bool

    /// Parses "http://host[:port][/]" or "https://host[:port][/]".
    public static func parse(_ url: String) -> Result<S3Endpoint, S3Error> {
        let rest: Substring
        let secure: Bool
        if url.hasPrefix("http://") { rest = url.dropFirst(7); secure = false }
        else if url.hasPrefix("https://") { rest = url.dropFirst(8); secure = true }
        else { return .failure(.config("endpoint \(url.debugDescription) must start with http:// or https://")) }
        var hostPort = rest
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else {
                return .failure(.config("endpoint \(url.debugDescription) has a path; give only scheme, host and port (the bucket is its own key)"))
            }
            hostPort = rest[..<slash]
        }
        var host = String(hostPort)
        var port: UInt16 = secure ? 443 : 80
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { return .failure(.config("endpoint \(url.debugDescription): unclosed [")) }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = UInt16(after.dropFirst()), p > 0 else { return .failure(.config("endpoint \(url.debugDescription): bad port")) }
                port = p
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            guard let p = UInt16(hostPort[hostPort.index(after: colon)...]), p > 0 else { return .failure(.config("endpoint \(url.debugDescription): bad port")) }
            host = String(hostPort[..<colon])
            port = p
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "@" }) else {
            return .failure(.config("endpoint \(url.debugDescription): no host"))
        }
        return .success(S3Endpoint(host: host, port: port, secure: secure))
    }
}

/// A failed S3 request: what was asked, of which key, and what came back. Never carries
/// a credential (the request's headers are not kept).
public enum S3Error: Error, CustomStringConvertible, Sendable, Equatable {
    /// The server answered with an error status.
    case status(Int, code: String, message: String, operation: String, key: String)
    /// The server could not be reached or the exchange broke.
    case transport(String, operation: String, key: String)
    /// The answer was not what S3 sends.
    case protocolError(String, operation: String, key: String)
    /// The server's certificate was refused, or TLS with it failed the same way each try.
    case tls(String, operation: String, key: String)
    case config(String)

    public var description: String {
        switch self {
        case .status(let s, let code, let message, let op, let key):
            let detail = [code, message].filter { !$0.isEmpty }.joined(separator: ": ")
            return "S3 \(op) \(key): HTTP \(s)\(detail.isEmpty ? "" : " (\(detail))")"
        case .transport(let why, let op, let key): return "S3 \(op) \(key): \(why)"
        case .protocolError(let why, let op, let key): return "S3 \(op) \(key): \(why)"
        case .tls(let why, let op, let key): return "S3 \(op) \(key): \(why)"
        case .config(let why): return why
        }
    }

    public var httpStatus: Int? { if case .status(let s, _, _, _, _) = self { return s }; return nil }

    /// Worth another attempt: the server was busy or failing, or the connection broke.
    var retryable: Bool {
        switch self {
        case .status(let s, let code, _, _, _): return (s >= 500 && s != 501) || s == 429 || code == "SlowDown" || code == "RequestTimeout"
        case .transport: return true
        case .protocolError, .tls, .config: return false
        }
    }
}

/// The S3 operations hsmd uses, signed with SigV4, each retried with backoff on 5xx,
/// throttling and broken connections.
public final class S3Client: Sendable {
    public let endpoint: S3Endpoint
    public let bucket: String
    public let signer: SigV4Signer
    public let http: HTTPClient
    /// When a failed request goes again; its budget is the recall's recall_timeout.
    public let retry: RetryPolicy

    public init(endpoint: S3Endpoint, bucket: String, region: String, credentials: S3Credentials,
                connections: Int, timeoutMillis: Int, retry: RetryPolicy, tls: TLSContext? = nil) {
        self.endpoint = endpoint
        self.bucket = bucket
        signer = SigV4Signer(credentials: credentials, region: region)
        http = HTTPClient(host: endpoint.host, port: endpoint.port, timeoutMillis: timeoutMillis, maxConnections: connections, tls: tls)
        self.retry = retry
    }

    // MARK: operations

    /// HEAD of the bucket: reachable, exists, and these credentials may see it.
    public func headBucket(retry policy: RetryPolicy? = nil) throws(S3Error) {
        _ = try request("HEAD", key: nil, operation: "HEAD bucket", expect: [200], retry: policy)
    }

    /// PUT of a whole object from memory. The payload's SHA-256 is signed, so the server
    /// refuses a body that arrives altered.
    public func putObject(_ key: String, body: UnsafeRawBufferPointer, retry policy: RetryPolicy? = nil) throws(S3Error) {
        _ = try request("PUT", key: key, body: body, operation: "PUT", expect: [200], retry: policy)
    }

    public func putObject(_ key: String, bytes: [UInt8], retry policy: RetryPolicy? = nil) throws(S3Error) {
        var failure: S3Error?
        bytes.withUnsafeBytes { b in
            do throws(S3Error) { try putObject(key, body: b, retry: policy) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// GET of bytes `range` into `buffer` (exactly range.count bytes). Returns the count.
    public func getObject(_ key: String, range: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(S3Error) -> Int {
        guard !range.isEmpty else { return 0 }
        let r = try request("GET", key: key, headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")],
                            operation: "GET", expect: [206, 200], sink: .buffer(buffer))
        let expected = Int(range.upperBound - range.lowerBound)
        guard r.bodyLength == expected else {
            throw .protocolError("asked for bytes \(range.lowerBound)..<\(range.upperBound), got \(r.bodyLength)", operation: "GET", key: key)
        }
        if r.status == 200 && range.lowerBound != 0 {
            throw .protocolError("the server ignored the Range header", operation: "GET", key: key)
        }
        return r.bodyLength
    }

    /// GET of a whole small object (a record), at most `limit` bytes.
    public func getObject(_ key: String, limit: Int, retry policy: RetryPolicy? = nil) throws(S3Error) -> [UInt8] {
        try request("GET", key: key, operation: "GET", expect: [200], sink: .collect(limit: limit), retry: policy).body
    }

    /// HEAD of an object: its size, or nil when it does not exist.
    public func headObject(_ key: String) throws(S3Error) -> Int64? {
        do throws(S3Error) {
            let r = try request("HEAD", key: key, operation: "HEAD", expect: [200])
            guard let len = r.header("content-length").flatMap({ Int64($0) }) else {
                throw S3Error.protocolError("HEAD without Content-Length", operation: "HEAD", key: key)
            }
            return len
        } catch {
            if error.httpStatus == 404 { return nil }
            throw error
        }
    }

    /// DELETE; an object that is already gone is fine.
    public func deleteObject(_ key: String, retry policy: RetryPolicy? = nil) throws(S3Error) {
        _ = try request("DELETE", key: key, operation: "DELETE", expect: [204, 200, 404], retry: policy)
    }

    /// Every key under `prefix` (ListObjectsV2, page by page).
    public func listKeys(prefix: String) throws(S3Error) -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let r = try request("GET", key: nil, query: query, operation: "LIST", expect: [200], sink: .collect(limit: 16 << 20))
            guard let page = S3ListPage.parse(r.body) else {
                throw .protocolError("the ListObjectsV2 answer is not a ListBucketResult", operation: "LIST", key: prefix)
            }
            keys += page.keys
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return keys
    }

    /// Whether any key starts with `prefix` (one ListObjectsV2 of at most one key).
    public func hasKeys(prefix: String, retry policy: RetryPolicy? = nil) throws(S3Error) -> Bool {
        let r = try request("GET", key: nil, query: [("list-type", "2"), ("max-keys", "1"), ("prefix", prefix)], operation: "LIST",
                            expect: [200], sink: .collect(limit: 1 << 20), retry: policy)
        guard let page = S3ListPage.parse(r.body) else {
            throw .protocolError("the ListObjectsV2 answer is not a ListBucketResult", operation: "LIST", key: prefix)
        }
        return !page.keys.isEmpty
    }

    public func createMultipartUpload(_ key: String) throws(S3Error) -> String {
        let r = try request("POST", key: key, query: [("uploads", "")], body: UnsafeRawBufferPointer(start: nil, count: 0),
                            operation: "CreateMultipartUpload", expect: [200])
        guard let id = S3MultipartXML.uploadID(r.body) else {
            throw .protocolError("no UploadId in the answer", operation: "CreateMultipartUpload", key: key)
        }
        return id
    }

    /// Uploads part `number` (1-based); returns its ETag.
    public func uploadPart(_ key: String, uploadID: String, number: Int, body: UnsafeRawBufferPointer) throws(S3Error) -> String {
        let r = try request("PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: body,
                            operation: "UploadPart \(number)", expect: [200])
        guard let etag = r.header("etag"), !etag.isEmpty else {
            throw .protocolError("no ETag for part \(number)", operation: "UploadPart", key: key)
        }
        return etag
    }

    public func completeMultipartUpload(_ key: String, uploadID: String, etags: [String]) throws(S3Error) {
        let body = S3MultipartXML.completeRequest(etags: etags)
        var failure: S3Error?
        body.withUnsafeBytes { b in
            do throws(S3Error) {
                let r = try request("POST", key: key, query: [("uploadId", uploadID)], body: b,
                                    operation: "CompleteMultipartUpload", expect: [200])
                if !S3MultipartXML.completed(r.body) {
                    let e = S3ErrorBody.parse(r.body)
                    throw S3Error.status(200, code: e?.code ?? "", message: e?.message ?? "not a CompleteMultipartUploadResult",
                                         operation: "CompleteMultipartUpload", key: key)
                }
            } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// The multipart uploads begun and not finished under `prefix`: (key, upload id).
    public func listMultipartUploads(prefix: String, retry policy: RetryPolicy? = nil) throws(S3Error) -> [(String, String)] {
        var all: [(String, String)] = []
        var marker: (String, String)?
        var pages = 0
        repeat {
            var query = [("uploads", ""), ("prefix", prefix)]
            if let (k, id) = marker { query += [("key-marker", k), ("upload-id-marker", id)] }
            let r = try request("GET", key: nil, query: query, operation: "ListMultipartUploads", expect: [200], sink: .collect(limit: 16 << 20),
                                retry: policy)
            guard let page = S3MultipartXML.uploads(r.body) else {
                throw .protocolError("the answer is not a ListMultipartUploadsResult", operation: "ListMultipartUploads", key: prefix)
            }
            all += page.uploads
            marker = page.next
            pages += 1
        } while marker != nil && pages < 1000
        return all
    }

    public func abortMultipartUpload(_ key: String, uploadID: String, retry policy: RetryPolicy? = nil) throws(S3Error) {
        _ = try request("DELETE", key: key, query: [("uploadId", uploadID)], operation: "AbortMultipartUpload", expect: [204, 200, 404],
                        retry: policy)
    }

    // MARK: the request

    /// The path of a key, path-style and percent-encoded.
    func target(key: String?) -> String {
        "/" + SigV4Signer.uriEncode(bucket, keepSlash: false) + (key.map { "/" + SigV4Signer.uriEncode($0, keepSlash: true) } ?? "")
    }

    func request(_ method: String, key: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [],
                 body: UnsafeRawBufferPointer? = nil, operation: String, expect: Set<Int>,
                 sink: HTTPBodySink = .collect(limit: 1 << 20), retry policy: RetryPolicy? = nil) throws(S3Error) -> HTTPResponse {
        let path = target(key: key)
        let what = key.map { "\(bucket)/\($0)" } ?? bucket
        let queryString = query.map { q in
            SigV4Signer.uriEncode(q.0, keepSlash: false) + (q.1.isEmpty && q.0 == "uploads" ? "" : "=" + SigV4Signer.uriEncode(q.1, keepSlash: false))
        }.joined(separator: "&")
        let requestTarget = queryString.isEmpty ? path : path + "?" + queryString
        let payloadHash = body.map { $0.count == 0 ? SigV4Signer.emptyPayloadHash : hex(SHA256.hash($0)) } ?? SigV4Signer.emptyPayloadHash
        let policy = policy ?? retry
        let began = ContinuousClock.now
        var attempts = 0
        while true {
            attempts += 1
            let elapsed = Self.millis(ContinuousClock.now - began)
            let amzDate = SigV4Signer.amzDate(secondsSince1970: Int64(Date().timeIntervalSince1970))
            var headers = extra + [("x-amz-content-sha256", payloadHash), ("x-amz-date", amzDate)]
            let signed = headers + [("host", http.hostHeader)]
            headers.append(("Authorization", signer.authorization(method: method, path: path, query: query, headers: signed,
                                                                  payloadHash: payloadHash, amzDate: amzDate)))
            let failure: S3Error
            do {
                // A new connection's connect gets at most what is left of the budget.
                let response = try http.send(method: method, target: requestTarget, headers: headers, body: body, sink: sink,
                                             connectMillis: max(1, policy.budgetMillis - elapsed))
                if expect.contains(response.status) { return response }
                let e = S3ErrorBody.parse(response.body)
                failure = .status(response.status, code: e?.code ?? "", message: e?.message ?? "", operation: operation, key: what)
            } catch {
                switch error {
                case .malformed(let why): failure = .protocolError(why, operation: operation, key: what)
                case .tls(let e) where e.refused: failure = .tls(e.description, operation: operation, key: what)
                default: failure = .transport(error.description, operation: operation, key: what)
                }
            }
            let now = Self.millis(ContinuousClock.now - began)
            switch policy.next(after: failure, attempts: attempts, elapsedMillis: now, jitter: Double.random(in: 0..<1)) {
            case .retry(let wait):
                usleep(UInt32(clamping: wait * 1000))
            case .fail:
                throw attempts > 1 ? failure.givenUp(attempts: attempts, millis: now) : failure
            }
        }
    }

    static func millis(_ d: Duration) -> Int {
        let (s, atto) = d.components
        return Int(s) * 1000 + Int(atto / 1_000_000_000_000_000)
    }
}

extension S3Error {
    /// The last failure of a request given up after several attempts, saying so.
    func givenUp(attempts: Int, millis: Int) -> S3Error {
        let note = "gave up after \(attempts) attempts in \(String(format: "%.1f", Double(millis) / 1000)) s"
        switch self {
        case .status(let s, let code, let message, let op, let key):
            return .status(s, code: code, message: message.isEmpty ? note : "\(message); \(note)", operation: op, key: key)
        case .transport(let why, let op, let key): return .transport("\(why); \(note)", operation: op, key: key)
        case .protocolError(let why, let op, let key): return .protocolError("\(why); \(note)", operation: op, key: key)
        case .tls(let why, let op, let key): return .tls("\(why); \(note)", operation: op, key: key)
        case .config: return self
        }
    }
}
