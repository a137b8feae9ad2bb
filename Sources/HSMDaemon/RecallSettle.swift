import Dispatch
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Synchronization

/// A file whose whole data came back at an archiver's open (tar, cpio…) and whose marker
/// waits until no other process has it open.
struct Unsettled {
    let filesystem: ManagedFilesystem
    let handle: InodeHandle
    let since: UInt64
    var due: UInt64
    var tries: Int
}

// RecallEngine: the marker of an archiver's whole-file recall at open, written once the
// file is closed (FullRecallPrograms.markerWaitsForClose).
//
// Writing the marker changes the file's ctime. GNU tar compares the ctime from its fstat
// after the open with the one after its reads and fails the file ("file changed as we read
// it") if they differ (docs/KERNEL-FACTS.md). The open is answered once the data is in;
// the data is made durable (invariant 8) and the marker written under a write lease: the
// kernel grants one only while no other process has the file open, and holds new opens
// off until it goes. Until then the marker still calls the blocks offline, which is
// harmless (invariant 1: a later recall finds them whole and only marks them resident;
// after a crash, data not yet synced is a hole again and comes back from the store).
extension RecallEngine {
    /// Past this, the marker is written even though the file is still open elsewhere:
    /// `status` should not show a file released for longer.
    static let settleGiveUpNanos: UInt64 = 600 * 1_000_000_000
    /// At most this many files wait; beyond, the marker is written at once.
    static let settleLimit = 65_536

    /// Writes the marker of `fd` if no other process has the file open; false if one
    /// does. The caller holds the inode lock.
    func settle(_ fd: FileDescriptor, key: InodeKey, store: any ObjectStore, force: Bool = false) -> Bool {
        // Durable before the lease, so that the lease, which makes other openers wait (or
        // fail with EAGAIN, as hsmctl release does), is held for the marker write alone.
        // Nothing writes the data meanwhile: the caller holds the inode lock.
        do { try fd.syncData() } catch {
            log.warning("\(fd.path): fdatasync after its recall at open failed: \(error); its marker is written at its next access")
            return true
        }
        var leased = false
        do {
            try fd.setWriteLease(signal: Archiver.leaseSignal)
            leased = true
        } catch where [EAGAIN, EBUSY].contains(error.errno) && !force {
            return false
        } catch {
            // No leases here (fs.leases-enable = 0, a filesystem without them), or forced:
            // the marker goes on now, as for any other recall.
            if !force { log.debug("no write lease on \(fd.path) (\(error)): its marker is written while it may be open") }
        }
        defer { if leased { try? fd.releaseLease() } }
        // Marks the blocks found whole resident and writes the marker. Nothing is read
        // from the store: a release may have punched the file since.
        do { _ = try recall(fd, range: .wholeFile, key: key, store: store, readahead: false, localOnly: true) } catch {
            log.warning("\(fd.path): marker after its recall at open not written: \(error); it is written at its next access")
        }
        return true
    }

    /// Leaves the marker of a file still open elsewhere to the settle thread.
    func settleLater(key: InodeKey, filesystem: ManagedFilesystem, handle: InodeHandle?) {
        guard let handle else {
            log.warning("inode \(key.inode) on \(filesystem.path): no handle to write its marker later; it is written at its next access")
            return
        }
        let now = monotonicNanos()
        let queued = state.withLock { s -> Bool in
            guard s.unsettled.count < Self.settleLimit else { return false }
            s.unsettled[key] = Unsettled(filesystem: filesystem, handle: handle, since: now, due: now + 20_000_000, tries: 0)
            return true
        }
        if queued {
            settleWake.signal()
        } else {
            settleNow(key, Unsettled(filesystem: filesystem, handle: handle, since: now, due: now, tries: 0), force: true)
        }
    }

    /// The settle thread: tries each waiting file again, backing off from 20 ms to 5 s.
    func settleLoop() {
        while !state.withLock({ $0.stopping }) {
            let now = monotonicNanos()
            let (due, next) = state.withLock { s in
                (s.unsettled.filter { $0.value.due <= now }, s.unsettled.values.map(\.due).min())
            }
            if due.isEmpty {
                // Asleep until the next try is due, or a new file or stop wakes it.
                let wait = next.map { $0 &- now } ?? 60_000_000_000
                _ = settleWake.wait(timeout: .now() + .nanoseconds(Int(min(wait, 60_000_000_000))))
                continue
            }
            for (key, entry) in due {
                let force = now &- entry.since > Self.settleGiveUpNanos
                if settleNow(key, entry, force: force) {
                    _ = state.withLock { $0.unsettled.removeValue(forKey: key) }
                } else {
                    state.withLock { s in
                        guard var e = s.unsettled[key] else { return }
                        e.tries += 1
                        e.due = monotonicNanos() + min(UInt64(20_000_000) << min(e.tries, 8), 5_000_000_000)
                        s.unsettled[key] = e
                    }
                }
            }
        }
    }

    /// True when the file was settled or is gone (nothing left to do).
    @discardableResult
    private func settleNow(_ key: InodeKey, _ entry: Unsettled, force: Bool) -> Bool {
        let fd: FileDescriptor
        do { (fd, _) = try Self.openWritable(entry.handle, key: key, filesystem: entry.filesystem) } catch {
            return true   // deleted since: no marker to write
        }
        defer { fd.close() }
        return locks.withLock(key) { settle(fd, key: key, store: entry.filesystem.store, force: force) }
    }
}
