import ArgumentParser
import Foundation
import HSMCore

/// `hsmctl journal`: the change journal's epochs and the directories changed in them.
struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal",
        abstract: "Which directories changed since an epoch (the change journal).",
        discussion: """
            hsmd records, per managed filesystem and epoch, every directory whose entries or \
            files changed, with all its ancestors. An epoch is complete unless the kernel's \
            event queue overflowed, hsmd stopped uncleanly, or the filesystem went unwatched; \
            answers about a range holding an incomplete epoch are "unknown".
            """,
        subcommands: [JStatus.self, JSnapshot.self, JList.self, JChanged.self])

    struct JStatus: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Current epoch of each filesystem: start, completeness, directories recorded.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            let reply = try send(connection.client, ControlRequest(op: .journalStatus))
            printStatus(reply.journal ?? [], json: json)
        }
    }

    struct JSnapshot: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "snapshot", abstract: "Close the current epoch and start a new one; prints the new epoch number.")
        @OptionGroup var connection: Connection
        @Argument(help: "A path on the filesystem to snapshot (default: every managed filesystem).") var path: String?

        func run() throws {
            try requireRoot("journal snapshot")
            let reply = try send(connection.client, ControlRequest(op: .journalSnapshot, paths: path.map { [absolute($0)] } ?? []))
            let rows = reply.journal ?? []
            if rows.count == 1 { print(rows[0].current.epoch) } else {
                for r in rows { print("\(r.current.epoch) \(r.path)") }
            }
        }
    }

    struct JList: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Directories changed since an epoch, as paths now (deleted ones marked).")
        @OptionGroup var connection: Connection
        @Option(help: "First epoch of the range (default: the current epoch).") var since: Int64?
        @Flag(help: "Print a JSON array of {path, epoch, deleted}.") var json = false
        @Argument(help: "Only directories at or below this path.") var path: String?

        func run() throws {
            let reply = try send(connection.client, ControlRequest(op: .journalList, paths: path.map { [absolute($0)] } ?? [], since: since))
            for n in reply.notes ?? [] { FileHandle.standardError.write(Data("hsmctl: warning: \(n)\n".utf8)) }
            let rows = reply.changes ?? []
            if json {
                printJSON(rows.map { ["path": $0.path ?? NSNull(), "epoch": $0.epoch, "deleted": $0.deleted] as [String: Any] })
            } else {
                for r in rows { print("\(r.epoch)\t\(r.path ?? "(path unknown)")\(r.deleted ? "\t(deleted)" : "")") }
            }
        }
    }

    struct JChanged: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "changed", abstract: "Did anything under PATH change since an epoch?",
            discussion: "Exit status: 0 something changed; 1 nothing changed; 3 unknown (an epoch in range is incomplete); 2 usage error or hsmd unreachable.")
        @OptionGroup var connection: Connection
        @Option(help: "First epoch of the range (default: the current epoch).") var since: Int64?
        @Argument(help: "A directory or file.") var path: String

        func run() throws {
            let reply = try send(connection.client, ControlRequest(op: .journalChanged, paths: [absolute(path)], since: since))
            guard let v = reply.verdict else { throw fail("hsmd sent no answer") }
            print(v.reason)
            if v.exitCode != 0 { throw ExitCode(v.exitCode) }
        }
    }
}

private func printStatus(_ rows: [JournalFilesystemStatus], json: Bool) {
    if json {
        printJSON(rows.map { r -> [String: Any] in
            ["path": r.path, "epoch": r.current.epoch, "started": r.current.started, "complete": r.current.complete,
             "reason": r.current.reason ?? NSNull(), "directories": r.current.directories, "transactions": r.current.transactions]
        })
        return
    }
    let f = ISO8601DateFormatter()
    for r in rows {
        let c = r.current
        let state = c.complete ? "complete" : "INCOMPLETE (\(c.reason ?? "reason not recorded"))"
        print("\(r.path): epoch \(c.epoch), started \(f.string(from: Date(timeIntervalSince1970: c.started))), \(state), \(c.directories) director\(c.directories == 1 ? "y" : "ies") recorded")
    }
}
