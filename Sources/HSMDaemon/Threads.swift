import Foundation
import Glibc
import Synchronization

/// Starts a dedicated OS thread. Blocking syscalls (fanotify reads, store I/O, accept)
/// run on threads like these, never on Swift's cooperative pool.
@discardableResult
func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) -> Thread {
    let t = Thread {
        nameThisThread(name)
        body()
    }
    t.name = name
    t.stackSize = 1 << 20
    t.start()
    return t
}

/// Foundation keeps `Thread.name` to itself on Linux: the kernel gets it too (its first
/// 15 bytes, its limit), so that top -H, perf and /proc/PID/task/*/comm show it. Through
/// /proc because Glibc here exports neither pthread_setname_np nor a usable prctl.
private func nameThisThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// Monotonic nanoseconds, for timeouts.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Runs `body` over `items` on up to `jobs` threads of their own; results keep order.
func parallelMap<T: Sendable, R: Sendable>(_ items: [T], jobs: Int, _ body: @escaping @Sendable (T) -> R) -> [R] {
    if items.isEmpty { return [] }
    let next = Atomic<Int>(0)
    let results = Mutex<[Int: R]>([:])
    let group = DispatchGroup()
    for i in 0..<max(1, min(jobs, items.count)) {
        group.enter()
        startThread("hsmd-work\(i)") {
            defer { group.leave() }
            while true {
                let k = next.add(1, ordering: .relaxed).oldValue
                guard k < items.count else { return }
                let r = body(items[k])
                results.withLock { $0[k] = r }
            }
        }
    }
    group.wait()
    return results.withLock { r in (0..<items.count).map { r[$0]! } }
}
