import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging

/// hsmd's lifecycle: check the config against the system, mark the filesystems, serve
/// events and hsmctl, stop cleanly on SIGTERM.
public enum Daemon {
    public static let version = "0.1.0"

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Runs until SIGTERM or SIGINT. Returns the process exit status.
    public static func run(config: Config, log: Logger) -> Int32 {
        // Signals for the main thread's sigwait; blocked before any thread starts so every
        // thread inherits the mask.
        var waitSet = sigset_t()
        sigemptyset(&waitSet)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&waitSet, s) }
        pthread_sigmask(SIG_BLOCK, &waitSet, nil)
        signal(SIGPIPE, SIG_IGN)
        Memory.keepResidentSetSmall()

        let started = Date()
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
            do { group = try FanotifyGroup.preContent() } catch {
                throw StartError(description: "\(error): this kernel does not offer fanotify pre-content events (Linux 6.14 or later, CONFIG_FANOTIFY_ACCESS_PERMISSIONS, run as root)")
            }
            for fs in filesystems.all {
                do { try group.markFilesystem(fs.path) } catch {
                    throw StartError(description: "cannot mark \(fs.path) (\(fs.type)) for pre-content events: \(error)")
                }
            }
        } catch {
            log.critical("hsmd cannot start: \(error)")
            return 1
        }

        // The change journal: its own notification group and database (README, "Change journal").
        let journal: Journal?
        if config.journal {
            do { journal = try Journal(stateDir: config.stateDir, filesystems: filesystems.all, log: log) } catch {
                log.critical("hsmd cannot start: \(error)")
                group.close()
                return 1
            }
        } else {
            Journal.markUnwatched(stateDir: config.stateDir, log: log)
            journal = nil
        }

        let locks = InodeLocks()
        let engine = RecallEngine(group: group, filesystems: filesystems, locks: locks, config: config, log: log)
        let events = EventLoop(group: group, engine: engine, log: log)
        let archiver = Archiver(group: group, filesystems: filesystems, locks: locks, engine: engine, log: log)
        let premarker = ResidentPremarker(group: group, filesystems: filesystems.all, locks: locks, limit: config.premarkFiles, log: log)
        let fsList = filesystems.all.map { "\($0.path) (\($0.type), store \($0.store.name))" }.joined(separator: "; ")
        let server: ControlServer
        do {
            server = try ControlServer(socketPath: config.socket, archiver: archiver, journal: journal, log: log) {
                ["version": version, "pid": "\(getpid())", "filesystems": fsList,
                 "uptime_seconds": "\(Int(Date().timeIntervalSince(started)))",
                 "events": "\(events.eventsSeen.load(ordering: .relaxed))",
                 "premark": premarker.summary,
                 "journal": journal.map { "on, \($0.eventsRead.load(ordering: .relaxed)) events, \($0.transactions.load(ordering: .relaxed)) transactions" } ?? "off"]
            }
        } catch {
            log.critical("hsmd cannot start: control socket: \(error)")
            group.close()
            return 1
        }
        engine.start()
        journal?.start()
        do { try events.start() } catch {
            log.critical("hsmd cannot start: \(error)")
            return 1
        }
        archiver.recoverAtStart()
        server.start()
        premarker.start()
        startWatchdog(events, log: log)
        log.notice("hsmd \(version) ready: managing \(fsList); control socket \(config.socket)")
        SystemdNotify.send("READY=1\nSTATUS=managing \(filesystems.all.count) filesystem(s)")

        var sig: Int32 = 0
        repeat { sigwait(&waitSet, &sig) } while sig == SIGHUP

        log.notice("received \(sig == SIGTERM ? "SIGTERM" : "SIGINT"), stopping")
        SystemdNotify.send("STOPPING=1")
        server.stop()
        premarker.stop()
        events.stop()
        engine.stop()
        journal?.stop()
        // Closing the group makes the kernel allow whatever is still queued, and files
        // released meanwhile read as holes: see README, "When hsmd is not running".
        for fs in filesystems.all { group.unmarkFilesystem(fs.path) }
        group.close()
        log.notice("hsmd stopped")
        return 0
    }

    private static func makeDirectory(_ path: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw StartError(description: "cannot create directory \(path): \(error.localizedDescription)")
        }
    }

    /// Pings systemd's watchdog while the event loop is alive.
    private static func startWatchdog(_ events: EventLoop, log: Logger) {
        guard let usec = ProcessInfo.processInfo.environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 else { return }
        startThread("hsmd-watchdog") {
            while true {
                usleep(UInt32(min(usec / 2, 5_000_000)))
                let age = monotonicNanos() - events.heartbeat.load(ordering: .relaxed)
                if age < 10_000_000_000 { SystemdNotify.send("WATCHDOG=1") } else {
                    log.critical("event loop has not run for \(age / 1_000_000_000) s; withholding the watchdog ping")
                }
            }
        }
    }
}
