import ArgumentParser
import Foundation
import Glibc
import HSMCore
import HSMKernel

struct HSMCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsmctl",
        abstract: "Administer hsmd: archive, release, migrate, recall, pin, remove and inspect files; collect orphans; rebuild from a store.",
        discussion: """
            Exit status: 0 all done; 1 some files not done (each listed with its reason); \
            2 usage error, hsmd unreachable, or not root.
            """,
        version: "0.1.0",
        subcommands: [Archive.self, Release.self, Migrate.self, Recall.self, Status.self, Report.self, Check.self,
                      Remove.self, PinCommand.self, UnpinCommand.self, GC.self, Import.self, JournalCommand.self, Doctor.self,
                      Queue.self, Cancel.self, Metrics.self])
}

struct Connection: ParsableArguments {
    @Option(name: .long, help: "hsmd's control socket (default: $HSMD_SOCKET or /run/hsmd/hsmd.sock).")
    var socket: String?

    var client: ControlClient { ControlClient(socket: ControlClient.resolveSocket(socket)) }
}

// MARK: - Shared plumbing

func absolute(_ path: String) -> String {
    let p = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    var s = (p as NSString).standardizingPath
    if s.count > 1 && s.hasSuffix("/") { s.removeLast() }
    return s
}

func fail(_ message: String, code: Int32 = 2) -> ExitCode {
    FileHandle.standardError.write(Data("hsmctl: \(message)\n".utf8))
    return ExitCode(code)
}

func requireRoot(_ verb: String) throws {
    if geteuid() != 0 {
        throw fail("\(verb) must be run as root: only root may move file data and HSM markers (try: sudo hsmctl \(verb) …)")
    }
}

func send(_ client: ControlClient, _ request: ControlRequest, onFiles: (([FileResult]) -> Void)? = nil,
          onProgress: (ProgressReport) -> Void = { _ in }) throws -> ControlReply {
    // The checks hsmd makes, made here first: a usage error before anything is sent.
    do { try request.validate() } catch { throw fail(error.message) }
    do { return try client.send(request, onFiles: onFiles, onProgress: onProgress) } catch {
        switch error {
        case .unreachable(let m), .refused(let m): throw fail(m)
        }
    }
}

func printJSON(_ object: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data("null".utf8)
    print(String(decoding: data, as: UTF8.self))
}

func jsonObject(_ r: FileResult) -> [String: Any] {
    var o: [String: Any] = ["path": r.path, "outcome": r.outcome.rawValue,
                            "bytes_archived": r.bytesArchived, "bytes_freed": r.bytesFreed, "bytes_recalled": r.bytesRecalled]
    o["reason"] = r.reason ?? NSNull()
    o["state"] = r.state?.rawValue ?? NSNull()
    o["object"] = r.object ?? NSNull()
    return o
}

/// Prints per-file lines (or JSON) and turns the outcomes into the exit status.
func report(_ files: [FileResult], verb: String, json: Bool, quietSkips: Bool = false) throws {
    let notDone = files.filter { $0.outcome == .failed }
    if json {
        let summary: [String: Any] = [
            "files": files.count, "done": files.filter { $0.outcome == .done }.count,
            "skipped": files.filter { $0.outcome == .skipped }.count, "not_done": notDone.count,
            "bytes_archived": files.reduce(Int64(0)) { $0 + $1.bytesArchived },
            "bytes_freed": files.reduce(Int64(0)) { $0 + $1.bytesFreed },
            "bytes_recalled": files.reduce(Int64(0)) { $0 + $1.bytesRecalled },
        ]
        printJSON(["files": files.map(jsonObject), "summary": summary])
    } else {
        for r in files {
            switch r.outcome {
            case .done:
                var details: [String] = []
                if let s = r.state { details.append(s.rawValue) }
                if let n = r.reason { details.append(n) }
                if r.bytesArchived > 0 { details.append("\(Units.formatBytes(r.bytesArchived)) archived") }
                if r.bytesFreed > 0 { details.append("\(Units.formatBytes(r.bytesFreed)) freed") }
                if r.bytesRecalled > 0 { details.append("\(Units.formatBytes(r.bytesRecalled)) recalled") }
                if let o = r.object { details.append("object \(o)") }
                print("\(r.path): \(details.joined(separator: ", "))")
            case .skipped:
                if !quietSkips { print("\(r.path): skipped: \(r.reason ?? "")") }
            case .failed:
                FileHandle.standardError.write(Data("hsmctl: \(verb) \(r.path): \(r.reason ?? "failed")\n".utf8))
            }
        }
    }
    if !notDone.isEmpty { throw ExitCode(1) }
}

func checkPaths(_ paths: [String]) throws -> [String] {
    if paths.isEmpty { throw fail("name at least one path") }
    return paths.map(absolute)
}

// MARK: - Commands

struct Archive: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Copy files to the tier and keep their data local (state: archived).")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to archive.") var paths: [String] = []

    func run() throws {
        try requireRoot("archive")
        let reply = try send(connection.client, ControlRequest(op: .archive, paths: try checkPaths(paths)))
        try report(reply.files ?? [], verb: "archive", json: json)
    }
}

struct Release: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Punch out the local data of archived, unchanged files (state: released).")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to release.") var paths: [String] = []

    func run() throws {
        try requireRoot("release")
        let reply = try send(connection.client, ControlRequest(op: .release, paths: try checkPaths(paths)))
        try report(reply.files ?? [], verb: "release", json: json)
    }
}

struct Recall: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Bring released data back ahead of use.")
    @OptionGroup var connection: Connection
    @Option(help: "Only this byte range, OFFSET:LENGTH (sizes such as 4k or 1M allowed).") var range: String?
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to recall.") var paths: [String] = []

    func run() throws {
        try requireRoot("recall")
        var r: [Int64]?
        if let range {
            let parts = range.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, let off = Units.parseSize(parts[0]), let len = Units.parseSize(parts[1]), len > 0 else {
                throw fail("--range \(range): expected OFFSET:LENGTH, e.g. 0:1M or 4096:4096")
            }
            r = [off, len]
        }
        let reply = try send(connection.client, ControlRequest(op: .recall, paths: try checkPaths(paths), range: r))
        try report(reply.files ?? [], verb: "recall", json: json)
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Archive and release cold files, walking directories.",
        discussion: """
            A file's age counts from its last access or modification, whichever is later. \
            --policy NAME takes the age, size and excludes from the [[policy]] of that name in hsmd's config; \
            without a PATH it migrates every managed filesystem.
            """)
    @OptionGroup var connection: Connection
    @Option(help: "Use this [[policy]] of hsmd's config (instead of --older-than, --min-size, --exclude).") var policy: String?
    @Option(help: "Only files not used for this long (e.g. 30d, 12h, 90m).") var olderThan: String?
    @Option(help: "Only files at least this big (e.g. 64k, 1M).") var minSize: String?
    @Option(help: "Skip files matching this glob (repeatable; with a '/' it matches the whole path).") var exclude: [String] = []
    @Flag(help: "Only report what would migrate.") var dryRun = false
    @Flag(help: "Scan only directories the change journal lists as changed since the last incremental run (full scan when unknown).") var incremental = false
    @Option(help: "Files to migrate in parallel.") var jobs: Int = 4
    @Flag(name: .shortAndLong, help: "Print a line for every file migrated.") var verbose = false
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files and directories.") var paths: [String] = []

    func run() throws {
        try requireRoot("migrate")
        var age: Int64?, size: Int64?
        if let olderThan {
            guard let d = Units.parseDuration(olderThan) else { throw fail("--older-than \(olderThan): expected a duration such as 30d, 12h, 90m or 45s") }
            age = d
        }
        if let minSize {
            guard let s = Units.parseSize(minSize) else { throw fail("--min-size \(minSize): expected a size such as 4096, 64k or 1M") }
            size = s
        }
        guard (1...64).contains(jobs) else { throw fail("--jobs \(jobs): expected 1 to 64") }
        if let policy, olderThan != nil || minSize != nil || !exclude.isEmpty {
            throw fail("--policy \(policy) gives the age, size and excludes; drop --older-than, --min-size and --exclude (or the policy)")
        }
        let tty = isatty(STDERR_FILENO) == 1 && !json
        // With a policy and no path, hsmd migrates every filesystem it manages.
        let targets = policy != nil && paths.isEmpty ? [] : try checkPaths(paths)
        let request = ControlRequest(op: .migrate, paths: targets, olderThanSeconds: age, minSize: size,
                                     exclude: exclude, dryRun: dryRun, jobs: jobs, progress: tty, incremental: incremental ? true : nil,
                                     policy: policy)
        // hsmd sends the results as it makes them, in no order. The text form keeps only
        // counts and the lines it prints (sorted by path); --json keeps every row.
        var summary = MigrateSummary(keepDone: verbose || dryRun)
        var rows: [FileResult] = []
        let onFiles: ([FileResult]) -> Void = json ? { rows += $0 } : { summary.add($0) }
        let reply = try send(connection.client, request, onFiles: onFiles) { p in
            let line = "\rscanned \(p.scanned), migrated \(p.done), not done \(p.failed), \(Units.formatBytes(p.bytesArchived)) archived, \(Units.formatBytes(p.bytesFreed)) freed "
            FileHandle.standardError.write(Data(line.utf8))
        }
        if tty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        // What the scan was (incremental, or full and why): stdout for people, stderr with --json.
        for n in reply.notes ?? [] {
            if json { FileHandle.standardError.write(Data("hsmctl: \(n)\n".utf8)) } else { print(n) }
        }
        if !json {
            if verbose || dryRun {
                for f in summary.done.sorted(by: { $0.path < $1.path }) { print("\(f.path): \(dryRun ? "would migrate" : (f.state?.rawValue ?? "done"))") }
            }
            let notDone = summary.notDone.sorted { $0.path < $1.path }
            for f in notDone { FileHandle.standardError.write(Data("hsmctl: migrate \(f.path): \(f.reason ?? "failed")\n".utf8)) }
            print(dryRun ? "dry run: \(summary.doneCount) file(s) would migrate, \(Units.formatBytes(summary.bytesArchived))"
                         : "migrated \(summary.doneCount) file(s): \(Units.formatBytes(summary.bytesArchived)) archived, \(Units.formatBytes(summary.bytesFreed)) freed")
            for (reason, n) in summary.skipped.sorted(by: { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }) { print("skipped \(n): \(reason)") }
            if !notDone.isEmpty { print("not done \(notDone.count) (reasons above)") }
            if !notDone.isEmpty { throw ExitCode(1) }
        } else {
            try report(rows.sorted { $0.path < $1.path }, verb: "migrate", json: true)
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each file's HSM state (directories are walked).",
        discussion: "States: resident, archived, released, partial, dirty, damaged.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON array of {path, state, size, offline_bytes, object, pinned}.") var json = false
    @Argument(help: "Files and directories.") var paths: [String] = []

    func run() throws {
        let reply = try send(connection.client, ControlRequest(op: .status, paths: try checkPaths(paths)))
        let rows = reply.status ?? []
        if json {
            printJSON(rows.map { r -> [String: Any] in
                ["path": r.path, "state": r.state.rawValue, "size": r.size, "offline_bytes": r.offlineBytes, "object": r.object ?? NSNull(),
                 "pinned": r.pinned ?? false]
            })
        } else {
            if !rows.isEmpty { print(pad("STATE", 9) + pad("SIZE", 11) + pad("OFFLINE", 11) + pad("OBJECT", 33) + "PATH") }
            for r in rows {
                var line = pad(r.state.rawValue, 9) + pad(Units.formatBytes(r.size), 11) + pad(Units.formatBytes(r.offlineBytes), 11)
                    + pad(r.object ?? "-", 33) + r.path
                if let d = r.detail { line += "  (\(d))" }
                if r.pinned == true { line += "  (pinned)" }
                print(line)
            }
        }
        try report(reply.files ?? [], verb: "status", json: false)
    }

    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check kernel support, filesystems and whether hsmd answers.")
    @OptionGroup var connection: Connection

    func run() throws {
        var problems = 0
        func line(_ ok: Bool, _ what: String) {
            print("\(ok ? "ok  " : "FAIL") \(what)")
            if !ok { problems += 1 }
        }
        var uts = utsname()
        uname(&uts)
        let release = withUnsafePointer(to: &uts.release) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
        line(true, "kernel \(release)")
        line(geteuid() == 0, "running as root (needed for fanotify and trusted.* xattrs)")
        if geteuid() == 0 {
            switch KernelProbe.preContentEvents() {
            case .ok: line(true, "fanotify pre-content events (FAN_PRE_ACCESS) available")
            case .failed(let why): line(false, "fanotify pre-content events: \(why) (needs Linux 6.14+)")
            }
        }
        let client = connection.client
        do {
            let reply = try client.send(ControlRequest(op: .ping))
            let info = reply.info ?? [:]
            line(true, "hsmd \(info["version"] ?? "?") answers on \(client.socket) (pid \(info["pid"] ?? "?"), up \(info["uptime_seconds"] ?? "?") s, \(info["events"] ?? "?") events)")
            line(true, "managed: \(info["filesystems"] ?? "none")")
            for store in (info["stores"] ?? "").split(separator: "\n") {
                // A store that cannot be used now is a warning, not a failure of hsmd: it
                // still answers, recalls fail with EIO and archive is refused until it is back.
                let ok = store.hasSuffix(": ok") || store.contains(": ok (identity ")
                print("\(ok ? "ok  " : "warn") store \(store)")
            }
            if let premark = info["premark"] { line(true, "resident-file walk at start: \(premark)") }
            if let journal = info["journal"] { line(true, "change journal: \(journal)") }
            if let view = info["process_view"] {
                print("\(view.hasPrefix("yes") ? "ok  " : "warn") sees what accessing processes do (tells reads from truncations and shifting fallocates): \(view)")
            }
            if let privileges = info["privileges"] {
                print("\(privileges.hasPrefix("kept") ? "ok  " : "warn") files' setuid/setgid bits and capabilities: \(privileges)")
            }
            if let programs = info["full_recall_programs"] {
                // Not a failure either: an empty list may be meant, but its cost must be known.
                if programs.isEmpty {
                    print("warn whole-file recall at open: none (full_recall_programs = []): hole-probing copiers and loop devices read released data as zeros")
                } else {
                    line(true, "whole-file recall at open for: \(programs) (full_recall_programs)")
                }
            }
            for fs in (info["watermarks"] ?? "").split(separator: "\n") { line(true, "watermarks \(fs)") }
            if let restart = info["restart"] {
                // Not a failure, but an administrator must know when a stop means zeros.
                print("\(restart.contains("without systemd") ? "warn" : "ok  ") restarts: \(restart)")
            }
        } catch {
            switch error {
            case .unreachable(let m), .refused(let m): line(false, m)
            }
        }
        if problems > 0 { throw ExitCode(2) }
    }
}

// Usage errors exit 2 (the parser's default is 64, EX_USAGE); help and version exit 0.
do {
    var command = try HSMCtl.parseAsRoot()
    try command.run()
} catch {
    let code = HSMCtl.exitCode(for: error)
    if code == .validationFailure {
        FileHandle.standardError.write(Data((HSMCtl.fullMessage(for: error) + "\n").utf8))
        exit(2)
    }
    HSMCtl.exit(withError: error)
}
