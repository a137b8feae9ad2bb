import Glibc
import HSMCore
import HSMKernel
import Logging
import XCTest

@testable import HSMDaemon

/// The job table behind hsmctl queue and cancel, and the hang-up check of a job's client.
final class JobsTests: XCTestCase {
    let log = Logger(label: "test")

    func testAJobIsListedWhileItRunsAndCancelStopsIt() {
        let table = JobTable()
        let request = ControlRequest(op: .archive, paths: ["/a", "/b", "/c"])
        let results = table.run(request, uid: 0, clientFD: nil, log: log) { job -> [String] in
            let rows = table.rows()
            XCTAssertEqual(rows.count, 1)
            XCTAssertEqual(rows.first?.op, "archive")
            XCTAssertEqual(rows.first?.path, "/a")
            XCTAssertEqual(rows.first?.paths, 3)
            XCTAssertEqual(rows.first?.total, 3)
            var done: [String] = []
            for p in request.paths {
                if job.isCancelled { break }
                job.record(FileResult(path: p, outcome: .done, bytesArchived: 10))
                done.append(p)
                if p == "/a" { XCTAssertNotNil(table.cancel(job.id, reason: "test")) }
            }
            XCTAssertEqual(table.rows().first?.cancelled, "test")
            XCTAssertEqual(table.rows().first?.progress.done, 1)
            XCTAssertEqual(table.rows().first?.progress.bytesArchived, 10)
            return done
        }
        XCTAssertEqual(results, ["/a"])
        XCTAssertTrue(table.rows().isEmpty)
        XCTAssertNil(table.cancel(1, reason: "gone"))
    }

    func testAClosedClientCancelsItsJobAHalfClosedOneDoesNot() {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { close(fds[0]) }
        let table = JobTable()
        table.run(ControlRequest(op: .migrate, paths: ["/t"]), uid: 0, clientFD: fds[0], log: log) { job in
            XCTAssertFalse(job.isCancelled)
            shutdown(fds[1], Int32(SHUT_WR))
            XCTAssertFalse(job.isCancelled, "a half-closed client still waits for its answer")
            close(fds[1])
            XCTAssertTrue(job.isCancelled)
            XCTAssertEqual(job.cancelReason, "its hsmctl went away (connection closed)")
        }
    }

    func testInFlightRecallsCountBytes() {
        let table = InFlightRecalls()
        let t = table.begin(path: { "/f" }, pid: getpid(), kind: "access")
        t.bytes.add(4096, ordering: .relaxed)
        let rows = table.rows()
        XCTAssertEqual(rows.count, 1)
        XCTAssertEqual(rows.first?.bytes, 4096)
        XCTAssertEqual(rows.first?.pid, getpid())
        XCTAssertFalse(rows.first?.program.isEmpty ?? true)
        table.end(t)
        XCTAssertEqual(table.count, 0)
    }
}
