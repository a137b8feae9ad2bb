/// A credential in the configuration: compared and handed on, never printed. Its
/// description and mirror are fixed text, so a config dumped to a log carries no secret.
public struct Secret: Equatable, Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let value: String
    public init(_ value: String) { self.value = value }
    public var description: String { "(secret)" }
    public var debugDescription: String { "(secret)" }
    public var customMirror: Mirror { Mirror(self, children: []) }
}

/// The keys of a `[[store]] type = "s3"` table, checked for range; credentials are
/// resolved (file, environment) when the store is built.
public struct S3Settings: Equatable, Sendable {
    /// "http://host:port" (path-style addressing: requests go to /bucket/key).
    public var endpoint: String
    public var bucket: String
    public var region: String = "us-east-1"
    /// Put before every object name ("" or ending in "/"), so several stores can share a bucket.
    public var prefix: String = ""
    public var accessKeyID: String?
    public var secretAccessKey: Secret?
    /// An AWS shared-credentials file (aws_access_key_id / aws_secret_access_key), mode 0600.
    public var credentialsFile: String?
    public var partSize: Int64 = 16 << 20
    /// Requests in flight at once (and the pool of kept-alive connections).
    public var connections: Int = 8
    public var timeoutSeconds: Int64 = 30
    public var tlsCAFile: String?

    public static let minPartSize: Int64 = 5 << 20
    public static let maxPartSize: Int64 = 5 << 30
    /// S3 numbers a multipart upload's parts 1 to 10,000 (Ceph RGW's
    /// rgw_multipart_part_upload_limit is 10000 too).
    public static let maxParts: Int64 = 10_000

    /// How one object of `objectSize` bytes goes up in parts: `configured` (part_size), or,
    /// for an object that would need more than 10,000 such parts, the smallest multiple of
    /// 1 MiB that fits in 10,000 parts; nil when even 5 GiB parts do not (an object over
    /// 5 GiB × 10,000 cannot be uploaded at all). `inFlight`: parts to keep in flight at
    /// once, so the buffers stay within `connections × configured` (at least one part).
    public static func partPlan(objectSize: Int64, configured: Int64, connections: Int) -> (partSize: Int64, inFlight: Int)? {
        let width = max(1, connections)
        guard objectSize > configured * maxParts else { return (configured, width) }
        let mib: Int64 = 1 << 20
        let needed = (objectSize + maxParts - 1) / maxParts
        let size = (needed + mib - 1) / mib * mib
        guard size <= maxPartSize else { return nil }
        let budget = configured * Int64(width)
        return (size, Int(max(1, min(Int64(width), budget / size))))
    }

    public init(endpoint: String, bucket: String) {
        self.endpoint = endpoint
        self.bucket = bucket
    }

    /// S3's bucket naming rules (3–63 of a-z 0-9 . -, starting and ending alphanumeric).
    public static func bucketProblem(_ b: String) -> String? {
        let ok = b.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2e || $0 == 0x2d }
        guard (3...63).contains(b.utf8.count), ok, let f = b.utf8.first, let l = b.utf8.last,
              f != 0x2e && f != 0x2d, l != 0x2e && l != 0x2d else {
            return "\"\(b)\" is not a bucket name (3 to 63 of a-z, 0-9, '.', '-', starting and ending with a letter or digit)"
        }
        return nil
    }
}
