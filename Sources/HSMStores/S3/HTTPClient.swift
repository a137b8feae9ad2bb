import Dispatch
import Glibc
import HSMKernel
import Synchronization

/// A response's status, headers and (for errors and small bodies) its bytes.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    /// The body when it was collected (not when it went into the caller's buffer).
    public var body: [UInt8]
    /// Bytes written into the caller's buffer.
    public var bodyLength: Int = 0

    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first { $0.0.lowercased() == n }?.1
    }
}

public enum HTTPError: Error, CustomStringConvertible, Sendable {
    /// No connection, or it broke; `beforeResponse`: nothing of a response had arrived,
    /// so the request can be sent again on another connection.
    case transport(SystemError, beforeResponse: Bool)
    /// The server's bytes are not HTTP/1.1 as this client reads it.
    case malformed(String)
    /// No connection came free within the timeout.
    case poolTimeout(String)
    /// The TLS handshake failed; `refused` when the server's certificate was refused or
    /// its TLS cannot be spoken with (no use trying again).
    case tls(TLSError)

    public var description: String {
        switch self {
        case .transport(let e, _): return e.description
        case .malformed(let why): return "bad HTTP response: \(why)"
        case .poolTimeout(let peer): return "no connection to \(peer) came free within the timeout"
        case .tls(let e): return e.description
        }
    }
}

/// Where the body of a 2xx response goes.
public enum HTTPBodySink {
    /// Collected, at most this many bytes (more is an error).
    case collect(limit: Int)
    /// Straight into this buffer; a longer body is an error.
    case buffer(UnsafeMutableRawBufferPointer)
}

/// A kept-alive connection waiting in the pool.
private struct PooledStream: @unchecked Sendable {
    // @unchecked: a pooled connection belongs to the pool alone; whoever takes it out owns
    // it until it puts it back or closes it, so no two threads use it at once.
    let stream: any ByteStream
}

/// HTTP/1.1 over blocking sockets, plain or TLS, with keep-alive and at most
/// `maxConnections` requests at once. Runs on the caller's thread (hsmd's own threads,
/// never Swift's cooperative pool); every connect, send and receive is bounded by
/// `timeoutMillis`.
public final class HTTPClient: Sendable {
    public let host: String
    public let port: UInt16
    public let timeoutMillis: Int
    public let maxConnections: Int
    /// Set for https: every connection is TLS, verified against this context and `host`.
    public let tls: TLSContext?
    /// Error bodies are short XML; longer ones are cut here.
    static let errorBodyLimit = 64 << 10
    static let headerLimit = 64 << 10
    private let slots: DispatchSemaphore
    private let idle = Mutex<[PooledStream]>([])

    public init(host: String, port: UInt16, timeoutMillis: Int, maxConnections: Int, tls: TLSContext? = nil) {
        self.host = host
        self.port = port
        self.timeoutMillis = max(1, timeoutMillis)
        self.maxConnections = max(1, maxConnections)
        self.tls = tls
        slots = DispatchSemaphore(value: max(1, maxConnections))
    }

    deinit {
        for p in idle.withLock({ $0 }) { p.stream.close() }
    }

    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (tls == nil ? 80 : 443) ? name : "\(name):\(port)"
    }

    private func takeIdle() -> PooledStream? { idle.withLock { $0.popLast() } }

    /// Closes every idle connection: one of them turned out closed by the server, and the
    /// others most likely were too (a restart, an idle timeout).
    private func dropIdle() {
        for p in idle.withLock({ pool -> [PooledStream] in defer { pool.removeAll() }; return pool }) { p.stream.close() }
    }

    /// A fresh connection: TCP within `connectMillis`, then TLS when https.
    private func open(connectMillis: Int) throws(HTTPError) -> any ByteStream {
        let socket: TCPSocket
        do { socket = try TCPSocket.connect(host: host, port: port, timeoutMillis: connectMillis, ioTimeoutMillis: timeoutMillis) } catch {
            throw .transport(error, beforeResponse: true)
        }
        guard let tls else { return socket }
        do { return try tls.connect(socket, host: host) } catch {
            if error.refused { throw .tls(error) }
            throw .transport(SystemError(errno: error.errno, operation: error.reason, path: error.peer), beforeResponse: true)
        }
    }

    /// Sends one request and reads its response. A kept-alive connection that turns out
    /// closed before any response byte is retried once on a fresh one (the server closed
    /// it; nothing was done). `connectMillis` bounds a new connection's connect (at most
    /// the timeout).
    public func send(method: String, target: String, headers: [(String, String)], body: UnsafeRawBufferPointer?,
                     sink: HTTPBodySink, connectMillis: Int? = nil) throws(HTTPError) -> HTTPResponse {
        guard slots.wait(timeout: .now() + .milliseconds(timeoutMillis)) == .success else {
            throw .poolTimeout("\(host):\(port)")
        }
        defer { slots.signal() }
        var reused = takeIdle()
        while true {
            let stream: any ByteStream
            if let p = reused { stream = p.stream } else { stream = try open(connectMillis: max(1, min(connectMillis ?? timeoutMillis, timeoutMillis))) }
            do throws(HTTPError) {
                var connection = HTTPConnection(stream)
                let (response, keepAlive) = try connection.exchange(method: method, target: target, host: hostHeader,
                                                                     headers: headers, body: body, sink: sink)
                if keepAlive {
                    idle.withLock { $0.append(PooledStream(stream: stream)) }
                } else {
                    stream.close()
                }
                return response
            } catch {
                stream.close()
                if reused != nil, case .transport(_, let beforeResponse) = error, beforeResponse {
                    reused = nil
                    dropIdle()
                    continue
                }
                throw error
            }
        }
    }
}

/// One request/response exchange on a socket.
struct HTTPConnection {
    let socket: any ByteStream
    private var buffer: [UInt8] = []
    private var start = 0

    init(_ socket: any ByteStream) { self.socket = socket }

    mutating func exchange(method: String, target: String, host: String, headers: [(String, String)],
                           body: UnsafeRawBufferPointer?, sink: HTTPBodySink) throws(HTTPError) -> (HTTPResponse, Bool) {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\n"
        for (n, v) in headers { head += "\(n): \(v)\r\n" }
        if let body { head += "Content-Length: \(body.count)\r\n" } else if method == "PUT" || method == "POST" { head += "Content-Length: 0\r\n" }
        head += "\r\n"
        do {
            try socket.write(Array(head.utf8))
            if let body, body.count > 0 { try socket.write(body) }
        } catch {
            throw .transport(error, beforeResponse: true)
        }
        var (status, headers, keepAlive) = try readHead()
        // 100 Continue is never asked for; skip it if a server sends one anyway.
        while status == 100 { (status, headers, keepAlive) = try readHead() }
        var response = HTTPResponse(status: status, headers: headers, body: [])
        let noBody = method == "HEAD" || status == 204 || status == 304
        let chunked = response.header("transfer-encoding")?.lowercased().contains("chunked") ?? false
        var length: Int?
        if let cl = response.header("content-length") {
            guard let n = Int(cl.trimmingSpaces()), n >= 0 else { throw .malformed("Content-Length \(cl.debugDescription)") }
            length = n
        }
        if noBody { return (response, keepAlive) }
        if !chunked && length == nil { keepAlive = false }  // body runs to the end of the stream
        let success = (200..<300).contains(status)
        switch (success, sink) {
        case (true, .buffer(let out)):
            response.bodyLength = try readBody(chunked: chunked, length: length, limit: out.count) { bytes, offset in
                UnsafeMutableRawBufferPointer(rebasing: out[offset..<(offset + bytes.count)]).copyMemory(from: bytes)
            }
        case (true, .collect(let limit)):
            var collected: [UInt8] = []
            _ = try readBody(chunked: chunked, length: length, limit: limit) { bytes, _ in collected += bytes }
            response.body = collected
        case (false, _):
            var collected: [UInt8] = []
            do {
                _ = try readBody(chunked: chunked, length: length, limit: HTTPClient.errorBodyLimit) { bytes, _ in collected += bytes }
            } catch {
                // An error body too long or cut: the status is what matters; the
                // connection is not reused.
                keepAlive = false
            }
            response.body = collected
        }
        return (response, keepAlive)
    }

    /// Status line and headers. `keepAlive` from the version and Connection header.
    private mutating func readHead() throws(HTTPError) -> (Int, [(String, String)], Bool) {
        let first = buffer.count - start == 0
        var scanFrom = start
        while true {
            if let end = findHeadEnd(from: scanFrom) {
                let headBytes = buffer[start..<end]
                start = end + 4
                return try Self.parseHead(headBytes)
            }
            scanFrom = max(start, buffer.count - 3)
            if buffer.count - start > HTTPClient.headerLimit { throw .malformed("response headers longer than \(HTTPClient.headerLimit) bytes") }
            let n: Int
            do { n = try fill() } catch {
                // A reset before any byte of the response: the server closed a kept-alive
                // connection; the request may go again on a new one.
                if case .transport(let e, _) = error, first, buffer.count == start { throw .transport(e, beforeResponse: true) }
                throw error
            }
            if n == 0 {
                let nothing = buffer.count == start && first
                throw .transport(SystemError(errno: ECONNRESET, operation: "read HTTP response (connection closed)", path: socket.peer),
                                 beforeResponse: nothing)
            }
        }
    }

    private func findHeadEnd(from: Int) -> Int? {
        var i = max(from, start)
        while i + 3 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 { return i }
            i += 1
        }
        return nil
    }

    static func parseHead(_ bytes: ArraySlice<UInt8>) throws(HTTPError) -> (Int, [(String, String)], Bool) {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
        guard !lines.isEmpty else { throw .malformed("empty response") }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...599).contains(status) else {
            throw .malformed("status line \(String(statusLine.prefix(80)).debugDescription)")
        }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw .malformed("header line \(String(line.prefix(80)).debugDescription)") }
            headers.append((String(line[..<colon]), String(line[line.index(after: colon)...].trimmingSpaces())))
        }
        let connection = headers.first { $0.0.lowercased() == "connection" }?.1.lowercased()
        let keepAlive = parts[0] == "HTTP/1.1" ? connection != "close" : connection == "keep-alive"
        return (status, headers, keepAlive)
    }

    /// Reads more bytes into the buffer; returns how many (0 at end of stream).
    private mutating func fill() throws(HTTPError) -> Int {
        if start > 0 && start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var failure: SystemError?
        let n = chunk.withUnsafeMutableBytes { p -> Int in
            do throws(SystemError) { return try socket.read(into: p) } catch { failure = error; return 0 }
        }
        if let failure { throw .transport(failure, beforeResponse: false) }
        buffer += chunk[0..<n]
        return n
    }

    /// Takes up to `max` buffered bytes (reading when none are buffered).
    private mutating func take(upTo max: Int) throws(HTTPError) -> ArraySlice<UInt8> {
        if buffer.count == start {
            if try fill() == 0 { throw .transport(SystemError(errno: ECONNRESET, operation: "read HTTP body (connection closed)", path: socket.peer), beforeResponse: false) }
        }
        let n = min(max, buffer.count - start)
        defer { start += n }
        return buffer[start..<(start + n)]
    }

    private mutating func readLine() throws(HTTPError) -> String {
        while true {
            if let nl = buffer[start...].firstIndex(of: 10) {
                let line = String(decoding: buffer[start..<nl], as: UTF8.self)
                start = nl + 1
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            if buffer.count - start > 4096 { throw .malformed("chunk header too long") }
            if try fill() == 0 { throw .transport(SystemError(errno: ECONNRESET, operation: "read HTTP chunk (connection closed)", path: socket.peer), beforeResponse: false) }
        }
    }

    /// Reads the body, handing each piece and its offset to `deliver`; at most `limit` bytes.
    private mutating func readBody(chunked: Bool, length: Int?, limit: Int,
                                   deliver: (UnsafeRawBufferPointer, Int) -> Void) throws(HTTPError) -> Int {
        var total = 0
        func give(_ s: ArraySlice<UInt8>) { s.withUnsafeBytes { deliver($0, total) }; total += s.count }
        if chunked {
            while true {
                let line = try readLine()
                let sizeText = line.split(separator: ";", maxSplits: 1).first.map { String($0).trimmingSpaces() } ?? ""
                guard let size = Int(sizeText, radix: 16), size >= 0 else { throw .malformed("chunk size \(String(line.prefix(40)).debugDescription)") }
                if size == 0 {
                    // Trailers, then the empty line.
                    while try !readLine().isEmpty {}
                    return total
                }
                guard size <= limit - total else { throw .malformed("body longer than \(limit) bytes") }
                var left = size
                while left > 0 {
                    let s = try take(upTo: left)
                    give(s)
                    left -= s.count
                }
                guard try readLine().isEmpty else { throw .malformed("chunk not followed by CRLF") }
            }
        }
        if let length {
            guard length <= limit else { throw .malformed("body of \(length) bytes, more than the \(limit) expected") }
            while total < length {
                give(try take(upTo: length - total))
            }
            return total
        }
        // To the end of the stream.
        while true {
            if buffer.count == start, try fill() == 0 { return total }
            let s = try take(upTo: limit - total + 1)
            guard total + s.count <= limit else { throw .malformed("body longer than \(limit) bytes") }
            give(s)
        }
    }
}
