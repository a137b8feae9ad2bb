import CHSMKernel

/// SHA-256 and HMAC-SHA256, for AWS Signature V4 and the payload hashes S3 checks.
public struct SHA256: Sendable {
    private var ctx = chsm_sha256_ctx()

    public init() { chsm_sha256_init(&ctx) }

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
