import Foundation
import HSMCore
import HSMKernel

/// The `hsmctl journal` operations on hsmd's side. Each first waits for the journal to
/// catch up with every change made before the request (`Journal.sync`), so an answer
/// never misses what the caller just did.
struct JournalRequests {
    let journal: Journal

    func serve(_ request: ControlRequest) -> ControlReply {
        do { return try answer(request) } catch let e as DatabaseError {
            return ControlReply(type: .error, message: "change journal database: \(e)")
        } catch {
            return ControlReply(type: .error, message: "\(error)")
        }
    }

    private func fail(_ m: String) -> ControlReply { ControlReply(type: .error, message: m) }

    /// The filesystems a request names: the one holding its path, or all of them.
    private func filesystems(_ request: ControlRequest) -> Result<[Int], ControlReplyError> {
        if request.paths.count > 1 { return .failure(ControlReplyError(message: "name at most one path")) }
        guard let path = request.paths.first else { return .success(Array(journal.watched.indices)) }
        guard let fs = journal.filesystem(containing: path) else {
            return .failure(ControlReplyError(message: "\(path) is not on a managed filesystem (managed: \(journal.watched.map(\.path).joined(separator: ", ")))"))
        }
        return .success([fs])
    }

    struct ControlReplyError: Error { let message: String }

    private func answer(_ request: ControlRequest) throws -> ControlReply {
        guard journal.sync() else { return fail("the change journal did not catch up in time; try again") }
        let selected: [Int]
        switch filesystems(request) {
        case .success(let s): selected = s
        case .failure(let e): return fail(e.message)
        }
        switch request.op {
        case .journalStatus:
            return ControlReply(type: .result, journal: try journal.status().filter { s in selected.contains { journal.watched[$0].path == s.path } })
        case .journalSnapshot:
            for fs in selected { _ = journal.snapshot(fs) }
            guard journal.sync() else { return fail("the new epoch was not written in time") }
            return ControlReply(type: .result, journal: try journal.status().filter { s in selected.contains { journal.watched[$0].path == s.path } })
        case .journalList:
            var all: [JournalEntry] = []
            var notes: [String] = []
            for fs in selected {
                let since = request.since ?? journal.currentEpoch(fs)
                let epochs = try journal.epochs(fs)
                if let current = epochs.last?.epoch, since > current {
                    return fail("--since \(since): \(journal.watched[fs].path) is only at epoch \(current)")
                }
                if let problem = JournalRules.rangeProblem(since: since, epochs: epochs) {
                    notes.append("\(journal.watched[fs].path): \(problem); this list may miss changes")
                }
                all += try journal.changes(fs, since: since, under: request.paths.first)
            }
            return ControlReply(type: .result, notes: notes.isEmpty ? nil : notes, changes: all)
        case .journalChanged:
            guard let path = request.paths.first, let fs = selected.first else { return fail("name the path to ask about") }
            let since = request.since ?? journal.currentEpoch(fs)
            return ControlReply(type: .result, verdict: try journal.changed(fs, path: path, since: since))
        default:
            return fail("not a journal operation")
        }
    }
}
