import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

// The change journal's resolving, ignore-marking and group-committed writes, on the hsmd-journal-db thread.
extension Journal {
    /// How long a recorded directory may wait for its commit. Directories are resolved and
    /// ignore-marked at once; only the database write waits, so a burst of new directories
    /// costs a few transactions instead of one each. Nothing the journal promises is lost:
    /// a crash before the commit makes the epoch incomplete anyway (unclean stop), and
    /// every reader (`sync`) forces the commit first.
    static let commitIntervalNanos: UInt64 = 100_000_000

    func writeLoop() {
        var rows: [Int: [Int64: [(handle: [UInt8], path: String?)]]] = [:]
        var moved: [(fs: Int, epoch: Int64, handle: [UInt8], path: String?)] = []
        var incomplete: [(fs: Int, epoch: Int64, reason: String)] = []
        var epochs: [(Int, Int64, Double)] = []
        var migrations: [(Int, String, Int64)] = []
        var barriers: [Barrier] = []
        var oldestPending: UInt64?
        while true {
            if let oldest = oldestPending {
                let left = Self.commitIntervalNanos > monotonicNanos() - oldest ? Self.commitIntervalNanos - (monotonicNanos() - oldest) : 0
                _ = queueSignal.wait(timeout: .now() + .nanoseconds(Int(left)))
            } else {
                queueSignal.wait()
            }
            let ops = queue.withLock { q -> [Op] in defer { q.removeAll() }; return q }
            var stop = false
            for op in ops {
                switch op {
                case .record(let fs, let epoch, let handle):
                    rows[fs, default: [:]][epoch, default: []] += resolveChain(fs: fs, epoch: epoch, handle: handle)
                case .moved(let fs, let epoch, let parent, let name):
                    if let m = resolveMoved(fs: fs, parent: parent, name: name) { moved.append((fs, epoch, m.handle, m.path)) }
                case .remark(let fs, let epoch, let handle):
                    let w = watched[fs]
                    if let fd = try? handle.openPath(mountFD: w.mountFD, what: w.path) {
                        state.withLock { s in
                            if s[fs].epoch == epoch { try? w.group.ignoreDirectory(fd: fd, path: w.path) }
                            s[fs].remarking.remove(handle)
                        }
                        close(fd)
                    } else {
                        state.withLock { _ = $0[fs].remarking.remove(handle) }
                    }
                case .overflow(let fs, let epoch):
                    overflows.add(1, ordering: .relaxed)
                    log.warning("change journal: the kernel event queue of \(watched[fs].path) overflowed; epoch \(epoch) is incomplete")
                    incomplete.append((fs, epoch, "the kernel event queue overflowed at \(ISO8601DateFormatter().string(from: Date())): events were lost"))
                case .beginEpoch(let fs, let epoch, let time):
                    epochs.append((fs, epoch, time))
                case .migrateEpoch(let fs, let path, let epoch):
                    migrations.append((fs, path, epoch))
                case .barrier(let b):
                    barriers.append(b)
                case .stop:
                    stop = true
                }
            }
            let pending = !rows.isEmpty || !moved.isEmpty || !incomplete.isEmpty || !epochs.isEmpty || !migrations.isEmpty
            if pending && oldestPending == nil { oldestPending = monotonicNanos() }
            let due = !barriers.isEmpty || stop || !epochs.isEmpty
                || (oldestPending.map { monotonicNanos() - $0 >= Self.commitIntervalNanos } ?? false)
            if due {
                flush(rows: &rows, moved: &moved, incomplete: &incomplete, epochs: &epochs, migrations: &migrations)
                oldestPending = nil
                for b in barriers { b.done.signal() }
                barriers.removeAll()
            }
            if stop { return }
        }
    }

    private func flush(rows: inout [Int: [Int64: [(handle: [UInt8], path: String?)]]], moved: inout [(fs: Int, epoch: Int64, handle: [UInt8], path: String?)], incomplete: inout [(fs: Int, epoch: Int64, reason: String)],
                       epochs: inout [(Int, Int64, Double)], migrations: inout [(Int, String, Int64)]) {
        guard !rows.isEmpty || !moved.isEmpty || !incomplete.isEmpty || !epochs.isEmpty || !migrations.isEmpty else { return }
        let currentEpochs = state.withLock { $0.map(\.epoch) }
        do {
            var wrote = false
            // Only epoch starts, completeness and migrate epochs need the disk at once. A
            // fsync per group commit made the journal benchmark's runs 5.3-7.3 s instead of
            // 4.9-5.1 s (docs/BENCHMARKS.md): each fsync of state_dir's filesystem waited
            // for the other writes queued on that disk.
            let durable = !epochs.isEmpty || !incomplete.isEmpty || !migrations.isEmpty
            try db.transaction(durable: durable) { (t) throws(DatabaseError) in
                // New epochs first: records of a new epoch may share this transaction.
                for (fs, epoch, time) in epochs { try t.beginEpoch(fs: watched[fs].id, epoch: epoch, at: time); wrote = true }
                for (fs, byEpoch) in rows {
                    for (epoch, list) in byEpoch {
                        if try t.record(fs: watched[fs].id, epoch: epoch, list) > 0 { wrote = true }
                    }
                }
                for m in moved {
                    try t.recordMoved(fs: watched[m.fs].id, epoch: m.epoch, [(m.handle, m.path)])
                    wrote = true
                }
                for i in incomplete {
                    try t.markIncomplete(fs: watched[i.fs].id, epoch: i.epoch, reason: i.reason)
                    wrote = true
                }
                for (fs, path, epoch) in migrations { try t.setMigrateEpoch(fs: watched[fs].id, path: path, epoch: epoch); wrote = true }
            }
            if wrote { transactions.add(1, ordering: .relaxed) }
        } catch {
            // A record that never reached the disk leaves the epoch unable to vouch for itself.
            log.error("change journal: writing to \(db.path) failed: \(error); marking the current epochs incomplete")
            try? db.transaction { (t) throws(DatabaseError) in
                for (fs, w) in watched.enumerated() {
                    try t.markIncomplete(fs: w.id, epoch: currentEpochs[fs], reason: "a database write failed: \(error)")
                }
            }
        }
        rows.removeAll(); moved.removeAll(); incomplete.removeAll(); epochs.removeAll(); migrations.removeAll()
    }

    /// A directory that arrived in `parent` as `name`: its handle and path now. nil when it
    /// is no longer there: moved again (that move has its own event) or deleted (which
    /// recorded its parent).
    private func resolveMoved(fs: Int, parent: InodeHandle, name: [UInt8]) -> (handle: [UInt8], path: String)? {
        let w = watched[fs]
        do throws(SystemError) {
            let parentFD = try parent.openPath(mountFD: w.mountFD, what: "directory \(parent) on \(w.path)")
            defer { close(parentFD) }
            let fd = try openPathAt(parentFD, nameBytes: name, what: FileDescriptor.currentPath(of: parentFD))
            defer { close(fd) }
            return (try InodeHandle.of(fd: fd, path: w.path).encoded, FileDescriptor.currentPath(of: fd))
        } catch {
            log.debug("change journal: a moved directory is gone from where it arrived: \(error)")
            return nil
        }
    }

    /// The directory and every ancestor not yet recorded in `epoch`, with their paths now,
    /// ignore-marking each while `epoch` is still current. A directory deleted before we
    /// got to it is recorded by handle alone: its deletion recorded its parent anyway.
    private func resolveChain(fs: Int, epoch: Int64, handle: InodeHandle) -> [(handle: [UInt8], path: String?)] {
        let w = watched[fs]
        var out: [(handle: [UInt8], path: String?)] = []
        var fd: Int32
        do { fd = try handle.openPath(mountFD: w.mountFD, what: "directory \(handle) on \(w.path)") } catch {
            if error.errno != ESTALE && error.errno != ENOENT { log.debug("change journal: \(error)") }
            return [(handle.encoded, nil)]
        }
        var current = handle
        var localSeen: Set<InodeHandle> = [handle]
        while true {
            var markError: SystemError?
            let path = FileDescriptor.currentPath(of: fd)
            out.append((current.encoded, path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path))
            let marked = state.withLock { s -> Bool in
                guard s[fs].epoch == epoch else { return false }
                // Under the state lock, so a snapshot's flush cannot come between the
                // epoch check and the mark: no directory is ever ignored in an epoch it
                // was not recorded in.
                do throws(SystemError) { try w.group.ignoreDirectory(fd: fd, path: path) } catch {
                    markError = error
                    return false
                }
                return true
            }
            if !marked, let markError { log.debug("change journal: no ignore mark: \(markError)") }
            if current == w.rootHandle { break }
            let parentFD: Int32
            let parent: InodeHandle
            do {
                parentFD = try openPathAt(fd, "..", what: path)
                parent = try InodeHandle.of(fd: parentFD, path: path + "/..")
            } catch {
                log.debug("change journal: cannot climb from \(path): \(error)")
                break
            }
            close(fd)
            fd = parentFD
            // Stop at an ancestor already recorded (or queued) in this epoch: its own
            // chain up to the root is, or will be, recorded.
            let new = state.withLock { s -> Bool? in
                s[fs].epoch == epoch ? s[fs].seen.insert(parent).inserted : nil
            } ?? localSeen.insert(parent).inserted
            if !new { break }
            current = parent
        }
        close(fd)
        return out
    }
}
