import CHSMKernel
import Glibc

/// A listening TCP socket on a numeric address, for hsmd's metrics endpoint.
public final class TCPListener: Sendable {
    public let fd: Int32
    public let address: String

    private init(fd: Int32, address: String) {
        self.fd = fd
        self.address = address
    }

    public static func listen(host: String, port: UInt16, backlog: Int32 = 16) throws(SystemError) -> TCPListener {
        let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let fd = chsm_tcp_listen(host, String(port), backlog)
        if fd < 0 { throw SystemError(errno: -fd, operation: "listen", path: address) }
        return TCPListener(fd: fd, address: address)
    }

    /// The next connection, with reads and writes bounded by `ioTimeoutMillis`; nil once
    /// the listener is shut down.
    public func accept(ioTimeoutMillis: Int32) -> TCPSocket? {
        while true {
            let c = chsm_tcp_accept(fd, ioTimeoutMillis)
            if c >= 0 { return TCPSocket(adopting: c, peer: address) }
            // Passing failures (the peer left before accept, out of fds for a moment): go on.
            if [ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM].contains(-c) {
                usleep(10_000)
                continue
            }
            return nil
        }
    }

    /// Wakes a thread blocked in accept (it then returns nil).
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }
}
