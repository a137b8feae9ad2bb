import Foundation
import HSMCore
import HSMKernel
import Logging

/// Serves GET /metrics over HTTP/1.x on metrics_listen, one connection at a time on one
/// thread hsmd owns (a scrape is one small request every few seconds). Each connection
/// has 5 s to send its request and take the answer, then it is closed.
final class MetricsHTTPServer: Sendable {
    let listener: TCPListener
    let log: Logger
    let body: @Sendable () -> String
    static let ioTimeoutMillis: Int32 = 5000
    static let maxRequestBytes = 16 << 10

    init(listen: String, log: Logger, body: @escaping @Sendable () -> String) throws(SystemError) {
        guard let (host, port) = MetricsListen.split(listen) else {
            throw SystemError(errno: EINVAL, operation: "metrics_listen", path: listen)
        }
        listener = try TCPListener.listen(host: host, port: port)
        self.log = log
        self.body = body
    }

    func start() {
        startThread("hsmd-metrics") {
            while let conn = self.listener.accept(ioTimeoutMillis: Self.ioTimeoutMillis) {
                self.serve(conn)
                conn.close()
            }
        }
    }

    func stop() { listener.shutdown() }

    private func serve(_ conn: TCPSocket) {
        guard let head = readHead(conn) else { return }
        let requestLine = head.split(separator: "\r\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let parts = requestLine.split(separator: " ").map(String.init)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            respond(conn, 400, "Bad Request", "expected an HTTP/1.x request line\n", head: false)
            return
        }
        let (method, target) = (parts[0], parts[1])
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target
        guard path == "/metrics" else {
            respond(conn, 404, "Not Found", "hsmd serves /metrics only\n", head: false)
            return
        }
        guard method == "GET" || method == "HEAD" else {
            respond(conn, 405, "Method Not Allowed", "GET /metrics\n", head: false, extra: "Allow: GET, HEAD\r\n")
            return
        }
        respond(conn, 200, "OK", body(), head: method == "HEAD", contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    /// The request up to its blank line; nil if the peer sent none in time (5 s in all, not
    /// per read: a peer trickling bytes must not hold the one thread) or too much.
    private func readHead(_ conn: TCPSocket) -> String? {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = monotonicNanos() + UInt64(Self.ioTimeoutMillis) * 1_000_000
        while data.count < Self.maxRequestBytes && monotonicNanos() < deadline {
            let n: Int
            do { n = try chunk.withUnsafeMutableBytes { b throws(SystemError) in try conn.read(into: b) } } catch { return nil }
            if n == 0 { return nil }
            data += chunk[0..<n]
            if let text = String(bytes: data, encoding: .utf8), text.contains("\r\n\r\n") || text.contains("\n\n") {
                return text
            }
        }
        return nil
    }

    private func respond(_ conn: TCPSocket, _ code: Int, _ reason: String, _ text: String, head: Bool,
                         contentType: String = "text/plain; charset=utf-8", extra: String = "") {
        let payload = Array(text.utf8)
        var out = Array("HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(contentType)\r\nContent-Length: \(payload.count)\r\n\(extra)Connection: close\r\n\r\n".utf8)
        if !head { out += payload }
        do { try conn.write(out) } catch { log.debug("metrics: answering a scrape failed: \(error)") }
    }
}
