import CHSMKernel
import Glibc
import Synchronization

/// A connected Unix stream socket carrying one JSON object per line.
public final class LineChannel {
    public let fd: Int32
    private var pending: [UInt8] = []

    public init(fd: Int32) { self.fd = fd }

    public static func connect(_ path: String) throws(SystemError) -> LineChannel {
        LineChannel(fd: try SystemError.check(chsm_unix_connect(path), "connect", path))
    }

    /// The next line without its newline, or nil at end of stream.
    public func readLine(limit: Int = 16 << 20) throws(SystemError) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                return line
            }
            if pending.count > limit { throw SystemError(errno: EMSGSIZE, operation: "read control line") }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError(errno: errno, operation: "read control socket")
            }
            if n == 0 {
                if pending.isEmpty { return nil }
                defer { pending = [] }
                return pending
            }
            pending += chunk[0..<n]
        }
    }

    /// How reading one request line ended.
    public enum RequestLine: Equatable {
        case line([UInt8])
        /// The peer closed without sending anything.
        case closed
        /// The peer closed after `byteCount` bytes without a newline: a request cut off
        /// (the client died mid-write) must not be run.
        case unterminated(byteCount: Int)
        /// More than `limit` bytes came without a newline.
        case tooLong(limit: Int)
        /// Nothing complete arrived within the receive timeout.
        case timedOut
        case failed(SystemError)
    }

    /// Reads one newline-terminated line, never more than `limit` bytes of it. Unlike
    /// `readLine`, a last line without its newline is an error, not a line.
    public func readRequest(limit: Int) -> RequestLine {
        var chunk = [UInt8](repeating: 0, count: 65536)
        var scanned = 0  // bytes of `pending` known to hold no newline: each byte is looked at once
        while true {
            if let nl = pending[scanned...].firstIndex(of: UInt8(ascii: "\n")) {
                guard nl <= limit else { return .tooLong(limit: limit) }
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                return .line(line)
            }
            scanned = pending.count
            if pending.count > limit { return .tooLong(limit: limit) }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, limit + 1 - pending.count)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return .timedOut }
                return .failed(SystemError(errno: errno, operation: "read control socket"))
            }
            if n == 0 { return pending.isEmpty ? .closed : .unterminated(byteCount: pending.count) }
            pending += chunk[0..<n]
        }
    }

    /// Makes reads fail with EAGAIN after `seconds` without data (SO_RCVTIMEO).
    public func setReceiveTimeout(seconds: Int) throws(SystemError) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        let r = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if r != 0 { throw SystemError(errno: errno, operation: "setsockopt(SO_RCVTIMEO)") }
    }

    public func writeLine(_ bytes: [UInt8]) throws(SystemError) {
        try LineWriter(fd: fd).writeLine(bytes)
    }

    /// uid of the connected peer (SO_PEERCRED).
    public func peerUID() throws(SystemError) -> UInt32 {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        try SystemError.check(chsm_peer_cred(fd, &pid, &uid, &gid), "getsockopt(SO_PEERCRED)")
        return uid
    }

    public func close() { _ = Glibc.close(fd) }
}

/// A listening Unix socket, root-only unless told otherwise.
public struct UnixListener: Sendable {
    public let fd: Int32
    public let path: String

    public static func listen(_ path: String, mode: UInt32 = 0o600) throws(SystemError) -> UnixListener {
        UnixListener(fd: try SystemError.check(chsm_unix_listen(path, mode), "listen", path), path: path)
    }

    /// Blocks for the next connection; nil once the listener is shut down.
    public func accept() -> LineChannel? {
        while true {
            let c = chsm_accept(fd)
            if c >= 0 { return LineChannel(fd: c) }
            if c == -EINTR || c == -ECONNABORTED { continue }
            return nil
        }
    }

    /// Wakes a thread blocked in accept and removes the socket file.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        unlink(path)
    }
}

/// Writes whole lines to a socket; lines from different threads never interleave.
public final class LineWriter: Sendable {
    public let fd: Int32
    private let lock = Mutex(())

    public init(fd: Int32) { self.fd = fd }

    public func writeLine(_ bytes: [UInt8]) throws(SystemError) {
        var out = bytes
        out.append(UInt8(ascii: "\n"))
        let failure: Int32? = lock.withLock { _ in
            var done = 0
            while done < out.count {
                let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += n
            }
            return nil
        }
        if let failure { throw SystemError(errno: failure, operation: "write control socket") }
    }
}
