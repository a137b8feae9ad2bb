import ArgumentParser
import Foundation
import HSMCore

/// `hsmctl report` and `hsmctl check`: the catalog's figures, and the reconciliation of
/// markers, catalog and stores (both done by hsmd; hsmctl only prints).

private func prettyJSON<T: Encodable>(_ value: T) -> String {
    let e = JSONEncoder()
    e.keyEncodingStrategy = .convertToSnakeCase
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return (try? String(decoding: e.encode(value), as: UTF8.self)) ?? "null"
}

private func date(_ t: Int64?) -> String {
    guard let t else { return "-" }
    let f = DateFormatter()
    f.dateFormat = "yyyy-MM-dd HH:mm:ss'Z'"
    f.timeZone = TimeZone(identifier: "UTC")
    return f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
}

private func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
    s.count >= n ? s : (right ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
}

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Files and bytes by state per managed filesystem, objects and orphans per store (from hsmd's catalog).",
        discussion: "Exit status: 0 printed; 2 usage error, hsmd unreachable, not root, or no catalog.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "A path on the managed filesystem to report (default: all of them).") var path: String?

    func run() throws {
        try requireRoot("report")
        let reply = try send(connection.client, ControlRequest(op: .report, paths: path.map { [absolute($0)] } ?? []))
        guard let r = reply.catalog else { throw fail("hsmd sent no report") }
        if json {
            print(prettyJSON(r))
            return
        }
        for fs in r.filesystems {
            print("\(fs.path) (store \(fs.store))")
            print("  \(pad("state", 10)) \(pad("files", 10, right: true)) \(pad("bytes", 12, right: true))")
            for state in HSMState.allCases {
                let c = fs.states[state.rawValue] ?? .init(files: 0, bytes: 0)
                print("  \(pad(state.rawValue, 10)) \(pad("\(c.files)", 10, right: true)) \(pad(Units.formatBytes(c.bytes), 12, right: true))")
            }
            print("  \(pad("total", 10)) \(pad("\(fs.files)", 10, right: true)) \(pad(Units.formatBytes(fs.bytes), 12, right: true))")
            print("  local \(Units.formatBytes(fs.localBytes)), offline \(Units.formatBytes(fs.offlineBytes)); \(fs.objects) objects holding \(Units.formatBytes(fs.storedBytes)) in the store")
            print("  pinned \(fs.pinned.files) files, \(Units.formatBytes(fs.pinned.bytes)) (release, migrate and the watermarks leave them)")
            print("  archives: oldest \(date(fs.oldestArchive)), newest \(date(fs.newestArchive))")
        }
        for s in r.stores {
            print("store \(s.name): \(s.objects) objects, \(Units.formatBytes(s.storedBytes)); orphans \(s.orphans) (\(Units.formatBytes(s.orphanBytes))); oldest archive \(date(s.oldestArchive)), newest \(date(s.newestArchive))")
        }
        if let t = r.rebuiltAt { print("catalog last rebuilt \(date(t))") }
        for n in r.notes { FileHandle.standardError.write(Data("hsmctl: note: \(n)\n".utf8)) }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reconcile markers, catalog and store listing; --scrub verifies every stored block; --repair rebuilds the catalog.",
        discussion: """
            Nothing is ever deleted or changed but the catalog (--repair). Exit status: 0 no discrepancy; \
            1 discrepancies found (each printed with what it means); 2 usage error, hsmd unreachable or not root; \
            3 the check could not be made, or not in full (a store unusable, the catalog unwritable, a directory \
            it could not read: printed as "unreadable", and no orphan is reported for that store).
            """)
    @OptionGroup var connection: Connection
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Read every stored block of the objects markers refer to and verify its checksum (idle I/O priority).") var scrub = false
    @Flag(help: "Rebuild the catalog from the markers and the stores' records.") var repair = false
    @Option(help: "Scrub at most this many bytes per second (e.g. 50M).") var rate: String?
    @Argument(help: "A path on the managed filesystem to check (default: all of them).") var path: String?

    func run() throws {
        try requireRoot("check")
        var rateBytes: Int64?
        if let rate {
            guard let r = Units.parseSize(rate), r > 0 else { throw fail("--rate \(rate): expected a size per second such as 50M or 1G") }
            guard scrub else { throw fail("--rate limits the scrub; give --scrub too") }
            rateBytes = r
        }
        var request = ControlRequest(op: .check, paths: path.map { [absolute($0)] } ?? [])
        request.scrub = scrub
        request.repair = repair
        request.rate = rateBytes
        let reply = try send(connection.client, request)
        guard let r = reply.check else { throw fail("hsmd sent no check result") }
        if let failure = r.failure { throw fail("check: \(failure)", code: 3) }
        if json {
            print(prettyJSON(r))
        } else {
            var line = "checked \(r.filesystems.joined(separator: ", ")): \(r.filesWalked) files, \(r.markers) markers, \(r.objectsListed) objects in the store, \(r.catalogRows) catalog rows"
            if scrub { line += "; scrubbed \(r.scrubbedObjects) objects (\(Units.formatBytes(r.scrubbedBytes)))" }
            print(line)
            for d in r.discrepancies {
                let what = [d.path, d.object.map { "object \($0)" }].compactMap { $0 }.joined(separator: " ")
                print("\(d.kind.rawValue): \(what): \(d.meaning)")
            }
            print(r.discrepancies.isEmpty ? "no discrepancies" : "\(r.discrepancies.count) discrepancies")
            if r.repaired { print("catalog rebuilt from the markers and the stores") }
        }
        if r.discrepancies.contains(where: { $0.kind == .unreadable }) { throw ExitCode(3) }
        if !r.discrepancies.isEmpty { throw ExitCode(1) }
    }
}
