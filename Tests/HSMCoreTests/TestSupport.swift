import Foundation
import Glibc
import XCTest
@testable import HSMCore
import HSMKernel

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

/// Overwrites the little-endian field at `offset` with `bytes`.
func patch(_ b: inout [UInt8], at offset: Int, _ bytes: [UInt8]) {
    b.replaceSubrange(offset..<offset + bytes.count, with: bytes)
}

/// Recomputes the trailing CRC32C so an edit reaches the structural checks.
func resealed(_ b: [UInt8]) -> [UInt8] {
    precondition(b.count >= 4)
    var out = Array(b[0..<b.count - 4])
    out += le32(CRC32C.checksum(out))
    return out
}

/// The decode error for `b`, or nil if it decoded.
func decodeError(_ b: [UInt8]) -> MarkerCodec.DecodeError? {
    do {
        _ = try MarkerCodec.decode(b)
        return nil
    } catch {
        return error
    }
}

let testObject = ObjectID(hex: "00112233445566778899aabbccddeeff")!

/// A marker with the chosen offline blocks; shift defaults to what the archiver would pick.
func makeMarker(size: Int64, mtimeNs: Int64 = 1_700_000_000_123_456_789, shift: UInt8? = nil,
                offline: [Int] = [], released: UInt32? = nil, flags: Marker.Flags = [],
                object: ObjectID = testObject) -> Marker {
    let s = shift ?? BlockLayout.shift(forFileSize: size, maxBits: MarkerCodec.maxBlocks)!
    var m = Marker(object: object, size: size, mtimeNs: mtimeNs, blockShift: s)
    for i in offline { m.offline[i] = true }
    m.releasedBlocks = released ?? UInt32(offline.count)
    m.flags = flags
    return m
}

func encoded(_ m: Marker, file: StaticString = #filePath, line: UInt = #line) -> [UInt8] {
    do {
        return try MarkerCodec.encode(m)
    } catch {
        XCTFail("encode failed: \(error)", file: file, line: line)
        return []
    }
}

/// A real FileStat (its initialiser is internal to HSMKernel) whose fields tests then overwrite.
func makeStat(size: Int64, mtimeNs: Int64 = 0, atimeNs: Int64 = 0) throws -> FileStat {
    let dir = FileManager.default.temporaryDirectory
    let path = dir.appendingPathComponent("hsmcore-test-\(UUID().uuidString)").path
    XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("x".utf8)))
    defer { try? FileManager.default.removeItem(atPath: path) }
    var st = try FileStat.of(path: path)
    XCTAssertEqual(st.size, 1)
    st.size = size
    st.mtimeNs = mtimeNs
    st.atimeNs = atimeNs
    return st
}

