import CHSMKernel
import Glibc

/// A connected TCP socket with blocking I/O bounded by a timeout per call (SO_RCVTIMEO and
/// SO_SNDTIMEO), for clients that run on threads hsmd owns.
public final class TCPSocket {
    public let fd: Int32
    /// "host:port", for errors.
    public let peer: String
    private var closed = false

    private init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    deinit { close() }

    /// Takes over an fd connected earlier (a kept-alive connection).
    public convenience init(adopting fd: Int32, peer: String) { self.init(fd: fd, peer: peer) }

    /// Gives up the fd without closing it (to keep it alive for another request).
    public func release() -> Int32? {
        guard !closed else { return nil }
        closed = true
        return fd
    }

    /// Connects within `timeoutMillis`; each later read or write fails with EAGAIN after
    /// `ioTimeoutMillis` without progress.
    public static func connect(host: String, port: UInt16, timeoutMillis: Int, ioTimeoutMillis: Int) throws(SystemError) -> TCPSocket {
        var resolve = [CChar](repeating: 0, count: 256)
        let peer = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let fd = resolve.withUnsafeMutableBufferPointer {
            chsm_tcp_connect(host, String(port), Int32(clamping: timeoutMillis), Int32(clamping: ioTimeoutMillis), $0.baseAddress, $0.count)
        }
        if fd < 0 {
            let why = resolve.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? "" }
            throw SystemError(errno: -fd, operation: why.isEmpty ? "connect" : "resolve (\(why))", path: peer)
        }
        return TCPSocket(fd: fd, peer: peer)
    }

    /// Writes all of `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress.map { $0 + done }, bytes.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError(errno: errno == EAGAIN ? ETIMEDOUT : errno, operation: "send", path: peer)
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8]) throws(SystemError) {
        let failure: SystemError? = bytes.withUnsafeBytes { b in
            do throws(SystemError) { try write(b); return nil } catch { return error }
        }
        if let failure { throw failure }
    }

    /// Reads at most `buffer.count` bytes; 0 at end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        while true {
            let n = Glibc.recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SystemError(errno: errno == EAGAIN ? ETIMEDOUT : errno, operation: "receive", path: peer)
        }
    }

    public func close() {
        if !closed { Glibc.close(fd); closed = true }
    }
}
