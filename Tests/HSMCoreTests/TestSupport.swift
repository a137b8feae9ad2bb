import Foundation
import Glibc
import XCTest
@testable import HSMCore
import HSMKernel

/// SplitMix64: a small, seeded generator so fuzz and property tests are repeatable.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

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

/// The result of running a closure in a forked child, so a trap (overflow, index out of range)
/// in the code under test fails one test instead of killing the whole test process.
enum IsolatedOutcome: Equatable {
    case passed
    case failed(String)
    /// Killed by a signal; `lastInput` is the breadcrumb the child recorded before it died.
    case crashed(signal: Int32, lastInput: [UInt8])
    case exited(Int32)
}

/// Shared memory the child writes its current input to before each risky call.
final class Breadcrumb: @unchecked Sendable {
    static let capacity = 1 << 16
    let base: UnsafeMutableRawPointer
    init() {
        let p = mmap(nil, Breadcrumb.capacity + 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED && p != nil)
        base = p!
        base.storeBytes(of: 0, as: Int.self)
    }
    deinit { munmap(base, Breadcrumb.capacity + 8) }
    func record(_ bytes: [UInt8]) {
        let n = min(bytes.count, Breadcrumb.capacity)
        bytes.withUnsafeBytes { src in
            if n > 0 { (base + 8).copyMemory(from: src.baseAddress!, byteCount: n) }
        }
        base.storeBytes(of: n, as: Int.self)
    }
    var recorded: [UInt8] {
        let n = base.load(as: Int.self)
        return Array(UnsafeRawBufferPointer(start: base + 8, count: n))
    }
}

/// Runs `body` in a forked child. `body` returns nil on success or a failure message.
func runIsolated(_ body: (Breadcrumb) -> String?) -> IsolatedOutcome {
    let crumb = Breadcrumb()
    var fds: [Int32] = [0, 0]
    precondition(pipe(&fds) == 0)
    fflush(nil)  // flush all stdio streams so the child does not repeat buffered output
    let pid = fork()
    precondition(pid >= 0, "fork failed")
    if pid == 0 {
        close(fds[0])
        if let message = body(crumb) {
            let bytes = Array(message.utf8)
            _ = bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
            _exit(1)
        }
        _exit(0)
    }
    close(fds[1])
    var message: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
        if n > 0 { message += buf[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    close(fds[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let signal = status & 0x7f
    if signal != 0 { return .crashed(signal: signal, lastInput: crumb.recorded) }
    let code = (status >> 8) & 0xff
    if code == 0 { return .passed }
    if code == 1 { return .failed(String(decoding: message, as: UTF8.self)) }
    return .exited(code)
}

func assertIsolatedPasses(_ outcome: IsolatedOutcome, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    switch outcome {
    case .passed: break
    case .failed(let m): XCTFail("\(what): \(m)", file: file, line: line)
    case .crashed(let sig, let input):
        let on = input.isEmpty ? "" : " on input \(hex(input))"
        XCTFail("\(what): the process crashed with signal \(sig) (trap)\(on)", file: file, line: line)
    case .exited(let c): XCTFail("\(what): child exited with status \(c)", file: file, line: line)
    }
}
