import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// Objects as files in a directory on another filesystem:
///
///     <root>/objects/<first two hex digits>/<object id>.data   sparse image of the file
///     <root>/objects/<first two hex digits>/<object id>.json   ObjectRecord
///
/// The data file has the original file's offsets, so holes stay holes and a block is read
/// with one pread. The .json appears last: an object without one is incomplete. Both are
/// written under a `.partial` name first and renamed into place when complete.
/// `<root>/hsmd-store.json` is the store's identity (StoreIdentity).
public final class PosixStore: ObjectStore {
    public let name: String
    public let root: String
    public let identity: StoreIdentity
    static let writeBackWindow: Int64 = 32 << 20
    /// Test-only: pause after each write-back window of a put, and once the object is
    /// complete, so a test can kill hsmd in the middle of an archive.
    public static let testPauseMicros: UInt32 = ProcessInfo.processInfo.environment["HSMD_TEST_ARCHIVE_PAUSE_MS"]
        .flatMap { UInt32($0) }.map { $0 * 1000 } ?? 0
    private let records = Mutex(RecordCache())
    /// Source devices copy_file_range cannot copy from into this store (EXDEV): asking
    /// again for every file would cost a syscall each.
    private let noKernelCopy = Mutex<Set<UInt64>>([])
    private let madeDirectories = Mutex<Set<String>>([])
    /// Length and CRC32C of the record files this process wrote lately: a record read back
    /// from the store with exactly those bytes is the cached one, and need not be decoded
    /// again (release re-reads every record right after migrate wrote it).
    private let writtenRecords = Mutex<[ObjectID: (length: Int, crc: UInt32)]>([:])

    /// `stateDir`: where hsmd remembers the store's id (nil: nowhere).
    public init(name: String, root: String, stateDir: String? = nil) {
        self.name = name
        self.root = root
        identity = StoreIdentity(storeName: name, root: root, stateDir: stateDir)
    }

    public func dataPath(_ id: ObjectID) -> String { "\(root)/objects/\(id.hex.prefix(2))/\(id.hex).data" }
    public func recordPath(_ id: ObjectID) -> String { "\(root)/objects/\(id.hex.prefix(2))/\(id.hex).json" }

    /// The directory exists (what hsmd needs to start at all).
    public func directoryProblem() -> String? {
        do {
            let st = try FileStat.of(path: root, followLinks: true)
            return st.fileType == .directory ? nil : "store \(name): \(root) is not a directory"
        } catch {
            return "store \(name): \(error)"
        }
    }

    public func healthProblem(readingIdentity: Bool) -> String? {
        directoryProblem() ?? identity.problem(readingFile: readingIdentity)
    }

    // MARK: put

    public func put(_ source: FileDescriptor, as id: ObjectID, stat: FileStat, blockShift: UInt8, originalPath: String,
                    xattrs: [String: [UInt8]]) throws(StoreError) -> ObjectRecord {
        // archiveMany reads the identity for each chunk; here the pin (a stat) suffices.
        if let problem = healthProblem(readingIdentity: false) { throw .unusable(problem) }
        let dir = "\(root)/objects/\(id.hex.prefix(2))"
        try makeDirectory(dir)
        let partial = dataPath(id) + ".partial"
        let dest: FileDescriptor
        do { dest = try FileDescriptor.open(partial, [.readWrite, .create, .exclusive], mode: 0o600) } catch {
            // The directory was removed behind hsmd's back: make it again, once.
            guard error.errno == ENOENT else { throw .io(error) }
            madeDirectories.withLock { $0.removeAll() }
            try makeDirectory(dir)
            do { dest = try FileDescriptor.open(partial, [.readWrite, .create, .exclusive], mode: 0o600) } catch { throw .io(error) }
        }
        var finished = false
        defer {
            dest.close()
            if !finished { unlink(partial); unlink(dataPath(id)); unlink(recordPath(id) + ".partial") }
        }
        let layout = BlockLayout(shift: blockShift, fileSize: stat.size)
        var checksums: [UInt32?] = []
        var chunks = FileChunkChecksums(fileSize: stat.size, blockShift: blockShift)
        var stored: Int64 = 0
        let extents: [Range<Int64>]
        do {
            try dest.truncate(to: stat.size)
            extents = try source.dataExtents(in: 0..<stat.size)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(layout.blockSize), alignment: 4096)
            defer { buffer.deallocate() }
            var kernelCopy = !noKernelCopy.withLock { $0.contains(stat.device) }
            var windowStart: Int64 = 0
            var previousWindow: Range<Int64>?
            for b in 0..<layout.blockCount {
                let range = layout.range(ofBlock: b)
                let data = intersect(range, extents)
                if data.isEmpty {
                    checksums.append(nil)
                    chunks.addBlockWithNoData(length: range.upperBound - range.lowerBound)
                    continue
                }
                let len = Int(range.upperBound - range.lowerBound)
                let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<len])
                if kernelCopy {
                    kernelCopy = try copyInKernel(data, from: source, to: dest)
                    if !kernelCopy { noKernelCopy.withLock { _ = $0.insert(stat.device) } }
                }
                if kernelCopy {
                    // Checksum what the store now holds.
                    guard try dest.read(into: view, at: range.lowerBound) == len else { throw StoreError.changedDuringArchive(path: originalPath) }
                } else {
                    guard try source.read(into: view, at: range.lowerBound) == len else { throw StoreError.changedDuringArchive(path: originalPath) }
                    for d in data {
                        let slice = UnsafeRawBufferPointer(rebasing: view[Int(d.lowerBound - range.lowerBound)..<Int(d.upperBound - range.lowerBound)])
                        try dest.write(slice, at: d.lowerBound)
                    }
                }
                checksums.append(CRC32C.checksum(UnsafeRawBufferPointer(view)))
                chunks.add(block: UnsafeRawBufferPointer(view))
                stored += data.reduce(0) { $0 + $1.upperBound - $1.lowerBound }
                // Every 32 MiB: start writing this window back and wait for the one before,
                // so a big object never ends in a flush that stalls every other reader.
                if range.upperBound - windowStart >= Self.writeBackWindow {
                    try dest.writeBack(windowStart..<range.upperBound, wait: false)
                    if let previous = previousWindow { try dest.writeBack(previous, wait: true) }
                    previousWindow = windowStart..<range.upperBound
                    windowStart = range.upperBound
                    if Self.testPauseMicros > 0 { usleep(Self.testPauseMicros) }
                }
            }
        } catch let e as StoreError {
            throw e
        } catch let e as SystemError {
            throw .io(e)
        } catch {
            throw .io(SystemError(errno: EIO, operation: "archive", path: originalPath))
        }
        let record = try ObjectRecord.made(object: id, path: originalPath, stat: stat, blockShift: blockShift,
                                           checksums: checksums, extents: extents, xattrs: xattrs, storedBytes: stored,
                                           chunks: chunks, storedAt: recordPath(id))
        try renameIntoPlace(partial, dataPath(id))
        let bytes = try writeRecord(record)
        writtenRecords.withLock { w in
            if w.count >= 4096 { w.removeAll() }
            w[id] = (bytes.count, CRC32C.checksum(bytes))
        }
        finished = true
        records.withLock { $0.insert(record) }
        if Self.testPauseMicros > 0 { usleep(Self.testPauseMicros) }
        return record
    }

    /// copy_file_range for each data range; false when the kernel cannot copy between
    /// these filesystems (the caller then copies through user space).
    private func copyInKernel(_ ranges: [Range<Int64>], from source: FileDescriptor, to dest: FileDescriptor) throws -> Bool {
        for r in ranges {
            var pos = r.lowerBound
            while pos < r.upperBound {
                do {
                    let n = try source.copyRange(to: dest, from: pos, to: pos, count: Int(r.upperBound - pos))
                    if n == 0 { throw StoreError.changedDuringArchive(path: source.path) }
                    pos += Int64(n)
                } catch let e as SystemError where [EXDEV, EOPNOTSUPP, ENOSYS, EINVAL].contains(e.errno) && pos == r.lowerBound {
                    return false
                }
            }
        }
        return true
    }

    public func makeDurable() throws(StoreError) {
        do {
            let fd = try FileDescriptor.open(root, [.directory])
            defer { fd.close() }
            try fd.syncFilesystem()
        } catch { throw .io(error) }
    }

    @discardableResult
    private func writeRecord(_ record: ObjectRecord) throws(StoreError) -> [UInt8] {
        let final = recordPath(record.object), partial = final + ".partial"
        let bytes = try record.encoded(storedAt: final)
        do throws(SystemError) {
            let fd = try FileDescriptor.open(partial, [.writeOnly, .create, .truncate], mode: 0o600)
            defer { fd.close() }
            try fd.write(bytes, at: 0)
        } catch {
            throw .io(error)
        }
        try renameIntoPlace(partial, final)
        return bytes
    }

    private func renameIntoPlace(_ from: String, _ to: String) throws(StoreError) {
        if rename(from, to) != 0 { throw .io(SystemError(errno: errno, operation: "rename", path: to)) }
    }

    private func makeDirectory(_ dir: String) throws(StoreError) {
        if madeDirectories.withLock({ $0.contains(dir) }) { return }
        for d in ["\(root)/objects", dir] where mkdir(d, 0o700) != 0 && errno != EEXIST {
            throw .io(SystemError(errno: errno, operation: "mkdir", path: d))
        }
        madeDirectories.withLock { _ = $0.insert(dir) }
    }

    // MARK: read, delete, list

    public func record(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        if let r = records.withLock({ $0.lookup(id) }) { return r }
        return try storedRecord(id)
    }

    public func storedRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        do { return try readRecord(id) } catch {
            // What the store says now is the truth: a cached copy must not outlive it.
            records.withLock { $0.remove(id) }
            throw error
        }
    }

    private func readRecord(_ id: ObjectID) throws(StoreError) -> ObjectRecord {
        let path = recordPath(id)
        let bytes: [UInt8]
        do {
            let fd = try FileDescriptor.open(path, [.readOnly])
            defer { fd.close() }
            // One byte over the limit, so an oversized record is refused, not cut short.
            bytes = try fd.readAll(limit: ObjectRecord.maxEncodedBytes + 1)
        } catch {
            if error.errno == ENOENT { throw missing(id, path) }
            throw .io(error)
        }
        if let w = writtenRecords.withLock({ $0[id] }), w.length == bytes.count, w.crc == CRC32C.checksum(bytes),
           let cached = records.withLock({ $0.lookup(id) }) {
            return cached
        }
        let record = try ObjectRecord.decode(json: bytes, id: id, path: path)
        records.withLock { $0.insert(record) }
        return record
    }

    public func reader(for record: ObjectRecord) throws(StoreError) -> ObjectReader {
        let path = dataPath(record.object)
        do {
            return PosixObjectReader(record: record, fd: try FileDescriptor.open(path, [.readOnly]), recordPath: recordPath(record.object))
        } catch {
            if error.errno == ENOENT { throw missing(record.object, path) }
            throw .io(error)
        }
    }

    /// An object that is not found is missing only from a store that proves its identity;
    /// otherwise the store is not there (not mounted, replaced), which is not the object's
    /// fault: an I/O error, and no marker is flagged damaged for it.
    private func missing(_ id: ObjectID, _ path: String) -> StoreError {
        if let problem = healthProblem() { return .unusable(problem) }
        return .objectMissing(id, path: path)
    }

    public func delete(_ id: ObjectID) throws(StoreError) {
        records.withLock { $0.remove(id) }
        writtenRecords.withLock { _ = $0.removeValue(forKey: id) }
        let leftovers = [recordPath(id) + ".partial", dataPath(id) + ".partial"]
        for p in [recordPath(id), dataPath(id)] + leftovers where unlink(p) != 0 && errno != ENOENT {
            throw .io(SystemError(errno: errno, operation: "unlink", path: p))
        }
    }

    public func contains(_ id: ObjectID) -> Bool {
        (try? FileStat.of(path: recordPath(id))) != nil && (try? FileStat.of(path: dataPath(id))) != nil
    }

    /// Every object whose record is in place. A directory that cannot be read fails the
    /// listing (gc and import must not take part of the store for all of it); only a
    /// store that has no `objects` yet is empty.
    public func list() throws(StoreError) -> [ObjectID] {
        let top = "\(root)/objects"
        let dirs: [String]
        do { dirs = try Directory.entries(top) } catch {
            if error.errno == ENOENT && directoryProblem() == nil { return [] }
            throw .io(error)
        }
        var ids: [ObjectID] = []
        // Only the two-hex-digit directories put makes; anything else there is not hsmd's.
        for d in dirs where d.utf8.count == 2 && d.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) {
            let names: [String]
            do { names = try Directory.entries("\(top)/\(d)") } catch { throw .io(error) }
            for f in names where f.hasSuffix(".json") {
                if let id = ObjectID(hex: String(f.dropLast(5))) { ids.append(id) }
            }
        }
        return ids
    }
}

struct PosixObjectReader: ObjectReader {
    let record: ObjectRecord
    let fd: FileDescriptor
    let recordPath: String

    func read(block index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        let (view, expected) = try record.blockToRead(index, into: buffer, storedAt: recordPath)
        guard let expected else { return view.count }
        let range = record.layout.range(ofBlock: index)
        let len = view.count
        let n: Int
        do { n = try fd.read(into: view, at: range.lowerBound) } catch { throw .io(error) }
        guard n == len, CRC32C.checksum(UnsafeRawBufferPointer(view)) == expected else {
            throw .corrupt(record.object, block: index, path: fd.path)
        }
        return len
    }

    func read(block index: Int, bytes: Range<Int64>, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Range<Int64> {
        guard let shift = record.chunkShift, record.chunkChecksums != nil else {
            return try readWholeBlock(index, layout: record.layout, into: buffer)
        }
        let (view, expected) = try record.blockToRead(index, into: buffer, storedAt: recordPath)
        let span = record.chunkSpan(ofBlock: index, covering: bytes, shift: shift)
        guard expected != nil, !span.isEmpty else { return span }
        let start = record.layout.range(ofBlock: index).lowerBound
        let part = UnsafeMutableRawBufferPointer(rebasing: view[Int(span.lowerBound - start)..<Int(span.upperBound - start)])
        // A partial read is a random access: the kernel's read-ahead would read past the
        // chunks asked for on every one.
        fd.adviseRandom()
        let n: Int
        do { n = try fd.read(into: part, at: span.lowerBound) } catch { throw .io(error) }
        guard n == part.count else { throw .corrupt(record.object, block: index, path: fd.path) }
        try record.verifyChunks(span, ofBlock: index, in: UnsafeRawBufferPointer(view), storedAt: fd.path)
        return span
    }

    func prefetch(blocks: Range<Int>) {
        let valid = blocks.clamped(to: record.checksums.indices)
        guard let first = valid.first, let last = valid.last else { return }
        fd.adviseWillNeed(record.layout.range(ofBlock: first).lowerBound..<record.layout.range(ofBlock: last).upperBound)
    }

    func close() { fd.close() }
}
