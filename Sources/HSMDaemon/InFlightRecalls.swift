import Foundation
import HSMCore
import Synchronization

/// One recall copying data now, for `hsmctl queue`. Its byte count is bumped per block
/// written (one relaxed atomic add).
final class RecallTicket: Sendable {
    let id: UInt64
    /// The file's path, looked up only when `hsmctl queue` lists it (a readlink of the
    /// recall's fd: recall itself names files by inode). Called under the table's lock,
    /// which the recall's `end` also takes before its fd is closed.
    let path: @Sendable () -> String
    /// The accessing process (0: hsmctl recall, or a pid outside hsmd's namespace).
    let pid: Int32
    /// "access", "open" (whole file at open) or "hsmctl".
    let kind: String
    let startedNanos: UInt64
    let bytes = Atomic<Int64>(0)

    init(id: UInt64, path: @escaping @Sendable () -> String, pid: Int32, kind: String, startedNanos: UInt64) {
        self.id = id; self.path = path; self.pid = pid; self.kind = kind; self.startedNanos = startedNanos
    }
}

/// The recalls in flight. A lock per recall (not per block): inserting and removing a ticket.
final class InFlightRecalls: Sendable {
    private let table = Mutex<[UInt64: RecallTicket]>([:])
    private let nextID = Atomic<UInt64>(1)

    func begin(path: @escaping @Sendable () -> String, pid: Int32, kind: String, startedNanos: UInt64 = monotonicNanos()) -> RecallTicket {
        let t = RecallTicket(id: nextID.add(1, ordering: .relaxed).oldValue, path: path, pid: pid, kind: kind, startedNanos: startedNanos)
        table.withLock { $0[t.id] = t }
        return t
    }

    func end(_ t: RecallTicket) { table.withLock { _ = $0.removeValue(forKey: t.id) } }

    var count: Int { table.withLock { $0.count } }

    /// The table as `hsmctl queue` shows it; program names are read now, from /proc (the
    /// process is blocked in its access, so still there).
    func rows(now: UInt64 = monotonicNanos()) -> [QueueRecall] {
        table.withLock { $0.values.map { ($0, $0.path()) } }.sorted { $0.0.id < $1.0.id }.map { t, path in
            QueueRecall(path: path, pid: t.pid, program: t.pid > 0 ? RecallEngine.programName(pid: t.pid) : "",
                        kind: t.kind, bytes: t.bytes.load(ordering: .relaxed),
                        ageSeconds: Double(now &- t.startedNanos) / 1e9)
        }
    }
}
