import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

// The change journal's event reading, on the hsmd-journal thread.
extension Journal {
    func readLoop() {
        if let pauseFile {
            // Test-only: let a burst of changes overrun the bounded kernel queue. A stop
            // still ends the wait; so does a cap, in case a test dies holding the gate.
            log.notice("change journal: event reading waits while \(pauseFile) exists (HSMD_TEST_JOURNAL_PAUSE_FILE)")
            var stopFd = pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)
            for _ in 0..<(Journal.pauseCapSeconds * 20) where access(pauseFile, F_OK) == 0 {
                if poll(&stopFd, 1, 50) > 0 { break }
            }
        }
        let readers = watched.map { DirectoryEventReader(group: $0.group) }
        // One group per filesystem, in `watched` order, then the two pipes.
        var fds = watched.map { pollfd(fd: $0.group.fd, events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0))
        fds.append(pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0))
        var stopping = false
        // Events read, by mask, for one debug line at stop (which kinds got past the marks).
        var masksSeen: [UInt64: Int] = [:]
        while true {
            let n = poll(&fds, nfds_t(fds.count), 1000)
            if n < 0 && errno != EINTR {
                log.critical("change journal: poll failed: \(String(cString: strerror(errno))); the journal stops")
                return
            }
            if fds[fds.count - 1].revents != 0 { stopping = true }
            var drainAll = false
            if fds[fds.count - 2].revents != 0 || stopping {
                var buf = [UInt8](repeating: 0, count: 64)
                _ = read(wakePipe.read, &buf, buf.count)
                drainAll = true
            }
            for i in watched.indices where drainAll || fds[i].revents != 0 {
                drain(i, readers[i], &masksSeen)
            }
            if drainAll {
                // Everything a waiter's changes queued in the kernel is read now: pass the
                // barrier to the writer, which signals it after committing what came before.
                let barriers = pendingBarriers.withLock { b -> [Barrier] in defer { b.removeAll() }; return b }
                enqueue(barriers.map { .barrier($0) })
            }
            if stopping {
                let kinds = masksSeen.sorted { $0.value > $1.value }.prefix(8).map { "0x\(String($0.key, radix: 16)): \($0.value)" }
                log.debug("change journal: events read by mask: \(kinds.joined(separator: ", "))")
                return
            }
        }
    }

    private func drain(_ fs: Int, _ reader: DirectoryEventReader, _ kinds: inout [UInt64: Int]) {
        while true {
            let events: [DirectoryEvent]
            do { events = try reader.next() } catch {
                log.error("change journal: reading events of \(watched[fs].path) failed: \(error)")
                enqueue(.overflow(fs: fs, epoch: currentEpoch(fs)))
                return
            }
            if events.isEmpty { return }
            eventsRead.add(UInt64(events.count), ordering: .relaxed)
            for e in events { kinds[e.mask, default: 0] += 1 }
            var ops: [Op] = []
            state.withLock { s in
                for e in events {
                    if e.isOverflow {
                        // The lost events happened in this epoch or an earlier one; every
                        // range that includes an earlier one includes this one too.
                        ops.append(.overflow(fs: fs, epoch: s[fs].epoch))
                        continue
                    }
                    // hsmd's own archive and release (marker xattrs, punches) change no
                    // file's contents as its users see them.
                    if e.pid == ownPid { continue }
                    if let name = e.movedDirectoryName, let parent = e.directories.first {
                        ops.append(.moved(fs: fs, epoch: s[fs].epoch, parent: parent, name: name))
                    }
                    for h in e.directories {
                        if s[fs].seen.insert(h).inserted {
                            ops.append(.record(fs: fs, epoch: s[fs].epoch, handle: h))
                        } else if e.isSuppressedByIgnoreMark, s[fs].remarking.insert(h).inserted {
                            // An event an ignore mark should have stopped: the mark is gone
                            // (or not placed yet; marking twice is harmless).
                            ops.append(.remark(fs: fs, epoch: s[fs].epoch, handle: h))
                        }
                    }
                }
            }
            enqueue(ops)
        }
    }
}
