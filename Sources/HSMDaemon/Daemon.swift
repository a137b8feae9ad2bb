import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// hsmd's lifecycle: check the config against the system, mark the filesystems, serve
/// events and hsmctl, stop cleanly on SIGTERM.
public enum Daemon {
    public static let version = "0.1.0"

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Runs until SIGTERM or SIGINT. Returns the process exit status.
    /// `configPath` is read again at SIGHUP (nil: no reloads); `logLevel` is the switch the
    /// log handlers read (a reload sets it).
    public static func run(config: Config, log: Logger, configPath: String? = nil, logLevel: LogLevelSwitch? = nil) -> Int32 {
        // Signals for the main thread's sigwait; blocked before any thread starts so every
        // thread inherits the mask.
        var waitSet = sigset_t()
        sigemptyset(&waitSet)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&waitSet, s) }
        pthread_sigmask(SIG_BLOCK, &waitSet, nil)
        signal(SIGPIPE, SIG_IGN)
        Memory.keepResidentSetSmall()

        let started = Date()
        // First, before any other fd is opened: what systemd's fd store kept, and the
        // events a predecessor left unanswered (their numbers must be settled or
        // reserved before anything can take them; docs/ARCHITECTURE.md).
        let inherited = InheritedDescriptors.take(log: log)
        let eventLog: EventLog
        var predecessor: PredecessorEvents?
        do {
            if let adopted = inherited.eventLog, let g = inherited.group {
                eventLog = adopted
                let p = PredecessorEvents(log: adopted, group: g, fullRecallPrograms: FullRecallPrograms(config.fullRecallPrograms), log: log)
                if p.count > 0 || p.denied > 0 || p.allowedOpens > 0 {
                    log.notice("the previous hsmd left \(p.count + p.denied + p.allowedOpens) access(es) unanswered: \(p.count) will be finished, \(p.allowedOpens) open(s) allowed, \(p.denied) denied with EIO")
                }
                predecessor = p
            } else {
                // Without the old group its events were allowed when it closed: nothing
                // in an old log can be answered any more.
                eventLog = try EventLog.create()
            }
        } catch {
            log.critical("hsmd cannot start: \(error)")
            return 1
        }

        let filesystems: ManagedFilesystems
        let group: FanotifyGroup
        do {
            try FileDescriptor.installLeaseBreakHandler(signal: Archiver.leaseSignal)
            try makeDirectory(config.stateDir)
            try makeDirectory((config.socket as NSString).deletingLastPathComponent)
            do { filesystems = try ManagedFilesystems(config: config) } catch { throw StartError(description: error.description) }
            guard !filesystems.all.isEmpty else {
                throw StartError(description: "no [[filesystem]] in the config: hsmd would manage nothing")
            }
            if let g = inherited.group {
                group = g
                // Before anything: a release the previous hsmd was in the middle of left
                // its ignore mark on that file (the start walk marks resident files again).
                // Its opens still reach the group (the mark ignores accesses only), so
                // nobody read the holes meanwhile.
                do { try g.flushInodeMarks() } catch { throw StartError(description: "kept pre-content group: \(error)") }
            } else {
                do { group = try FanotifyGroup.preContent() } catch {
                    throw StartError(description: "\(error): this kernel does not offer fanotify pre-content events (Linux 6.14 or later, CONFIG_FANOTIFY_ACCESS_PERMISSIONS, run as root)")
                }
            }
            // Idempotent for a kept group, whose marks are still in place.
            for fs in filesystems.all {
                do { try group.markFilesystem(fs.path) } catch {
                    throw StartError(description: "cannot mark \(fs.path) (\(fs.type)) for pre-content events: \(error)")
                }
                // Recall writes through hsmd's private clone of the mount; its I/O there
                // must raise no events (a predecessor's clone and mark went with it).
                if fs.hasPrivateMount {
                    do { try group.ignore(mountOf: fs.privateRootFD, path: fs.path) } catch {
                        log.warning("\(fs.path): no mount ignore mark on hsmd's private mount (\(error)): recall's own I/O raises events that hsmd answers itself, and a stop cannot finish a recall in flight (the next hsmd does)")
                    }
                }
            }
            for problem in filesystems.privateMountProblems {
                log.warning("no private mount for recall writes: \(problem); recall writes through the filesystem's own mount: its I/O raises events that hsmd answers itself, and a stop cannot finish a recall in flight (the next hsmd does)")
            }
        } catch {
            log.critical("hsmd cannot start: \(error)")
            return 1
        }

        // The change journal: its own notification group and database (README, "Change journal").
        let journal: Journal?
        if config.journal {
            do { journal = try Journal(stateDir: config.stateDir, filesystems: filesystems.all, adopted: inherited.journalGroups, log: log) } catch {
                log.critical("hsmd cannot start: \(error)")
                return 1
            }
        } else {
            Journal.markUnwatched(stateDir: config.stateDir, log: log)
            journal = nil
        }
        let journalFSIDs = Set((journal?.groups ?? []).map(\.fsid))
        for (fsid, fd) in inherited.journalGroups where !journalFSIDs.contains(fsid) { close(fd) }
        keepAcrossRestarts(group: group, eventLog: eventLog, journal: journal, inherited: inherited, log: log)

        // The catalog: an index of objects and files (README, "Catalog"); never the truth.
        let catalog = Catalog.open(stateDir: config.stateDir, log: log)
        let locks = InodeLocks()
        let engine = RecallEngine(group: group, filesystems: filesystems, locks: locks, config: config, log: log, catalog: catalog)
        let events = EventLoop(group: group, eventLog: eventLog, engine: engine, filesystems: filesystems, log: log)
        let archiver = Archiver(group: group, filesystems: filesystems, locks: locks, engine: engine, log: log, catalog: catalog)
        let premarker = ResidentPremarker(group: group, filesystems: filesystems.all, locks: locks, limit: config.premarkFiles, log: log)
        let settings = PolicySettings(config)
        let spaceWatcher = SpaceWatcher(archiver: archiver, engine: engine, settings: settings, log: log)
        let fsList = filesystems.all.map { "\($0.path) (\($0.type), store \($0.store.name))" }.joined(separator: "; ")
        let restartState = inherited.group != nil ? "pre-content group kept across the last restart"
            : (SystemdNotify.isAvailable ? "fresh start; groups handed to systemd's fd store"
                : "fresh start without systemd: while hsmd is stopped, released data reads as zeros")
        // Telling a read from a truncation or a shifting fallocate needs the blocked
        // process's /proc/PID/task/*/syscall, which needs CAP_SYS_PTRACE (docs/KERNEL-FACTS.md).
        // Asked of the capability set, not by reading pid 1's lines: pid 1 may be a process
        // no capability lets anyone look at (a sandbox's supervisor).
        let processView = OwnCapabilities.effective().map { $0 & (1 << OwnCapabilities.sysPtrace) != 0 } ?? false
        let processViewText = processView ? "yes" : "no (CAP_SYS_PTRACE missing: /proc/PID/task/*/syscall cannot be read)"
        if !processView {
            log.warning("cannot see what accessing processes are doing (/proc/PID/task/*/syscall needs CAP_SYS_PTRACE): an access to a file with offline blocks counts as a possible insert/collapse-range (on ext4 and xfs: it recalls up to the end of the file) and as a possible truncation (no read-ahead)")
        }
        let privileges = Self.privilegeKeeping(log: log)
        let running = Mutex(config)
        let startedEpoch = Date().timeIntervalSince1970
        var ops = OpsContext()
        let jobs = ops.jobs
        ops.queue = { (engine.inFlight.rows(), engine.queueDepth) }
        ops.metrics = {
            DaemonMetrics.shared.exposition(DaemonMetrics.Live(
                queueDepth: Int64(engine.queueDepth), recallsInFlight: Int64(engine.inFlight.count),
                jobsRunning: Int64(jobs.count), journalEvents: journal?.eventsRead.load(ordering: .relaxed),
                journalTransactions: journal?.transactions.load(ordering: .relaxed),
                journalOverflows: journal?.overflows.load(ordering: .relaxed), startTimeSeconds: startedEpoch,
                space: try? catalog?.database.report(filesystems: filesystems.all.map { ($0.path, $0.store.name) })))
        }
        let exposition = ops.metrics
        let server: ControlServer
        do {
            server = try ControlServer(socketPath: config.socket, archiver: archiver, journal: journal, catalog: catalog, settings: settings,
                                       log: log, ops: ops) {
                ["version": version, "pid": "\(getpid())", "filesystems": fsList,
                 "uptime_seconds": "\(Int(Date().timeIntervalSince(started)))",
                 "events": "\(events.eventsSeen.load(ordering: .relaxed))",
                 "premark": premarker.summary,
                 // Each store as archive would find it now (the s3 store asks its bucket).
                 "stores": filesystems.storeLines.joined(separator: "\n"),
                 "restart": restartState,
                 "process_view": processViewText,
                 "privileges": privileges,
                 "full_recall_programs": running.withLock { $0.fullRecallPrograms }.joined(separator: " "),
                 "watermarks": spaceWatcher.summary,
                 "journal": journal.map { "on, \($0.eventsRead.load(ordering: .relaxed)) events, \($0.transactions.load(ordering: .relaxed)) transactions" } ?? "off"]
            }
        } catch {
            log.critical("hsmd cannot start: control socket: \(error)")
            return 1
        }
        var metricsServer: MetricsHTTPServer?
        if let listen = config.metricsListen {
            do { metricsServer = try MetricsHTTPServer(listen: listen, log: log, body: exposition) } catch {
                log.critical("hsmd cannot start: metrics_listen = \"\(listen)\": \(error)")
                return 1
            }
        }
        engine.start()
        journal?.start()
        if let catalog { catalog.start(rebuild: CatalogCheck.rebuilder(catalog, filesystems: filesystems, log: log)) }
        do { try events.start() } catch {
            log.critical("hsmd cannot start: \(error)")
            return 1
        }
        predecessor?.submit(to: engine, group: group, eventLog: eventLog, filesystems: filesystems, log: log)
        archiver.recoverAtStart()
        server.start()
        metricsServer?.start()
        if let listen = config.metricsListen { log.notice("serving GET /metrics on http://\(listen)/metrics") }
        premarker.start()
        spaceWatcher.start()
        startWatchdog(events, log: log)
        log.notice("hsmd \(version) ready: managing \(fsList); control socket \(config.socket)")
        SystemdNotify.send("READY=1\nSTATUS=managing \(filesystems.all.count) filesystem(s)")

        var sig: Int32 = 0
        while true {
            sigwait(&waitSet, &sig)
            guard sig == SIGHUP else { break }
            // Every part that reads a reloadable key (ConfigReload.keys) takes the new config
            // here; a new reloadable key adds its reader's apply call.
            let reloader = ConfigReloader(path: configPath, logLevel: logLevel, log: log) { new in
                engine.apply(new)
                settings.replace(with: new)
            }
            SystemdNotify.send("RELOADING=1")
            running.withLock { reloader.reload(&$0) }
            SystemdNotify.send("READY=1\nSTATUS=managing \(filesystems.all.count) filesystem(s)")
        }

        log.notice("received \(sig == SIGTERM ? "SIGTERM" : "SIGINT"), stopping")
        SystemdNotify.send("STOPPING=1")
        server.stop()
        metricsServer?.stop()
        premarker.stop()
        spaceWatcher.stop()
        // Stop reading and finish what was taken. The filesystem marks stay: with the
        // group in systemd's fd store, accesses wait for the next hsmd instead of being
        // allowed (without systemd, exiting closes the group and the kernel allows them).
        events.stop()
        let unanswered = engine.stop(drainSeconds: 20)
        if unanswered > 0 {
            log.warning("\(unanswered) access(es) still unanswered at stop; they stay on record for the next hsmd")
        }
        journal?.stop()
        catalog?.stop()
        warnAboutOfflineFiles(filesystems, log: log)
        log.notice("hsmd stopped")
        return 0
    }

    /// Whether release and recall can keep files' setuid/setgid bits and capabilities
    /// (FilePrivileges): "kept", or what is missing, also logged once.
    static func privilegeKeeping(log: Logger) -> String {
        guard let held = OwnCapabilities.effective() else { return "unknown: /proc/self/status unreadable" }
        var missing: [String] = []
        if held & (1 << OwnCapabilities.fsetid) == 0 { missing.append("CAP_FSETID (setuid/setgid bits)") }
        if held & (1 << OwnCapabilities.setfcap) == 0 { missing.append("CAP_SETFCAP (security.capability)") }
        if missing.isEmpty { return "kept across release and recall" }
        let text = "lost at release and recall: missing \(missing.joined(separator: ", "))"
        log.warning("files' privileges are \(text); the shipped unit grants both")
        return text
    }

    /// Hands the groups and the event log to systemd's fd store, so a restart (or a crash
    /// and its automatic restart) keeps them alive: accesses meanwhile wait instead of
    /// being allowed. Fds systemd handed back are in the store already.
    private static func keepAcrossRestarts(group: FanotifyGroup, eventLog: EventLog, journal: Journal?,
                                           inherited: InheritedDescriptors, log: Logger) {
        guard SystemdNotify.isAvailable else { return }
        var toStore: [(fd: Int32, name: String)] = []
        if inherited.group == nil { toStore.append((group.fd, InheritedDescriptors.groupName)) }
        if inherited.eventLog == nil || inherited.group == nil { toStore.append((eventLog.fd, InheritedDescriptors.eventLogName)) }
        for (fsid, fd) in journal?.groups ?? [] where inherited.journalGroups[fsid] != fd {
            toStore.append((fd, InheritedDescriptors.journalPrefix + String(fsid, radix: 16)))
        }
        for item in toStore {
            do { try SystemdNotify.store(fd: item.fd, name: item.name) } catch {
                log.warning("cannot hand \(item.name) to systemd's fd store: \(error); a restart will let accesses through as zeros")
            }
        }
    }

    /// At a stop hsmd cannot tell a restart (the fd store keeps the groups) from a stop
    /// for good (systemd 252 empties the store then): say what the latter would mean.
    private static func warnAboutOfflineFiles(_ filesystems: ManagedFilesystems, log: Logger) {
        let deadline = monotonicNanos() + 3_000_000_000
        var count = 0
        var cut = false
        for fs in filesystems.all where !cut {
            // What cannot be read may hold more: the count is then a lower bound.
            TreeWalker.walkWhile(fs.path, device: fs.device, failed: { _ in cut = true }) { path, st in
                if monotonicNanos() > deadline { cut = true; return false }
                guard st.fileType == .regular, let raw = try? Xattr.get(path: path, Marker.xattrName),
                      let m = try? MarkerCodec.decode(raw), !m.offline.isEmpty else { return true }
                count += 1
                return true
            }
        }
        guard count > 0 else { return }
        log.warning("\(cut ? "at least " : "")\(count) file(s) still have offline data: after a restart their readers wait for the next hsmd; if hsmd stays stopped (systemctl stop, or no systemd) reads of their released ranges return zeros until it starts again (README, \"Stopping hsmd\")")
    }

    private static func makeDirectory(_ path: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw StartError(description: "cannot create directory \(path): \(error.localizedDescription)")
        }
    }

    /// Pings systemd's watchdog while the event loop is alive: waiting for events (idle)
    /// or in a batch that started less than EventLoop.stuckAfterNanos ago.
    private static func startWatchdog(_ events: EventLoop, log: Logger) {
        guard let usec = ProcessInfo.processInfo.environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 else { return }
        startThread("hsmd-watchdog") {
            var withheld = false
            while true {
                usleep(UInt32(min(usec / 4, 5_000_000)))
                if events.isAlive {
                    SystemdNotify.send("WATCHDOG=1")
                    withheld = false
                } else if !withheld {
                    log.critical("the event loop is stuck in one batch for over \(EventLoop.stuckAfterNanos / 1_000_000_000) s; withholding the watchdog ping so that systemd restarts hsmd")
                    withheld = true
                }
            }
        }
    }
}
