import Foundation
import Glibc
import HSMKernel
import XCTest
@testable import HSMStores

/// The retry policy as pure logic, then an S3Client against a scripted server on a real
/// loopback socket: throttling and server failures are tried again and succeed, refusals
/// fail at once, and a request that keeps failing gives up within its budget saying why.
final class RetryPolicyTests: XCTestCase {
    private let slowDown = S3Error.status(503, code: "SlowDown", message: "Please reduce your request rate", operation: "GET", key: "b/k")

    func testBackoffDoublesWithJitterUpToTheCap() {
        let p = RetryPolicy(budgetMillis: 60_000, firstBackoffMillis: 100, maxBackoffMillis: 1000)
        XCTAssertEqual((1...6).map { p.backoffMillis(afterAttempts: $0, jitter: 0) }, [50, 100, 200, 400, 500, 500])
        XCTAssertEqual((1...6).map { p.backoffMillis(afterAttempts: $0, jitter: 0.999_999) }, [99, 199, 399, 799, 999, 999])
        // Jitter spreads the wait over [half, whole] of the backoff, never outside.
        for j in stride(from: 0.0, to: 1.0, by: 0.05) {
            XCTAssertTrue((200...400).contains(p.backoffMillis(afterAttempts: 3, jitter: j)))
        }
        // Nonsense jitter and huge attempt counts stay bounded.
        XCTAssertEqual(p.backoffMillis(afterAttempts: 10_000, jitter: .nan), 500)
        XCTAssertEqual(p.backoffMillis(afterAttempts: 0, jitter: -3), 50)
    }

    func testWhatIsRetried() {
        let p = RetryPolicy(budgetMillis: 60_000)
        let retried: [S3Error] = [
            slowDown,
            .status(500, code: "InternalError", message: "", operation: "GET", key: "b/k"),
            .status(502, code: "", message: "", operation: "GET", key: "b/k"),
            .status(504, code: "", message: "", operation: "GET", key: "b/k"),
            .status(429, code: "", message: "", operation: "GET", key: "b/k"),
            .status(400, code: "RequestTimeout", message: "", operation: "PUT", key: "b/k"),
            .transport("connect 127.0.0.1:1: Connection refused (errno 111)", operation: "GET", key: "b/k"),
        ]
        for e in retried {
            guard case .retry = p.next(after: e, attempts: 1, elapsedMillis: 0, jitter: 0.5) else { return XCTFail("\(e) must be retried") }
        }
        let failed: [S3Error] = [
            .status(403, code: "AccessDenied", message: "", operation: "GET", key: "b/k"),
            .status(404, code: "NoSuchKey", message: "", operation: "GET", key: "b/k"),
            .status(416, code: "InvalidRange", message: "", operation: "GET", key: "b/k"),
            .status(501, code: "NotImplemented", message: "", operation: "GET", key: "b/k"),
            .protocolError("bad HTTP response", operation: "GET", key: "b/k"),
            .tls("the server's certificate was refused: self-signed certificate", operation: "HEAD bucket", key: "b"),
            .config("x"),
        ]
        for e in failed {
            XCTAssertEqual(p.next(after: e, attempts: 1, elapsedMillis: 0, jitter: 0.5), .fail, "\(e) must fail at once")
        }
    }

    func testTheBudgetBoundsTheRetries() {
        let p = RetryPolicy(budgetMillis: 10_000, firstBackoffMillis: 100, maxBackoffMillis: 5000)
        XCTAssertEqual(p.next(after: slowDown, attempts: 1, elapsedMillis: 0, jitter: 0), .retry(afterMillis: 50))
        XCTAssertEqual(p.next(after: slowDown, attempts: 4, elapsedMillis: 9_000, jitter: 0), .retry(afterMillis: 400))
        // A wait that would end past the budget is no retry: the request fails now.
        XCTAssertEqual(p.next(after: slowDown, attempts: 4, elapsedMillis: 9_600, jitter: 0), .fail)
        XCTAssertEqual(p.next(after: slowDown, attempts: 1, elapsedMillis: 10_000, jitter: 0), .fail)
        XCTAssertEqual(RetryPolicy(budgetMillis: 0).next(after: slowDown, attempts: 1, elapsedMillis: 0, jitter: 0), .fail)
        // Simulated: every attempt fails at once; the waits add up to less than the budget.
        var elapsed = 0, attempts = 1
        while case .retry(let w) = p.next(after: slowDown, attempts: attempts, elapsedMillis: elapsed, jitter: 0.7) {
            elapsed += w
            attempts += 1
        }
        XCTAssertLessThan(elapsed, 10_000)
        XCTAssertGreaterThan(attempts, 4)
    }

    // MARK: against a scripted server

    private func client(port: UInt16, budgetMillis: Int = 20_000) -> S3Client {
        S3Client(endpoint: S3Endpoint(host: "127.0.0.1", port: port, secure: false), bucket: "b01", region: "us-east-1",
                 credentials: S3Credentials(accessKeyID: "AKIDTEST", secretAccessKey: "NotPrintedSecret"),
                 connections: 2, timeoutMillis: 5000,
                 retry: RetryPolicy(budgetMillis: budgetMillis, firstBackoffMillis: 10, maxBackoffMillis: 50))
    }

    private static let slowDownReply = "HTTP/1.1 503 Slow Down\r\nContent-Length: 71\r\n\r\n<Error><Code>SlowDown</Code><Message>Please slow down</Message></Error>"

    func testSlowDownAndServerErrorsAreRetriedUntilTheAnswer() throws {
        let server = CannedServer([
            (Self.slowDownReply, false),
            ("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        ])
        let bytes = try client(port: server.port).getObject("k", limit: 100)
        XCTAssertEqual(bytes, Array("hello".utf8))
        XCTAssertEqual(server.requestCount, 3)
    }

    func testACutAnswerIsRetriedOnANewConnection() throws {
        let server = CannedServer([
            ("HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\n\r\nABC", true),   // cut, then closed
            ("HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\n\r\nABCDEFGH", false),
        ])
        var out = [UInt8](repeating: 0, count: 8)
        let n = try out.withUnsafeMutableBytes { try client(port: server.port).getObject("k", range: 0..<8, into: $0) }
        XCTAssertEqual(n, 8)
        XCTAssertEqual(out, Array("ABCDEFGH".utf8))
        XCTAssertEqual(server.connections, 2)
    }

    func testAKeptAliveConnectionTheServerClosedIsNoFailure() throws {
        let server = CannedServer([
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", true),   // then the server closes
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
        ])
        // No budget for any retry: the fresh connection is not one.
        let c = client(port: server.port, budgetMillis: 0)
        XCTAssertEqual(try c.getObject("k", limit: 10), Array("a".utf8))
        usleep(100_000)  // let the close arrive
        XCTAssertEqual(try c.getObject("k", limit: 10), Array("b".utf8))
        XCTAssertEqual(server.connections, 2)
    }

    func testRefusalsFailAtOnce() {
        for (reply, status) in [("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403),
                                ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404)] {
            let server = CannedServer([(reply, false), ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", false)])
            XCTAssertThrowsError(try client(port: server.port).getObject("k", limit: 100)) { e in
                XCTAssertEqual((e as? S3Error)?.httpStatus, status)
            }
            XCTAssertEqual(server.requestCount, 1, "HTTP \(status) must not be tried again")
        }
    }

    func testKeepsFailingMeansTheLastStatusWithinTheBudget() {
        let server = CannedServer(Array(repeating: (Self.slowDownReply, false), count: 1000))
        XCTAssertThrowsError(try client(port: server.port, budgetMillis: 500).getObject("k", limit: 100)) { e in
            guard let e = e as? S3Error else { return XCTFail("\(e)") }
            XCTAssertEqual(e.httpStatus, 503)
            XCTAssertTrue(e.description.contains("b01/k") && e.description.contains("SlowDown") && e.description.contains("gave up after"), e.description)
            XCTAssertFalse(e.description.contains("NotPrintedSecret"))
        }
        XCTAssertGreaterThan(server.requestCount, 1)
        XCTAssertLessThan(server.requestCount, 1000, "the budget must end the retries")
    }

    func testNoServerGivesUpNamingTheErrno() {
        let server = CannedServer([])
        let port = server.port
        Glibc.shutdown(server.fd, Int32(SHUT_RDWR))
        Glibc.close(server.fd)
        XCTAssertThrowsError(try client(port: port, budgetMillis: 300).getObject("k", limit: 100)) { e in
            guard let e = e as? S3Error, case .transport = e else { return XCTFail("\(e)") }
            XCTAssertTrue(e.description.contains("errno \(ECONNREFUSED)") && e.description.contains("b01/k"), e.description)
        }
    }

    // MARK: TLS configuration

    func testCAFileThatCannotBeUsedIsAClearError() throws {
        XCTAssertNoThrow(try TLSContext(caFile: nil), "the system's CA certificates")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hsmd-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let garbage = dir.appendingPathComponent("garbage.pem").path
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: garbage))
        for path in [dir.appendingPathComponent("missing.pem").path, garbage] {
            XCTAssertThrowsError(try TLSContext(caFile: path)) { e in
                guard let e = e as? TLSError else { return XCTFail("\(e)") }
                XCTAssertTrue(e.refused)
                XCTAssertTrue(e.description.contains("cannot load the CA file") && e.description.contains(path), e.description)
            }
        }
    }
}
