import ArgumentParser
import HSMCore

// hsmctl pin and unpin: files whose data stays local. hsmd does the work (docs in the
// README, "Pinned files"); these only ask and print.

struct PinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pin",
        abstract: "Keep files local: release, migrate and the watermarks leave them (data already offline is recalled).",
        discussion: "Archive still copies a pinned file to its store. hsmctl unpin undoes it.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to pin.") var paths: [String] = []

    func run() throws { try askHsmd(.pin, paths, connection, json: json) }
}

struct UnpinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpin",
        abstract: "Let release, migrate and the watermarks free pinned files again.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to unpin.") var paths: [String] = []

    func run() throws { try askHsmd(.unpin, paths, connection, json: json) }
}

/// Both commands: root, absolute paths, one request, one line per file.
private func askHsmd(_ op: ControlRequest.Operation, _ paths: [String], _ connection: Connection, json: Bool) throws {
    try requireRoot(op.rawValue)
    let reply = try send(connection.client, ControlRequest(op: op, paths: try checkPaths(paths)))
    try report(reply.files ?? [], verb: op.rawValue, json: json)
}
