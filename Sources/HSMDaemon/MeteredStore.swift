import HSMCore
import HSMKernel
import HSMStores

/// A store that times each request and counts its failures (hsmd_store_request_duration_seconds,
/// hsmd_store_errors_total); otherwise it is the store it wraps.
final class MeteredStore: ObjectStore {
    let inner: any ObjectStore
    var name: String { inner.name }
    private let timers: [String: MetricHistogram]
    private let errors: [String: MetricCounter]
    static let operations = ["put", "flush", "record", "stored_record", "open", "read", "delete", "contains", "list", "health"]

    init(_ inner: any ObjectStore) {
        self.inner = inner
        let m = DaemonMetrics.shared
        var t: [String: MetricHistogram] = [:], e: [String: MetricCounter] = [:]
        for op in Self.operations {
            t[op] = m.storeSeconds.child([inner.name, op])
            e[op] = m.storeErrors.child([inner.name, op])
        }
        timers = t
        errors = e
    }

    /// Times `body` as operation `op`; a thrown error counts as a failure.
    func timed<T>(_ op: String, _ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        let t0 = monotonicNanos()
        defer { timers[op]?.observe(monotonicNanos() - t0) }
        do { return try body() } catch {
            errors[op]?.add(1)
            throw error
        }
    }

    func put(_ source: FileDescriptor, as id: ObjectID, stat: FileStat, blockShift: UInt8, originalPath: String,
             xattrs: [String: [UInt8]]) throws(StoreError) -> ObjectRecord {
        try timed("put") { () throws(StoreError) in
            try inner.put(source, as: id, stat: stat, blockShift: blockShift, originalPath: originalPath, xattrs: xattrs)
        }
    }

    func makeDurable() throws(StoreError) { try timed("flush") { () throws(StoreError) in try inner.makeDurable() } }
    func record(_ id: ObjectID) throws(StoreError) -> ObjectRecord { try timed("record") { () throws(StoreError) in try inner.record(id) } }
    func storedRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        try timed("stored_record") { () throws(StoreError) in try inner.storedRecord(id) }
    }

    func reader(for record: ObjectRecord) throws(StoreError) -> ObjectReader {
        let r = try timed("open") { () throws(StoreError) in try inner.reader(for: record) }
        return MeteredReader(inner: r, timer: timers["read"], errors: errors["read"])
    }

    func delete(_ id: ObjectID) throws(StoreError) { try timed("delete") { () throws(StoreError) in try inner.delete(id) } }

    func contains(_ id: ObjectID) -> Bool {
        let t0 = monotonicNanos()
        defer { timers["contains"]?.observe(monotonicNanos() - t0) }
        return inner.contains(id)
    }

    func list() throws(StoreError) -> [ObjectID] { try timed("list") { () throws(StoreError) in try inner.list() } }

    func healthProblem(readingIdentity: Bool) -> String? {
        let t0 = monotonicNanos()
        defer { timers["health"]?.observe(monotonicNanos() - t0) }
        let p = inner.healthProblem(readingIdentity: readingIdentity)
        if p != nil { errors["health"]?.add(1) }
        return p
    }
}

/// Times each block read of an object (one store request per block).
final class MeteredReader: ObjectReader {
    let inner: ObjectReader
    let timer: MetricHistogram?
    let errors: MetricCounter?

    init(inner: ObjectReader, timer: MetricHistogram?, errors: MetricCounter?) {
        self.inner = inner; self.timer = timer; self.errors = errors
    }

    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try timed { () throws(StoreError) in try inner.read(block: index, into: buffer) }
    }

    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        try timed { () throws(StoreError) in try inner.read(block: index, bytes: bytes, into: buffer) }
    }

    // Everything the reader says about how it likes to be read passes through: a wrapper
    // that fell back to the protocol's defaults would read an s3 object one GET at a time.
    var parallelReads: Int { inner.parallelReads }
    var blocksPerRead: Int { inner.blocksPerRead }

    func read(blocks: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> [Int] {
        try timed { () throws(StoreError) in try inner.read(blocks: blocks, into: buffer) }
    }

    func prefetch(blocks: Range<Int>) { inner.prefetch(blocks: blocks) }
    func close() { inner.close() }

    private func timed<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        let t0 = monotonicNanos()
        defer { timer?.observe(monotonicNanos() - t0) }
        do { return try body() } catch {
            errors?.add(1)
            throw error
        }
    }
}
