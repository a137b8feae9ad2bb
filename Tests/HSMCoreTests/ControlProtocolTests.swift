import Foundation
import XCTest
@testable import HSMCore

final class ControlProtocolTests: XCTestCase {
    private func json(_ bytes: [UInt8]) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    func testRequestRoundTrip() throws {
        let r = ControlRequest(op: .migrate, paths: ["/data/a b", "/data/ü/ß"], range: [4096, 1 << 20],
                               olderThanSeconds: 86_400, minSize: 1 << 20, exclude: ["*.tmp", "/data/keep/*"],
                               dryRun: true, jobs: 8, progress: true)
        let bytes = ControlCodec.encode(r)
        XCTAssertEqual(try ControlCodec.decode(ControlRequest.self, bytes), r)
        let o = try json(bytes)
        XCTAssertEqual(o["op"] as? String, "migrate")
        XCTAssertEqual(o["older_than_seconds"] as? Int, 86_400)
        XCTAssertEqual(o["min_size"] as? Int, 1 << 20)
        XCTAssertEqual(o["dry_run"] as? Bool, true)
        XCTAssertNil(o["dryRun"])
        XCTAssertNil(o["olderThanSeconds"])
        XCTAssertFalse(bytes.contains(UInt8(ascii: "\n")), "one JSON object per line")
        XCTAssertTrue(String(decoding: bytes, as: UTF8.self).contains("\"/data/keep/*\""), "slashes are not escaped")
    }

    func testEveryOperationRoundTrips() throws {
        for op in [ControlRequest.Operation.ping, .archive, .release, .migrate, .recall, .status] {
            let r = ControlRequest(op: op, paths: ["/x"])
            XCTAssertEqual(try ControlCodec.decode(ControlRequest.self, ControlCodec.encode(r)), r)
        }
        let minimal = ControlRequest(op: .ping)
        let o = try json(ControlCodec.encode(minimal))
        XCTAssertNil(o["range"], "absent optionals are omitted")
        XCTAssertEqual(try ControlCodec.decode(ControlRequest.self, ControlCodec.encode(minimal)), minimal)
    }

    func testUnknownOperationIsRejected() {
        let bytes = Array(#"{"op":"explode","paths":[],"exclude":[],"dry_run":false,"jobs":1,"progress":false}"#.utf8)
        XCTAssertThrowsError(try ControlCodec.decode(ControlRequest.self, bytes))
        XCTAssertThrowsError(try ControlCodec.decode(ControlRequest.self, Array("not json".utf8)))
    }

    func testReplyRoundTrip() throws {
        let files = [
            FileResult(path: "/data/a", outcome: .done, reason: "already archived", state: .archived,
                       object: testObject.hex, bytesArchived: 10, bytesFreed: 20, bytesRecalled: 30),
            FileResult(path: "/data/b", outcome: .failed, reason: "EIO"),
            FileResult(path: "/data/c", outcome: .skipped),
        ]
        let rows = [
            StatusRow(path: "/data/a", state: .released, size: 4 << 20, offlineBytes: 3 << 20, object: testObject.hex),
            StatusRow(path: "/data/d", state: .damaged, size: 1, offlineBytes: 0, object: nil, detail: "bad marker"),
        ]
        let progress = ProgressReport(scanned: 9, done: 5, skipped: 2, failed: 1, bytesArchived: 100, bytesFreed: 50)
        let reply = ControlReply(type: .result, message: "ok", files: files, status: rows, progress: progress,
                                 info: ["version": "1", "fanotify": "yes"])
        let d = try ControlCodec.decode(ControlReply.self, ControlCodec.encode(reply))
        XCTAssertEqual(d.type, .result)
        XCTAssertEqual(d.message, "ok")
        XCTAssertEqual(d.files, files)
        XCTAssertEqual(d.status, rows)
        XCTAssertEqual(d.progress, progress)
        XCTAssertEqual(d.info, ["version": "1", "fanotify": "yes"])
        XCTAssertEqual(ControlCodec.encode(d), ControlCodec.encode(reply))

        let o = try json(ControlCodec.encode(reply))
        let p = try XCTUnwrap(o["progress"] as? [String: Any])
        XCTAssertEqual(p["bytes_archived"] as? Int, 100)
        XCTAssertEqual(p["bytes_freed"] as? Int, 50)
        let f = try XCTUnwrap((o["files"] as? [[String: Any]])?.first)
        XCTAssertEqual(f["bytes_recalled"] as? Int, 30)
        XCTAssertEqual(f["outcome"] as? String, "done")
    }

    func testErrorAndProgressReplies() throws {
        for kind in [ControlReply.Kind.error, .progress] {
            let r = ControlReply(type: kind, message: kind == .error ? "no such file" : nil,
                                 progress: kind == .progress ? ProgressReport(scanned: 1) : nil)
            let d = try ControlCodec.decode(ControlReply.self, ControlCodec.encode(r))
            XCTAssertEqual(d.type, kind)
            XCTAssertEqual(d.message, r.message)
            XCTAssertEqual(d.progress, r.progress)
            XCTAssertNil(d.files)
            XCTAssertNil(d.status)
            let o = try json(ControlCodec.encode(r))
            XCTAssertEqual(o["type"] as? String, kind.rawValue)
        }
    }

    func testStatusRowUsesSnakeCase() throws {
        let row = StatusRow(path: "/data/a", state: .partial, size: 5, offlineBytes: 3, object: testObject.hex)
        let bytes = ControlCodec.encode(row)
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(text.contains("\"offline_bytes\":3"), text)
        XCTAssertFalse(text.contains("offlineBytes"), text)
        let o = try json(bytes)
        XCTAssertEqual(o["state"] as? String, "partial")
        XCTAssertEqual(o["object"] as? String, "00112233445566778899aabbccddeeff")
        XCTAssertEqual(try ControlCodec.decode(StatusRow.self, bytes), row)
        // Keys are sorted, so output is stable.
        XCTAssertEqual(text, #"{"object":"00112233445566778899aabbccddeeff","offline_bytes":3,"path":"/data/a","size":5,"state":"partial"}"#)
    }

    func testHSMStateRawValues() {
        XCTAssertEqual(HSMState.allCases.map(\.rawValue), ["resident", "archived", "released", "partial", "dirty", "damaged"])
    }
}

final class ObjectIDTests: XCTestCase {
    func testHexRoundTrip() {
        XCTAssertEqual(testObject.hex, "00112233445566778899aabbccddeeff")
        XCTAssertEqual(testObject.description, testObject.hex)
        XCTAssertEqual(testObject.bytes, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                          0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF])
        for _ in 0..<100 {
            let id = ObjectID.random()
            XCTAssertEqual(ObjectID(hex: id.hex), id)
            XCTAssertEqual(id.hex.count, 32)
        }
        XCTAssertNotEqual(ObjectID.random(), ObjectID.random())
    }

    func testInvalid() {
        XCTAssertNil(ObjectID(bytes: []))
        XCTAssertNil(ObjectID(bytes: [UInt8](repeating: 0, count: 15)))
        XCTAssertNil(ObjectID(bytes: [UInt8](repeating: 0, count: 17)))
        XCTAssertNil(ObjectID(hex: ""))
        XCTAssertNil(ObjectID(hex: "00112233445566778899aabbccddeef"))
        XCTAssertNil(ObjectID(hex: "00112233445566778899aabbccddeeff0"))
        XCTAssertNil(ObjectID(hex: "00112233445566778899aabbccddeefg"))
        XCTAssertNil(ObjectID(hex: "0011223344556677-899aabbccddeeff"))
        XCTAssertNil(ObjectID(hex: "../../../../../../../etc/passwd.."), "ids are used to build store paths")
    }

    func testCodableIsHexString() throws {
        let data = try JSONEncoder().encode([testObject])
        XCTAssertEqual(String(decoding: data, as: UTF8.self), #"["00112233445566778899aabbccddeeff"]"#)
        XCTAssertEqual(try JSONDecoder().decode([ObjectID].self, from: data), [testObject])
        XCTAssertThrowsError(try JSONDecoder().decode([ObjectID].self, from: Data(#"["zz"]"#.utf8)))
    }
}
