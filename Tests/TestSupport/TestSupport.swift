// Helpers the unit-test targets share (a test target cannot import another one): a
// seeded generator for repeatable fuzzing, and running a closure in a forked child so that
// a trap in the code under test fails one test instead of the whole test process.
import Foundation
import Glibc
import XCTest

/// SplitMix64: a small, seeded generator so fuzz and property tests are repeatable.
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

/// The result of running a closure in a forked child, so a trap (overflow, index out of range)
/// in the code under test fails one test instead of killing the whole test process.
public enum IsolatedOutcome: Equatable {
    case passed
    case failed(String)
    /// Killed by a signal; `lastInput` is the breadcrumb the child recorded before it died.
    case crashed(signal: Int32, lastInput: [UInt8])
    case exited(Int32)
}

/// Shared memory the child writes its current input to before each risky call.
/// `@unchecked Sendable`: only the forked child writes it, and the parent reads it only
/// after the child has exited (waitpid), so no two threads ever touch it at once.
public final class Breadcrumb: @unchecked Sendable {
    public static let capacity = 1 << 16
    let base: UnsafeMutableRawPointer
    public init() {
        let p = mmap(nil, Breadcrumb.capacity + 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED && p != nil)
        base = p!
        base.storeBytes(of: 0, as: Int.self)
    }
    deinit { munmap(base, Breadcrumb.capacity + 8) }
    public func record(_ bytes: [UInt8]) {
        let n = min(bytes.count, Breadcrumb.capacity)
        bytes.withUnsafeBytes { src in
            if n > 0 { (base + 8).copyMemory(from: src.baseAddress!, byteCount: n) }
        }
        base.storeBytes(of: n, as: Int.self)
    }
    public var recorded: [UInt8] {
        let n = base.load(as: Int.self)
        return Array(UnsafeRawBufferPointer(start: base + 8, count: n))
    }
}

/// Runs `body` in a forked child. `body` returns nil on success or a failure message.
public func runIsolated(_ body: (Breadcrumb) -> String?) -> IsolatedOutcome {
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

public func assertIsolatedPasses(_ outcome: IsolatedOutcome, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    switch outcome {
    case .passed: break
    case .failed(let m): XCTFail("\(what): \(m)", file: file, line: line)
    case .crashed(let sig, let input):
        let on = input.isEmpty ? "" : " on input \(hex(input))"
        XCTFail("\(what): the process crashed with signal \(sig) (trap)\(on)", file: file, line: line)
    case .exited(let c): XCTFail("\(what): child exited with status \(c)", file: file, line: line)
    }
}
