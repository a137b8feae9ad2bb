import Glibc
import HSMCore
import HSMKernel
import Logging

/// What systemd's fd store handed back, by the names hsmd stored them under.
struct InheritedDescriptors {
    static let groupName = "hsmd-precontent"
    static let eventLogName = "hsmd-eventlog"
    static let journalPrefix = "hsmd-journal-"

    var group: FanotifyGroup?
    var eventLog: EventLog?
    /// Change-journal groups by the fsid (hex) of their filesystem.
    var journalGroups: [UInt64: Int32] = [:]

    /// Takes LISTEN_FDS. Call first thing, before any other fd is opened: the numbers a
    /// predecessor's events carry must be reserved before anything else can take them.
    static func take(log: Logger) -> InheritedDescriptors {
        var out = InheritedDescriptors()
        for p in ListenFDs.take() {
            if p.name == groupName, out.group == nil, FanotifyGroup.isFanotifyGroup(p.fd) {
                out.group = FanotifyGroup(fd: p.fd)
            } else if p.name == eventLogName, out.eventLog == nil, let l = try? EventLog.adopt(fd: p.fd) {
                out.eventLog = l
            } else if p.name.hasPrefix(journalPrefix), let fsid = UInt64(p.name.dropFirst(journalPrefix.count), radix: 16),
                      out.journalGroups[fsid] == nil, FanotifyGroup.isFanotifyGroup(p.fd) {
                out.journalGroups[fsid] = p.fd
            } else {
                log.warning("systemd passed fd \(p.fd) named \"\(p.name)\" that hsmd does not use or cannot check; closing it")
                close(p.fd)
            }
        }
        if let g = out.group {
            log.notice("took the pre-content group back from systemd's fd store (fd \(g.fd)): accesses made while hsmd was down waited for it")
        }
        return out
    }
}

/// The events a dead predecessor read and did not answer (docs/ARCHITECTURE.md,
/// "Restart without harm"). Each is answered by the number the kernel knows it by.
///
/// Before this process reads anything from the group: the numbers of the events whose
/// file is known are reserved, so no new event gets a number an old one carries (the
/// kernel would match a response to the older event first); events whose file cannot be
/// known are denied with EIO, never allowed. An event of the last read that never got a
/// slot (the predecessor died between reading and recording it) has its file found from
/// the stopped thread when that is certain (UnrecordedEventMatch); an open among them is
/// allowed unless its program is one of full_recall_programs, since the reads after it
/// raise their own events. The identified ones are recalled like any access, through the
/// file opened by its handle on hsmd's private mount, once the event loop runs (without a
/// private mount, hsmd's own I/O on such an fd raises events the loop answers).
struct PredecessorEvents {
    private struct Identified {
        let event: RecordedEvent
        let reserved: Bool
    }
    private var identified: [Identified] = []
    let denied: Int
    /// Opens of the last read that never got a slot, let go without a file.
    let allowedOpens: Int

    /// Settles what can be settled before the first read.
    init(log eventLog: EventLog, group: FanotifyGroup, fullRecallPrograms: FullRecallPrograms, log: Logger) {
        var pending = eventLog.pending()
        let numbers = Set(pending.map(\.number))
        var denied = 0, allowedOpens = 0
        // Events of the last read that never got a slot. When the read was recorded
        // whole, they were answered (responses find nothing: harmless); else they wait.
        let unrecorded = eventLog.lastBatch().filter { $0.fd >= 0 && $0.isPermission && !numbers.contains($0.fd) }
        let waiting = !eventLog.lastBatchRecorded
        func deny(_ number: Int32, pid: Int32, _ why: String) {
            // ENOENT means the predecessor had answered it already: harmless.
            if case .success = group.respondOrFallBack(to: number, .deny(errno: EIO)) {
                denied += 1
                log.error("an access by pid \(pid) that the previous hsmd read but did not record is denied with EIO: \(why)")
            }
        }
        var byProcess: [Int32: [FanotifyEvent]] = [:]
        for e in unrecorded {
            guard waiting else { deny(e.fd, pid: e.pid, "its file cannot be identified"); continue }
            if e.isOpenPermission {
                let program = ProcessThreads.programName(pid: e.pid)
                if program.isEmpty || fullRecallPrograms.includes(program) {
                    deny(e.fd, pid: e.pid, program.isEmpty ? "the process is gone" : "\(program) is one of full_recall_programs and its file cannot be identified")
                } else if case .success = group.respondOrFallBack(to: e.fd, .allow) {
                    allowedOpens += 1
                    log.notice("an open by pid \(e.pid) (\(program)) that the previous hsmd read but did not record is allowed: its reads raise their own events")
                }
                continue
            }
            byProcess[e.pid, default: []].append(e)
        }
        // All /proc work (and the fds it opens and closes) before any number is reserved.
        for (pid, events) in byProcess.sorted(by: { $0.key < $1.key }) {
            for (e, found) in zip(events, UnrecordedEventFiles.find(pid: pid, ranges: events.map(\.range))) {
                switch found {
                case .failure(let why):
                    deny(e.fd, pid: pid, "its file cannot be identified (\(why))")
                case .success(let f):
                    pending.append(eventLog.add(number: e.fd, pid: pid, mask: e.mask, range: e.range, handle: f.handle,
                                                device: f.key.device, inode: f.key.inode))
                    log.notice("an access by pid \(pid) to \(f.path) (\(e.range.map { "\($0)" } ?? "open")) that the previous hsmd read but did not record: its file is known from the stopped thread")
                }
            }
        }
        for e in pending {
            guard e.handle != nil, e.device != 0, e.number >= 0 else {
                if case .success = group.respondOrFallBack(to: e.number, .deny(errno: EIO)) {
                    denied += 1
                    log.error("an access by pid \(e.pid) that the previous hsmd left unanswered is denied with EIO (no file handle was recorded)")
                }
                eventLog.done(e.slot)
                continue
            }
            let reserved: Bool
            do { reserved = try FDNumbers.reserve(e.number) } catch {
                // Without the number reserved a new event could take it: answer now.
                _ = group.respondOrFallBack(to: e.number, .deny(errno: EIO))
                eventLog.done(e.slot)
                denied += 1
                log.error("an access by pid \(e.pid) that the previous hsmd left unanswered is denied with EIO: \(error)")
                continue
            }
            identified.append(Identified(event: e, reserved: reserved))
        }
        self.denied = denied
        self.allowedOpens = allowedOpens
    }

    var count: Int { identified.count }

    /// Recalls and answers the identified events through the engine. Call once the event
    /// loop runs.
    func submit(to engine: RecallEngine, group: FanotifyGroup, eventLog: EventLog, filesystems: ManagedFilesystems, log: Logger) {
        for item in identified {
            let e = item.event
            var event = PermissionEvent(number: e.number, pid: e.pid, group: group, log: eventLog, slot: e.slot, closesNumber: item.reserved)
            guard let handle = e.handle, e.device != 0,
                  let fs = filesystems.filesystem(handle: handle, device: e.device, inode: e.inode) else {
                log.error("an access by pid \(e.pid) that the previous hsmd left unanswered is on no managed filesystem now; denied with EIO")
                _ = event.respond(.deny(errno: EIO))
                continue
            }
            let file: FileDescriptor
            let st: FileStat
            do {
                file = try handle.openFile(mountFD: fs.privateRootFD, flags: .readWrite, what: "file \(handle) on \(fs.path)")
                st = try file.stat()
            } catch {
                log.error("an access by pid \(e.pid) that the previous hsmd left unanswered cannot be finished: \(error); denied with EIO")
                _ = event.respond(.deny(errno: EIO))
                continue
            }
            let range = e.isOpenPermission ? nil : e.range
            log.info("finishing an access by pid \(e.pid) to \(fs.displayPath(ofPrivateFile: file.rawValue)) that the previous hsmd left unanswered")
            engine.submit(PendingEvent(inherited: event, file: file, range: range, atOpen: e.isOpenPermission,
                                       opener: e.isOpenPermission ? engine.fullRecallOpener(pid: e.pid) : nil, filesystem: fs), key: st.inodeKey)
        }
    }
}
