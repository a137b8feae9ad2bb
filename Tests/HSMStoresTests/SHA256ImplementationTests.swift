import Foundation
import HSMKernel
import TestSupport
import XCTest

/// The SHA-256 compression functions against each other and against the NIST vectors: the
/// SHA-extensions one (what signs every uploaded byte on this machine) must give the portable
/// one's digest for every length and every way of feeding the bytes in.
final class SHA256ImplementationTests: XCTestCase {
    private func available() -> [SHA256.Implementation] {
        SHA256.Implementation.allCases.filter { SHA256(implementation: $0) != nil }
    }

    private func digest(_ impl: SHA256.Implementation, _ bytes: UnsafeRawBufferPointer) throws -> [UInt8] {
        var h = try XCTUnwrap(SHA256(implementation: impl))
        h.update(bytes)
        return h.finish()
    }

    /// The fast path only where it can be: skipped (and so reported) on a CPU without it.
    private func fastOrSkip() throws -> SHA256.Implementation {
        guard SHA256(implementation: .shaExtensions) != nil else { throw XCTSkip("this CPU has no SHA extensions") }
        return .shaExtensions
    }

    /// Seeded bytes, so a failure can be reproduced.
    private func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var g = SeededGenerator(seed: seed)
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { raw in
            var i = 0
            while i < raw.count {
                let v = g.next()
                for k in 0..<min(8, raw.count - i) { raw[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
                i += 8
            }
        }
        return out
    }

    func testFastestIsTheSHAExtensionsExactlyWhenTheCPUHasThem() throws {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let hasSHA = flags.split(separator: " ").contains("sha_ni")
        XCTAssertEqual(SHA256.fastest, hasSHA ? .shaExtensions : .portable)
        XCTAssertEqual(SHA256(implementation: .shaExtensions) != nil, hasSHA)
        XCTAssertNotNil(SHA256(implementation: .portable))
    }

    func testNISTVectorsOnEveryImplementation() throws {
        let vectors: [(String, String)] = [
            ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
             "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
            ("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
             "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
        ]
        let million = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        for impl in available() {
            for (message, expected) in vectors {
                let d = try Array(message.utf8).withUnsafeBytes { try digest(impl, $0) }
                XCTAssertEqual(TestSupport.hex(d), expected, "\(impl) on \"\(message)\"")
            }
            let whole = try million.withUnsafeBytes { try digest(impl, $0) }
            XCTAssertEqual(TestSupport.hex(whole), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", "\(impl), one update")
            // In uneven pieces: the partial-block buffer in front of whole blocks.
            var h = try XCTUnwrap(SHA256(implementation: impl))
            million.withUnsafeBytes { raw in
                var i = 0, step = 1
                while i < raw.count {
                    let n = min(step, raw.count - i)
                    h.update(UnsafeRawBufferPointer(rebasing: raw[i..<(i + n)]))
                    i += n
                    step = step % 4099 + 61
                }
            }
            XCTAssertEqual(TestSupport.hex(h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", "\(impl), in pieces")
        }
    }

    /// Every length around the padding boundaries (55, 56, 63, 64, 119, 120, ...), each at
    /// an odd offset so the loads are unaligned.
    func testFastMatchesPortableOnEveryLengthUpTo300() throws {
        let fast = try fastOrSkip()
        let data = randomBytes(301, seed: 0x5348_4131)
        try data.withUnsafeBytes { raw in
            for n in 0...300 {
                let bytes = UnsafeRawBufferPointer(rebasing: raw[1..<(1 + n)])
                XCTAssertEqual(try digest(fast, bytes), try digest(.portable, bytes), "length \(n)")
            }
        }
    }

    /// Random lengths up to 4 MiB from random offsets, the fast path fed in random chunk sizes
    /// (1 byte to 256 KiB) and the portable one in one update.
    func testFastMatchesPortableStreamedInRandomChunks() throws {
        let fast = try fastOrSkip()
        let pool = randomBytes(4 << 20, seed: 0x5348_4132)
        var g = SeededGenerator(seed: 0x5348_4133)
        try pool.withUnsafeBytes { raw in
            for round in 0..<24 {
                let length = round < 4 ? [0, 1, 64, 4 << 20][round] : Int.random(in: 0...(raw.count - 7), using: &g)
                let start = Int.random(in: 0...min(7, raw.count - length), using: &g)
                let whole = UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)])
                var h = try XCTUnwrap(SHA256(implementation: fast))
                var i = 0
                while i < length {
                    // Mostly small and odd, sometimes whole runs of blocks.
                    let limit = Bool.random(using: &g) ? 200 : 256 << 10
                    let n = min(Int.random(in: 1...limit, using: &g), length - i)
                    h.update(UnsafeRawBufferPointer(rebasing: whole[i..<(i + n)]))
                    i += n
                }
                XCTAssertEqual(h.finish(), try digest(.portable, whole), "round \(round): \(length) bytes from offset \(start)")
            }
        }
    }

    /// HMAC goes through the default (fastest) path: RFC 4231 case 1 against a portable
    /// HMAC built here from two portable hashes.
    func testHMACMatchesAPortableHMAC() throws {
        let key = [UInt8](repeating: 0x0b, count: 20)
        let message = Array("Hi There".utf8)
        XCTAssertEqual(TestSupport.hex(SHA256.hmac(key: key, message)), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        let padded = key + [UInt8](repeating: 0, count: 64 - key.count)
        let inner = try (padded.map { $0 ^ 0x36 } + message).withUnsafeBytes { try digest(.portable, $0) }
        let outer = try (padded.map { $0 ^ 0x5c } + inner).withUnsafeBytes { try digest(.portable, $0) }
        XCTAssertEqual(SHA256.hmac(key: key, message), outer)
    }
}
