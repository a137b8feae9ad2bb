import CHSMKernel
import Glibc

extension LineChannel {
    /// True when the peer of this connected Unix stream socket has closed it, without
    /// waiting and without reading anything. POLLHUP only: a peer that merely shut down its
    /// sending side after its request (POLLRDHUP alone, measured on Linux 6.18) still waits
    /// for the answer.
    public static func peerHasClosed(fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: 0, revents: 0)
        guard poll(&p, 1, 0) == 1 else { return false }
        return p.revents & (Int16(POLLHUP) | Int16(POLLERR)) != 0
    }
}
