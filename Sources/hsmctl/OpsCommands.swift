import ArgumentParser
import Foundation
import HSMCore

/// `hsmctl queue`, `hsmctl cancel`, `hsmctl metrics`: what hsmd is doing now.
struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List recalls in flight and running archive, release, recall and migrate jobs.",
        discussion: "Exit status: 0 listed (also when nothing runs); 2 hsmd unreachable or not root.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print JSON: {recalls: [...], jobs: [...], queued_accesses}.") var json = false

    func run() throws {
        try requireRoot("queue")
        let reply = try send(connection.client, ControlRequest(op: .queue))
        let q = reply.queue ?? QueueSnapshot(recalls: [], jobs: [], queuedAccesses: 0)
        if json {
            printJSON([
                "queued_accesses": q.queuedAccesses,
                "recalls": q.recalls.map { r -> [String: Any] in
                    ["path": r.path, "pid": r.pid, "program": r.program, "kind": r.kind, "bytes": r.bytes, "age_seconds": r.ageSeconds]
                },
                "jobs": q.jobs.map { j -> [String: Any] in
                    ["id": j.id, "op": j.op, "path": j.path, "paths": j.paths, "uid": j.uid, "age_seconds": j.ageSeconds,
                     "total": j.total, "copied": j.copied, "cancelled": j.cancelled ?? NSNull(),
                     "progress": ["scanned": j.progress.scanned, "done": j.progress.done, "skipped": j.progress.skipped,
                                  "failed": j.progress.failed, "bytes_archived": j.progress.bytesArchived,
                                  "bytes_freed": j.progress.bytesFreed]]
                },
            ])
            return
        }
        print("recalls in flight: \(q.recalls.count) (accesses waiting for an answer: \(q.queuedAccesses))")
        if !q.recalls.isEmpty {
            print(pad("PID", 8) + pad("PROGRAM", 17) + pad("KIND", 8) + pad("BYTES", 11) + pad("AGE", 8) + "PATH")
            for r in q.recalls {
                print(pad(r.pid > 0 ? "\(r.pid)" : "-", 8) + pad(r.program.isEmpty ? "-" : r.program, 17) + pad(r.kind, 8)
                      + pad(Units.formatBytes(r.bytes), 11) + pad(age(r.ageSeconds), 8) + r.path)
            }
        }
        print("jobs: \(q.jobs.count)")
        if !q.jobs.isEmpty {
            print(pad("ID", 6) + pad("OP", 9) + pad("AGE", 8) + pad("PROGRESS", 42) + "PATH")
            for j in q.jobs {
                let p = j.progress
                var progress = "\(p.done + p.skipped + p.failed)/\(j.total > 0 ? "\(j.total)" : "?") files"
                if j.op == "migrate" { progress += ", \(p.scanned) scanned" }
                if ["archive", "migrate"].contains(j.op) && j.copied > p.done { progress += ", \(j.copied) copied" }
                if p.bytesArchived > 0 { progress += ", \(Units.formatBytes(p.bytesArchived))" }
                let more = j.paths > 1 ? " (+\(j.paths - 1) more)" : ""
                let cancelled = j.cancelled.map { "  [stopping: \($0)]" } ?? ""
                print(pad("\(j.id)", 6) + pad(j.op, 9) + pad(age(j.ageSeconds), 8) + pad(progress, 42) + j.path + more + cancelled)
            }
        }
    }

    private func age(_ s: Double) -> String { s < 60 ? String(format: "%.1fs", s) : "\(Int(s) / 60)m\(Int(s) % 60)s" }
    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a running job listed by hsmctl queue: files in progress finish, no new file starts.",
        discussion: "Exit status: 0 the job is stopping; 2 no such job, hsmd unreachable or not root.")
    @OptionGroup var connection: Connection
    @Argument(help: "The job's ID (hsmctl queue).") var id: Int64

    func run() throws {
        try requireRoot("cancel")
        let reply = try send(connection.client, ControlRequest(op: .cancel, id: id))
        print(reply.message ?? "job \(id) is stopping")
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print hsmd's metrics in Prometheus's text exposition format.",
        discussion: "Exit status: 0 printed; 2 hsmd unreachable or not root.")
    @OptionGroup var connection: Connection

    func run() throws {
        try requireRoot("metrics")
        let reply = try send(connection.client, ControlRequest(op: .metrics))
        FileHandle.standardOutput.write(Data((reply.text ?? "").utf8))
    }
}
