import CHSMKernel
import Glibc

extension LineChannel {
    /// True when the peer of this connected stream socket has closed its end (POLLRDHUP or
    /// POLLHUP), without waiting and without reading anything.
    public static func peerHasClosed(fd: Int32) -> Bool {
        // POLLRDHUP (0x2000) is behind _GNU_SOURCE in the C headers Swift sees.
        let rdhup: Int16 = 0x2000
        var p = pollfd(fd: fd, events: rdhup, revents: 0)
        guard poll(&p, 1, 0) == 1 else { return false }
        return p.revents & (rdhup | Int16(POLLHUP) | Int16(POLLERR)) != 0
    }
}
