import ArgumentParser
import Foundation
import HSMCore

// hsmctl remove, gc and import: the end of a stored copy's life, and the namespace's
// rebuild from a store. hsmd does the work; these only ask and print.

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drop the stored copy of resident or archived files (they become plain unmanaged files).",
        discussion: "Released and partial files are refused unless --recall brings their data back first.")
    @OptionGroup var connection: Connection
    @Flag(help: "Recall released data first instead of refusing.") var recall = false
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files whose stored copy to remove.") var paths: [String] = []

    func run() throws {
        try requireRoot("remove")
        var request = ControlRequest(op: .remove, paths: try checkPaths(paths))
        request.recall = recall ? true : nil
        let reply = try send(connection.client, request)
        try report(reply.files ?? [], verb: "remove", json: json)
    }
}

/// Prints one line per object or file (`prefix` before each) and the notes, or JSON;
/// exits 1 when anything was not done.
func reportLifecycle(_ reply: ControlReply, verb: String, json: Bool) throws {
    let files = reply.files ?? []
    if json {
        printJSON(["files": files.map(jsonObject), "notes": reply.notes ?? []])
    } else {
        for r in files {
            let what = r.object.map { "\($0) \(r.path)" } ?? r.path
            switch r.outcome {
            case .done, .skipped: print("\(what): \(r.reason ?? r.outcome.rawValue)")
            case .failed: FileHandle.standardError.write(Data("hsmctl: \(verb) \(what): \(r.reason ?? "failed")\n".utf8))
            }
        }
        for n in reply.notes ?? [] { print("\(verb): \(n)") }
    }
    if files.contains(where: { $0.outcome == .failed }) { throw ExitCode(1) }
}

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Delete orphaned objects: in a store, named by no marker on any managed filesystem, archived longer ago than the grace.",
        discussion: "A walk or store listing that fails deletes nothing. Kept objects are listed with the reason.")
    @OptionGroup var connection: Connection
    @Option(help: "Keep orphans archived less than this long ago (e.g. 30d, 12h; default 30d).") var grace: String?
    @Flag(help: "Only report what would be deleted.") var dryRun = false
    @Flag(help: "Print a JSON result.") var json = false

    func run() throws {
        try requireRoot("gc")
        var request = ControlRequest(op: .gc, dryRun: dryRun)
        if let grace {
            guard let d = Units.parseDuration(grace) else { throw fail("--grace \(grace): expected a duration such as 30d, 12h, 90m or 0") }
            request.graceSeconds = d
        }
        try reportLifecycle(try send(connection.client, request), verb: "gc", json: json)
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Recreate every file archived in STORE as a released stub (disaster recovery).",
        discussion: "Each file goes to its archived path, or under --into DIR by its path relative to the filesystem it was archived from. Existing files are never overwritten (reported as conflicts); of several versions of one path the newest archive wins.")
    @OptionGroup var connection: Connection
    @Option(help: "Put the files under this directory (on a managed filesystem that uses STORE).") var into: String?
    @Flag(help: "Only report what would be created.") var dryRun = false
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "The store's name in hsmd's config.") var store: String

    func run() throws {
        try requireRoot("import")
        var request = ControlRequest(op: .importStore, dryRun: dryRun)
        request.store = store
        request.into = into.map(absolute)
        try reportLifecycle(try send(connection.client, request), verb: "import", json: json)
    }
}
