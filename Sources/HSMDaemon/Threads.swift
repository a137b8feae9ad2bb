import Foundation
import Glibc

/// Starts a dedicated OS thread. Blocking syscalls (fanotify reads, store I/O, accept)
/// run on threads like these, never on Swift's cooperative pool.
@discardableResult
func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) -> Thread {
    let t = Thread {
        body()
    }
    t.name = name
    t.stackSize = 1 << 20
    t.start()
    return t
}

/// Monotonic nanoseconds, for timeouts.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
