import CHSMKernel

/// SHA-256 and HMAC-SHA256, for AWS Signature V4 and the payload hashes S3 checks.
public struct SHA256: Sendable {
    /// The compression function underneath. Both give the same digests; `.portable` is there
    /// for CPUs without the SHA extensions and for tests that compare the two.
    public enum Implementation: Sendable, CaseIterable {
        case portable
        /// x86-64 SHA extensions (SHA-NI).
        case shaExtensions

        fileprivate var raw: UInt32 {
            switch self {
            case .portable: UInt32(CHSM_SHA256_PORTABLE)
            case .shaExtensions: UInt32(CHSM_SHA256_SHANI)
            }
        }
    }

    /// What `init()` uses on this CPU.
    public static var fastest: Implementation {
        chsm_sha256_best_impl() == UInt32(CHSM_SHA256_SHANI) ? .shaExtensions : .portable
    }

    private var ctx = chsm_sha256_ctx()

    public init() { chsm_sha256_init(&ctx) }

    /// A hash on the given implementation, or nil when this CPU lacks it.
    public init?(implementation: Implementation) {
        guard chsm_sha256_init_impl(&ctx, implementation.raw) == 0 else { return nil }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        chsm_sha256_update(&ctx, bytes.baseAddress, bytes.count)
    }

    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    public mutating func finish() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBufferPointer { chsm_sha256_final(&ctx, $0.baseAddress) }
        return out
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var h = SHA256()
        h.update(bytes)
        return h.finish()
    }

    public static func hash(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { hash($0) } }

    public static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                out.withUnsafeMutableBufferPointer { chsm_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, $0.baseAddress) }
            }
        }
        return out
    }
}
