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

    func run() throws {
        try requireRoot("pin")
        let reply = try send(connection.client, ControlRequest(op: .pin, paths: try checkPaths(paths)))
        try report(reply.files ?? [], verb: "pin", json: json)
    }
}

struct UnpinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpin",
        abstract: "Let release, migrate and the watermarks free pinned files again.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print a JSON result.") var json = false
    @Argument(help: "Files to unpin.") var paths: [String] = []

    func run() throws {
        try requireRoot("unpin")
        let reply = try send(connection.client, ControlRequest(op: .unpin, paths: try checkPaths(paths)))
        try report(reply.files ?? [], verb: "unpin", json: json)
    }
}
