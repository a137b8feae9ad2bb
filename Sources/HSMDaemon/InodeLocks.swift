import Foundation
import HSMKernel
import Synchronization

/// Serializes every hsmd operation on one inode (recall, archive, release:
/// docs/ARCHITECTURE.md invariant 5) while operations on different inodes run in parallel.
final class InodeLocks: Sendable {
    private final class Entry: Sendable {
        let lock = NSLock()
    }

    private let table = Mutex<[InodeKey: (entry: Entry, users: Int)]>([:])

    /// Whether some hsmd operation holds or waits for the inode's lock.
    func isHeld(_ key: InodeKey) -> Bool { table.withLock { $0[key] != nil } }

    func withLock<T>(_ key: InodeKey, _ body: () throws -> T) rethrows -> T {
        let entry = table.withLock { t -> Entry in
            let e = t[key]?.entry ?? Entry()
            t[key] = (e, (t[key]?.users ?? 0) + 1)
            return e
        }
        entry.lock.lock()
        defer {
            entry.lock.unlock()
            table.withLock { t in
                if let v = t[key] {
                    if v.users <= 1 { t.removeValue(forKey: key) } else { t[key] = (v.entry, v.users - 1) }
                }
            }
        }
        return try body()
    }
}
