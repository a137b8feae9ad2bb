import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// Objects in an S3 bucket (path-style), named so an administrator finds them by id:
///
///     <prefix>objects/<first two hex digits>/<object id>.data   the file's data blocks
///     <prefix>objects/<first two hex digits>/<object id>.json   ObjectRecord (as posix)
///
/// The data object holds only the blocks that have data, in block order (a sparse file
/// uploads only its data); block b starts at (data blocks before b) × block size. The
/// record goes up last: an object without one is incomplete. Every PUT and part carries
/// the SHA-256 of its payload in the signed x-amz-content-sha256, so the server refuses
/// bytes that arrive altered; every block read back is checked against its CRC32C.
/// An object is complete on the server when its PUT answers, so `makeDurable` has no work.
public final class S3Store: ObjectStore {
    public let name: String
    public let settings: S3Settings
    public let client: S3Client
    /// `<prefix>hsmd-store.json`, established at start (StoreIdentity).
    public let identity: StoreIdentity
    private let records = Mutex(RecordCache())

    /// `retryBudgetSeconds`: the recall's recall_timeout, which bounds the attempts of one
    /// request (`retryBudgetMillis`); the start check gives up sooner (`startBudgetMillis`).
    /// `stateDir`: where hsmd remembers the store's id (nil: nowhere).
    public init(name: String, settings: S3Settings, credentials: S3Credentials, retryBudgetSeconds: Int64 = 120,
                stateDir: String? = nil) throws(StoreError) {
        self.name = name
        self.settings = settings
        let endpoint: S3Endpoint
        switch S3Endpoint.parse(settings.endpoint) {
        case .success(let e): endpoint = e
        case .failure(let e): throw .unusable("store \(name): \(e)")
        }
        var tls: TLSContext?
        if endpoint.secure {
            do { tls = try TLSContext(caFile: settings.tlsCAFile) } catch {
                throw .unusable("store \(name): \(settings.endpoint): \(error)")
            }
        }
        client = S3Client(endpoint: endpoint, bucket: settings.bucket, region: settings.region, credentials: credentials,
                          connections: settings.connections, timeoutMillis: Int(settings.timeoutSeconds) * 1000,
                          retry: RetryPolicy(budgetMillis: Self.retryBudgetMillis(recallTimeoutSeconds: retryBudgetSeconds)), tls: tls)
        identity = StoreIdentity(storeName: name,
                                 location: S3Identity(client: client, settings: settings,
                                                      budgetMillis: min(client.retry.budgetMillis, Self.quickBudgetMillis)),
                                 stateDir: stateDir)
    }

    /// Nine tenths of recall_timeout: a request that keeps failing gives up a little before
    /// the recall engine's own timer, so the access fails with the store's error (which
    /// names the object key and the HTTP status or errno) rather than a bare timeout.
    static func retryBudgetMillis(recallTimeoutSeconds: Int64) -> Int {
        Int(max(1, recallTimeoutSeconds)) * 900
    }

    /// The start check, doctor and the check before archive and release try a service that
    /// does not answer for this long at most: seconds, not recall_timeout.
    var startBudgetMillis: Int { min(client.retry.budgetMillis, Self.quickBudgetMillis) }
    static let quickBudgetMillis = 5000

    /// The credentials of `settings`: its keys, else its credentials_file (which must be
    /// readable by its owner only), else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    public static func credentials(_ settings: S3Settings, store: String,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) -> S3Credentials {
        if let id = settings.accessKeyID, let secret = settings.secretAccessKey {
            return S3Credentials(accessKeyID: id, secretAccessKey: secret.value)
        }
        if let path = settings.credentialsFile {
            let st: FileStat
            do { st = try FileStat.of(path: path, followLinks: true) } catch { throw .unusable("store \(store): credentials_file \(error)") }
            guard st.fileType == .regular else { throw .unusable("store \(store): credentials_file \(path) is not a regular file") }
            guard st.mode & 0o077 == 0 else {
                throw .unusable("store \(store): credentials_file \(path) has mode 0\(String(st.mode & 0o777, radix: 8)); it must be readable by its owner only (chmod 600)")
            }
            let bytes: [UInt8]
            do {
                let fd = try FileDescriptor.open(path, [.readOnly])
                defer { fd.close() }
                bytes = try fd.readAll(limit: 64 << 10)
            } catch { throw .unusable("store \(store): credentials_file \(error)") }
            guard let c = parseCredentialsFile(String(decoding: bytes, as: UTF8.self)) else {
                throw .unusable("store \(store): credentials_file \(path) has no aws_access_key_id and aws_secret_access_key (in [default] or its only section)")
            }
            return c
        }
        if let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty, let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty {
            return S3Credentials(accessKeyID: id, secretAccessKey: secret)
        }
        throw .unusable("store \(store): no credentials: give access_key_id and secret_access_key, or credentials_file, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    }

    /// The AWS shared-credentials format: `[section]` lines and `key = value` lines; the
    /// [default] section, or the keys outside any section, or the only section.
    static func parseCredentialsFile(_ text: String) -> S3Credentials? {
        var sections: [String: [String: String]] = [:]
        var current = ""
        for raw in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = raw.trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = String(line.dropFirst().dropLast()).trimmingSpaces().description
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingSpaces().lowercased()
            sections[current, default: [:]][key] = String(line[line.index(after: eq)...].trimmingSpaces())
        }
        let chosen = sections["default"] ?? sections[""] ?? (sections.count == 1 ? sections.first?.value : nil)
        guard let id = chosen?["aws_access_key_id"], !id.isEmpty, let secret = chosen?["aws_secret_access_key"], !secret.isEmpty else { return nil }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret)
    }

    func dataKey(_ id: ObjectID) -> String { "\(settings.prefix)objects/\(id.hex.prefix(2))/\(id.hex).data" }
    func recordKey(_ id: ObjectID) -> String { "\(settings.prefix)objects/\(id.hex.prefix(2))/\(id.hex).json" }

    /// What hsmd checks before it starts: the bucket answers these credentials and takes a
    /// write (a probe object put and deleted). nil when fine. `fatal`: the configuration
    /// is wrong (credentials refused, no such bucket), which only the operator can fix;
    /// otherwise the service is not answering now (down, unreachable, failing).
    public func startProblem() -> (message: String, fatal: Bool)? {
        do throws(S3Error) {
            let quick = RetryPolicy(budgetMillis: startBudgetMillis)
            try client.headBucket(retry: quick)
            let probe = "\(settings.prefix)hsmd-probe-\(ObjectID.random().hex)"
            try client.putObject(probe, bytes: Array("hsmd start check\n".utf8), retry: quick)
            try client.deleteObject(probe, retry: quick)
            return nil
        } catch {
            let fatal: Bool
            switch error {
            case .status(let s, _, _, _, _): fatal = (400..<500).contains(s) && s != 408 && s != 429
            case .config, .protocolError, .tls: fatal = true
            case .transport: fatal = false
            }
            return ("store \(name): \(explain(error))", fatal)
        }
    }

    /// An S3 failure as an operator reads it: what to fix, not only the status.
    func explain(_ e: S3Error) -> String { Self.explain(e, settings: settings, credentials: client.signer.credentials) }

    static func explain(_ e: S3Error, settings: S3Settings, credentials: S3Credentials) -> String {
        let at = "\(settings.endpoint) bucket \(settings.bucket)"
        switch e {
        case .status(let s, let code, _, _, _) where s == 403 || ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"].contains(code):
            return "\(at) refuses \(credentials) (\(e)); check the access key and secret"
        case .status(404, _, _, let op, _) where op == "HEAD bucket":
            return "\(at): the bucket does not exist or is not visible to \(credentials) (\(e)); create it first"
        case .status(let s, let code, _, _, _) where s == 404 && code == "NoSuchBucket":
            return "\(at): the bucket does not exist (\(e)); create it first"
        case .transport:
            return "\(at) cannot be reached (\(e))"
        case .tls:
            let ca = settings.tlsCAFile.map { "tls_ca_file \($0)" } ?? "the system's CA certificates (or set tls_ca_file)"
            return "\(at): TLS refused (\(e)); check the server's certificate, its host name, and \(ca)"
        default:
            return "\(at): \(e)"
        }
    }

    /// Whether `key` is the data key of an object id in this store (`<prefix>objects/xx/<id>.data`).
    func isDataKey(_ key: String) -> Bool {
        let head = "\(settings.prefix)objects/"
        guard key.hasPrefix(head), key.hasSuffix(".data") else { return false }
        let rest = key.dropFirst(head.count).dropLast(5)
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = ObjectID(hex: String(parts[1])) else { return false }
        return dataKey(id) == key
    }

    /// Aborts every multipart upload in progress under this store's objects: at start no
    /// archive of this hsmd is under way, so each is one a killed hsmd left (its parts take
    /// room and cost money until aborted). Uploads to keys that are not this store's data
    /// keys are not touched. The count aborted, or the failure.
    public func abortUnfinishedUploads() -> Result<Int, StoreError> {
        do throws(S3Error) {
            // Before the control socket serves anyone: a service that does not answer
            // delays the start by seconds only.
            let quick = RetryPolicy(budgetMillis: startBudgetMillis)
            var aborted = 0
            for (key, upload) in try client.listMultipartUploads(prefix: "\(settings.prefix)objects/", retry: quick) where isDataKey(key) {
                try client.abortMultipartUpload(key, uploadID: upload, retry: quick)
                aborted += 1
            }
            return .success(aborted)
        } catch {
            return .failure(.unusable("store \(name): \(explain(error))"))
        }
    }

    /// Asked by doctor and before each archive and release: the identity object read and
    /// compared with the one verified (a service that does not answer is reported within
    /// seconds, not after recall_timeout). `readingIdentity` false: no request (the pin only).
    public func healthProblem(readingIdentity: Bool) -> String? {
        identity.problem(readingFile: readingIdentity)
    }

    // MARK: put

    public func put(_ source: FileDescriptor, as id: ObjectID, stat: FileStat, blockShift: UInt8, originalPath: String,
                    xattrs: [String: [UInt8]]) throws(StoreError) -> ObjectRecord {
        // Archive checks the identity object for each chunk; here the pin (no request) suffices.
        if let problem = healthProblem(readingIdentity: false) { throw .unusable(problem) }
        let layout = BlockLayout(shift: blockShift, fileSize: stat.size)
        let extents: [Range<Int64>]
        do { extents = try source.dataExtents(in: 0..<stat.size) } catch { throw .io(error) }
        var checksums: [UInt32?] = []
        checksums.reserveCapacity(layout.blockCount)
        // Format 2 as in the posix store: a CRC32C per chunk (4–64 KiB) too, so a random
        // read fetches and verifies only its chunks (one ranged GET of them).
        var chunks = FileChunkChecksums(fileSize: stat.size, blockShift: blockShift)
        var dataBlocks = 0
        for b in 0..<layout.blockCount {
            let hasData = !intersect(layout.range(ofBlock: b), extents).isEmpty
            checksums.append(hasData ? 0 : nil)
            if hasData { dataBlocks += 1 }
        }
        // Bytes of the data object: every data block whole, the last one possibly short.
        var objectSize: Int64 = 0
        for b in 0..<layout.blockCount where checksums[b] != nil {
            let r = layout.range(ofBlock: b)
            objectSize += r.upperBound - r.lowerBound
        }
        let key = dataKey(id)
        var uploadID: String?
        var dataPut = false
        var finished = false
        var uploader: PartUploader?
        defer {
            if !finished {
                // No orphaned parts and no data object without its record. Parts still in
                // flight finish (or fail) first, so none lands after the abort.
                uploader?.drain()
                if let uploadID { try? client.abortMultipartUpload(key, uploadID: uploadID) }
                if dataPut { try? client.deleteObject(key) }
            }
        }
        do {
            let blockSize = Int(layout.blockSize)
            let block = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
            defer { block.deallocate() }
            let multipart = objectSize > settings.partSize
            // A small object: one buffer of its size and one PUT. A large one: parts of
            // part_size, up to `connections` of them in flight; one of more than 10,000
            // parts: larger parts, fewer in flight (memory stays connections × part_size).
            guard let plan = S3Settings.partPlan(objectSize: objectSize, configured: settings.partSize, connections: settings.connections) else {
                throw StoreError.io(SystemError(errno: EFBIG, operation: "archive to store \(name): \(objectSize) bytes of data need more than \(S3Settings.maxParts) parts of 5 GiB, S3's limits; nothing uploaded", path: originalPath))
            }
            let partSize = Int(multipart ? plan.partSize : max(objectSize, 1))
            var single: PartBuffer?
            if multipart {
                let id = try client.createMultipartUpload(key)
                uploadID = id
                uploader = PartUploader(client: client, key: key, uploadID: id, partSize: partSize, width: plan.inFlight)
            } else {
                single = PartBuffer(bytes: .allocate(byteCount: partSize, alignment: 4096))
            }
            defer { single?.bytes.deallocate() }
            var current = single
            var filled = 0
            for b in 0..<layout.blockCount {
                let range = layout.range(ofBlock: b)
                let len = Int(range.upperBound - range.lowerBound)
                guard checksums[b] != nil else {
                    chunks.addBlockWithNoData(length: Int64(len))
                    continue
                }
                let view = UnsafeMutableRawBufferPointer(rebasing: block[0..<len])
                guard try source.read(into: view, at: range.lowerBound) == len else { throw StoreError.changedDuringArchive(path: originalPath) }
                checksums[b] = CRC32C.checksum(UnsafeRawBufferPointer(view))
                chunks.add(block: UnsafeRawBufferPointer(view))
                var done = 0
                while done < len {
                    if current == nil {
                        guard let next = uploader?.nextBuffer() else {
                            throw uploader?.failed ?? S3Error.protocolError("no part buffer", operation: "UploadPart", key: key)
                        }
                        current = next
                    }
                    guard let part = current else { break }
                    let n = min(len - done, partSize - filled)
                    UnsafeMutableRawBufferPointer(rebasing: part.bytes[filled..<(filled + n)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: view[done..<(done + n)]))
                    filled += n
                    done += n
                    if let uploader, filled == partSize {
                        uploader.submit(part, count: filled)
                        current = nil
                        filled = 0
                    }
                }
            }
            if let uploader, let upload = uploadID {
                if let part = current, filled > 0 { uploader.submit(part, count: filled) }
                let etags = try uploader.finish()
                dataPut = true  // a completion whose answer was lost may still have landed
                try client.completeMultipartUpload(key, uploadID: upload, etags: etags)
                uploadID = nil
                // RGW 16.2 answers CompleteMultipartUpload with an empty ETag: check the size.
                guard let size = try client.headObject(key), size == objectSize else {
                    throw S3Error.protocolError("the data object is not \(objectSize) bytes after its upload", operation: "HEAD", key: key)
                }
            } else if let part = single {
                dataPut = true  // a failed PUT may still have landed: delete on failure
                // A 200 to a PUT whose signed SHA-256 covers every byte is the whole
                // object stored: no HEAD after it (one request less per small file).
                try client.putObject(key, body: UnsafeRawBufferPointer(rebasing: part.bytes[0..<filled]))
            }
        } catch let e as StoreError {
            throw e
        } catch let e as SystemError {
            throw .io(e)
        } catch let e as S3Error {
            throw .unusable("store \(name): archive of \(originalPath) failed: \(explain(e))")
        } catch {
            throw .io(SystemError(errno: EIO, operation: "archive", path: originalPath))
        }
        let record = try ObjectRecord.made(object: id, path: originalPath, stat: stat, blockShift: blockShift,
                                           checksums: checksums, extents: extents, xattrs: xattrs,
                                           // As posix: the file's data bytes (the object holds them in whole blocks).
                                           storedBytes: extents.reduce(0) { $0 + ($1.upperBound - $1.lowerBound) },
                                           chunks: chunks, storedAt: recordKey(id))
        let bytes = try record.encoded(storedAt: recordKey(id))
        do { try client.putObject(recordKey(id), bytes: bytes) } catch {
            try? client.deleteObject(recordKey(id))
            throw .unusable("store \(name): archive of \(originalPath) failed: \(explain(error))")
        }
        finished = true
        records.withLock { $0.insert(record) }
        return record
    }

    public func makeDurable() throws(StoreError) {}

    // MARK: read, delete, list

    public func record(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        if let r = records.withLock({ $0.lookup(id) }) { return r }
        return try storedRecord(id)
    }

    public func storedRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        let key = recordKey(id)
        let bytes: [UInt8]
        do { bytes = try client.getObject(key, limit: ObjectRecord.maxEncodedBytes) } catch {
            records.withLock { $0.remove(id) }
            throw storeError(error, id, key)
        }
        do {
            let record = try ObjectRecord.decode(json: bytes, id: id, path: "s3://\(settings.bucket)/\(key)")
            records.withLock { $0.insert(record) }
            return record
        } catch {
            records.withLock { $0.remove(id) }
            throw error
        }
    }

    /// 404 is a missing object only when the store proves its identity (the identity
    /// object read and compared); anything else is the store being unusable now (EIO, and
    /// the file is not flagged damaged): a bucket emptied or replaced lost no object of
    /// its own, it is not the store.
    func storeError(_ e: S3Error, _ id: ObjectID, _ key: String) -> StoreError {
        if e.httpStatus == 404 {
            guard let problem = healthProblem(readingIdentity: true) else { return .objectMissing(id, path: "s3://\(settings.bucket)/\(key)") }
            return .unusable("\(problem); \(key) not found")
        }
        return .unusable("store \(name): \(explain(e))")
    }

    public func reader(for record: ObjectRecord) throws(StoreError) -> ObjectReader {
        S3ObjectReader(store: self, record: record, key: dataKey(record.object))
    }

    /// Removes the record first (the object is then incomplete), the data, and the parts
    /// of an upload a killed hsmd left unfinished.
    public func delete(_ id: ObjectID) throws(StoreError) {
        records.withLock { $0.remove(id) }
        do throws(S3Error) {
            for key in [recordKey(id), dataKey(id)] { try client.deleteObject(key) }
            for (key, upload) in try client.listMultipartUploads(prefix: dataKey(id)) where key == dataKey(id) {
                try client.abortMultipartUpload(key, uploadID: upload)
            }
        } catch { throw .unusable("store \(name): \(explain(error))") }
    }

    public func contains(_ id: ObjectID) -> Bool {
        ((try? client.headObject(recordKey(id))) ?? nil) != nil && ((try? client.headObject(dataKey(id))) ?? nil) != nil
    }

    public func list() throws(StoreError) -> [ObjectID] {
        let keys: [String]
        do { keys = try client.listKeys(prefix: "\(settings.prefix)objects/") } catch { throw .unusable("store \(name): \(explain(error))") }
        return keys.compactMap { k in
            guard k.hasSuffix(".json"), let file = k.split(separator: "/").last else { return nil }
            return ObjectID(hex: String(file.dropLast(5)))
        }
    }
}

/// Reads an S3 object's blocks with one ranged GET each, verified before they are given.
struct S3ObjectReader: ObjectReader {
    let store: S3Store
    let record: ObjectRecord
    let key: String
    /// Offset of each block in the data object (holes take no room there).
    let offsets: [Int64]

    init(store: S3Store, record: ObjectRecord, key: String) {
        self.store = store
        self.record = record
        self.key = key
        var offsets: [Int64] = []
        offsets.reserveCapacity(record.checksums.count)
        var at: Int64 = 0
        for (b, c) in record.checksums.enumerated() {
            offsets.append(at)
            if c != nil {
                let r = record.layout.range(ofBlock: b)
                at += r.upperBound - r.lowerBound
            }
        }
        self.offsets = offsets
    }

    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try read(blocks: index..<(index + 1), into: buffer)[0]
    }

    /// One ranged GET for each run of consecutive blocks that have data (they lie side by
    /// side in the data object), then each block checked against its own checksum.
    func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        let where_ = "s3://\(store.settings.bucket)/\(key)"
        let size = Int(record.layout.blockSize)
        guard buffer.count == size * blocks.count else {
            throw .badRecord(record.object, path: where_, reason: "its blocks are \(record.layout.blockSize) bytes, the file's marker says \(buffer.count / max(1, blocks.count))")
        }
        var views: [(index: Int, view: UnsafeMutableRawBufferPointer, expected: UInt32?)] = []
        for (i, b) in blocks.enumerated() {
            let (view, expected) = try record.blockToRead(b, into: UnsafeMutableRawBufferPointer(rebasing: buffer[(i * size)..<((i + 1) * size)]),
                                                          storedAt: where_)
            // One offset per block: the record's checksums and the offsets were made together.
            guard offsets.indices.contains(b) else {
                throw .badRecord(record.object, path: where_, reason: "block \(b) asked for, the record has \(record.checksums.count): it does not match the file's marker")
            }
            views.append((b, view, expected))
        }
        // Runs of data blocks: only the last block of a file is short, so a run's bytes
        // are contiguous in the buffer as in the object.
        var i = 0
        while i < views.count {
            guard views[i].expected != nil else { i += 1; continue }
            var j = i + 1
            while j < views.count && views[j].expected != nil { j += 1 }
            let first = views[i], last = views[j - 1]
            let start = offsets[first.index]
            let end = offsets[last.index] + Int64(last.view.count)
            let span = UnsafeMutableRawBufferPointer(rebasing: buffer[((i) * size)..<((i) * size + Int(end - start))])
            try get(start..<end, into: span, block: first.index)
            for v in views[i..<j] {
                guard let expected = v.expected, CRC32C.checksum(UnsafeRawBufferPointer(v.view)) == expected else {
                    throw .corrupt(record.object, block: v.index, path: where_)
                }
            }
            i = j
        }
        return views.map { $0.view.count }
    }

    /// One ranged GET of the data object. A short or out-of-range answer is the object
    /// not holding what its record says (corrupt at `block`); anything else is the store's.
    private func get(_ range: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer, block: Int) throws(StoreError) {
        do {
            _ = try store.client.getObject(key, range: range, into: buffer)
        } catch {
            if case .status(416, _, _, _, _) = error { throw .corrupt(record.object, block: block, path: "s3://\(store.settings.bucket)/\(key)") }
            if case .protocolError = error { throw .corrupt(record.object, block: block, path: "s3://\(store.settings.bucket)/\(key)") }
            throw store.storeError(error, record.object, key)
        }
    }

    /// A format 2 record: one ranged GET of the chunks `bytes` touches, each verified. A
    /// format 1 record (archived before, or a file too large for chunk checksums): the
    /// whole block.
    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        guard let shift = record.chunkShift, record.chunkChecksums != nil else {
            return try readWholeBlock(index, layout: record.layout, into: buffer)
        }
        let where_ = "s3://\(store.settings.bucket)/\(key)"
        let (view, expected) = try record.blockToRead(index, into: buffer, storedAt: where_)
        let span = record.chunkSpan(ofBlock: index, covering: bytes, shift: shift)
        guard expected != nil, !span.isEmpty else { return span }
        guard offsets.indices.contains(index) else {
            throw .badRecord(record.object, path: where_, reason: "block \(index) asked for, the record has \(record.checksums.count): it does not match the file's marker")
        }
        let blockStart = record.layout.range(ofBlock: index).lowerBound
        let inBlock = (span.lowerBound - blockStart)..<(span.upperBound - blockStart)
        let part = UnsafeMutableRawBufferPointer(rebasing: view[Int(inBlock.lowerBound)..<Int(inBlock.upperBound)])
        let at = offsets[index] + inBlock.lowerBound
        try get(at..<(at + Int64(part.count)), into: part, block: index)
        try record.verifyChunks(span, ofBlock: index, in: UnsafeRawBufferPointer(view), storedAt: where_)
        return span
    }

    /// Blocks are fetched when asked for; the recall engine's pipeline keeps
    /// `parallelReads` of them in flight.
    func prefetch(blocks: Range<Int>) {}

    /// One ranged GET per connection, at most `maxParallelReads` (each holds a block
    /// buffer in the recall). `read` shares nothing mutable between calls: the client
    /// and its connection pool are thread-safe.
    var parallelReads: Int { max(1, min(store.settings.connections, Self.maxParallelReads)) }
    static let maxParallelReads = 4

    /// Blocks per ranged GET: on Ceph RGW here a 1 MiB GET costs nearly what a 4 MiB one
    /// does (8 boto3 threads: 145 MB/s with 1 MiB ranges, 270 MB/s with 4 MiB ones).
    var blocksPerRead: Int { max(1, Self.bytesPerGet / Int(record.layout.blockSize)) }
    static let bytesPerGet = 4 << 20

    func close() {}
}
