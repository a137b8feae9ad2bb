import Foundation
import Glibc
import XCTest
@testable import HSMStores

/// A loopback server that answers each request with the next canned reply, and may close
/// the connection after it: the client's keep-alive, chunked bodies, retry on a kept-alive
/// connection the server closed, and refusals of bodies that do not fit.
final class CannedServer: @unchecked Sendable {
    // @unchecked: `replies` and `accepted` are touched only under `lock`; the fd is set once.
    let fd: Int32
    let port: UInt16
    private let lock = NSLock()
    private var replies: [(bytes: [UInt8], close: Bool)]
    private var accepted = 0
    private var requests = 0

    init(_ replies: [(String, Bool)]) {
        self.replies = replies.map { (Array($0.0.utf8), $0.1) }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 8)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.port = UInt16(bigEndian: addr.sin_port)
        Thread.detachNewThread { self.serve() }
    }

    var connections: Int { lock.lock(); defer { lock.unlock() }; return accepted }
    var requestCount: Int { lock.lock(); defer { lock.unlock() }; return requests }

    private func next() -> (bytes: [UInt8], close: Bool)? {
        lock.lock(); defer { lock.unlock() }
        requests += 1
        return replies.isEmpty ? nil : replies.removeFirst()
    }

    private func serve() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 { return }
            lock.lock(); accepted += 1; lock.unlock()
            Thread.detachNewThread { self.handle(c) }
        }
    }

    private func handle(_ c: Int32) {
        defer { Glibc.close(c) }
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            // One request: the head, then Content-Length bytes.
            var headEnd: Int?
            while headEnd == nil {
                if let r = pending.indices.dropLast(3).first(where: { pending[$0] == 13 && pending[$0 + 1] == 10 && pending[$0 + 2] == 13 && pending[$0 + 3] == 10 }) {
                    headEnd = r
                    break
                }
                let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                pending += buf[0..<n]
            }
            guard let end = headEnd else { return }
            let head = String(decoding: pending[..<end], as: UTF8.self).lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
            while pending.count < end + 4 + length {
                let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                pending += buf[0..<n]
            }
            pending.removeFirst(end + 4 + length)
            guard let reply = next() else { return }
            _ = reply.bytes.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if reply.close { return }
        }
    }
}

final class HTTPClientTests: XCTestCase {
    private func get(_ client: HTTPClient, limit: Int = 1 << 20) throws(HTTPError) -> HTTPResponse {
        try client.send(method: "GET", target: "/b/k", headers: [], body: nil, sink: .collect(limit: limit))
    }

    func testKeepAliveChunkedAndContentLength() throws {
        let server = CannedServer([
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n", false),
            ("HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\n\r\nWXYZ", false),
        ])
        let client = HTTPClient(host: "127.0.0.1", port: server.port, timeoutMillis: 5000, maxConnections: 2)
        XCTAssertEqual(try get(client).body, Array("hello".utf8))
        XCTAssertEqual(try get(client).body, Array("abcdefg".utf8))
        var out = [UInt8](repeating: 0, count: 4)
        let r = try out.withUnsafeMutableBytes { b in
            try client.send(method: "GET", target: "/b/k", headers: [("Range", "bytes=0-3")], body: nil, sink: .buffer(b))
        }
        XCTAssertEqual(r.status, 206)
        XCTAssertEqual(r.bodyLength, 4)
        XCTAssertEqual(out, Array("WXYZ".utf8))
        XCTAssertEqual(server.connections, 1, "three requests in a row must share one kept-alive connection")
    }

    func testClosedKeptAliveConnectionIsRetriedOnANewOne() throws {
        let server = CannedServer([
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", true),   // then the server closes
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
        ])
        let client = HTTPClient(host: "127.0.0.1", port: server.port, timeoutMillis: 5000, maxConnections: 1)
        XCTAssertEqual(try get(client).body, Array("a".utf8))
        usleep(100_000)  // let the close arrive
        XCTAssertEqual(try get(client).body, Array("b".utf8))
        XCTAssertEqual(server.connections, 2)
    }

    func testBodiesThatDoNotFitAndGarbageAreErrors() throws {
        let server = CannedServer([
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false),
            ("HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\n\r\n01234567", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true),
            ("SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", true),
            ("HTTP/1.1 503 Slow Down\r\nContent-Length: 71\r\n\r\n<Error><Code>SlowDown</Code><Message>Please slow down</Message></Error>", false),
        ])
        let client = HTTPClient(host: "127.0.0.1", port: server.port, timeoutMillis: 5000, maxConnections: 1)
        XCTAssertThrowsError(try get(client, limit: 4))
        var out = [UInt8](repeating: 0, count: 4)
        XCTAssertThrowsError(try out.withUnsafeMutableBytes { b in
            try client.send(method: "GET", target: "/b/k", headers: [], body: nil, sink: .buffer(b))
        })
        XCTAssertEqual(out, [0, 0, 0, 0], "nothing past the buffer, and nothing of a body that does not fit")
        for _ in 0..<3 { XCTAssertThrowsError(try get(client)) }
        let slow = try get(client)
        XCTAssertEqual(slow.status, 503)
        XCTAssertEqual(S3ErrorBody.parse(slow.body)?.code, "SlowDown")
    }

    func testNoServerIsATransportError() {
        // A port nobody listens on: bind one, close it.
        let server = CannedServer([])
        let port = server.port
        Glibc.shutdown(server.fd, Int32(SHUT_RDWR))
        Glibc.close(server.fd)
        let client = HTTPClient(host: "127.0.0.1", port: port, timeoutMillis: 2000, maxConnections: 1)
        XCTAssertThrowsError(try get(client)) { e in
            guard case HTTPError.transport = e else { return XCTFail("\(e)") }
        }
    }
}
