import Dispatch
import Foundation
import Glibc
import HSMKernel

/// One part's bytes, handed from the thread that fills it to the thread that uploads it.
struct PartBuffer: @unchecked Sendable {
    // @unchecked: a buffer belongs to one thread at a time: the filler until `submit`,
    // then the uploading thread until it gives the buffer back under the uploader's lock.
    let bytes: UnsafeMutableRawBufferPointer
}

/// Uploads the parts of one multipart upload on up to `width` threads of their own (never
/// Swift's cooperative pool), each part from a buffer of its own: memory is at most
/// width × part size, never the file's size.
final class PartUploader: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`; the buffers are owned as
    // PartBuffer says.
    let client: S3Client
    let key: String
    let uploadID: String
    let partSize: Int
    private let free: DispatchSemaphore
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var spare: [PartBuffer] = []
    private var allocated: [PartBuffer] = []
    private var etags: [Int: String] = [:]
    private var failure: S3Error?
    private var submitted = 0

    init(client: S3Client, key: String, uploadID: String, partSize: Int, width: Int) {
        self.client = client
        self.key = key
        self.uploadID = uploadID
        self.partSize = partSize
        free = DispatchSemaphore(value: max(1, width))
    }

    deinit {
        group.wait()
        for b in allocated { b.bytes.deallocate() }
    }

    /// A buffer to fill, once one is free; nil when a part has failed (stop reading).
    func nextBuffer() -> PartBuffer? {
        free.wait()
        lock.lock()
        defer { lock.unlock() }
        if failure != nil {
            free.signal()
            return nil
        }
        if let b = spare.popLast() { return b }
        let b = PartBuffer(bytes: .allocate(byteCount: partSize, alignment: 4096))
        allocated.append(b)
        return b
    }

    /// Uploads the first `count` bytes of `buffer` as the next part, on a thread of its own.
    func submit(_ buffer: PartBuffer, count: Int) {
        lock.lock()
        submitted += 1
        let number = submitted
        lock.unlock()
        group.enter()
        let t = Thread { [self] in
            defer { group.leave() }
            var etag: String?
            var error: S3Error?
            do throws(S3Error) {
                etag = try client.uploadPart(key, uploadID: uploadID, number: number,
                                             body: UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<count]))
            } catch let e { error = e }
            // Test-only (HSMD_TEST_ARCHIVE_PAUSE_MS): a pause after each part, so a test
            // can kill hsmd in the middle of a multipart upload.
            if PosixStore.testPauseMicros > 0 { usleep(PosixStore.testPauseMicros) }
            lock.lock()
            if let etag { etags[number] = etag }
            if let error, failure == nil { failure = error }
            spare.append(buffer)
            lock.unlock()
            free.signal()
        }
        t.name = "hsmd-s3-part"
        t.stackSize = 1 << 20
        t.start()
    }

    /// Waits for every part submitted; their ETags in part order, or the first failure.
    func finish() throws(S3Error) -> [String] {
        group.wait()
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw failure }
        let ordered = (1...max(1, submitted)).compactMap { etags[$0] }
        guard ordered.count == submitted else {
            throw .protocolError("\(submitted - ordered.count) parts have no ETag", operation: "UploadPart", key: key)
        }
        return ordered
    }

    /// Waits for the parts in flight (before the upload is aborted).
    func drain() { group.wait() }

    var failed: S3Error? {
        lock.lock()
        defer { lock.unlock() }
        return failure
    }
}
