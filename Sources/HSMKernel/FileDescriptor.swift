import CHSMKernel
import Glibc

/// An open file descriptor with the path it was opened by (for error messages).
/// A plain value like swift-system's `FileDescriptor`: whoever opens it closes it.
public struct FileDescriptor: Sendable, Hashable {
    public let rawValue: Int32
    public let path: String

    public init(rawValue: Int32, path: String) {
        self.rawValue = rawValue
        self.path = path
    }

    public struct OpenFlags: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let readOnly = OpenFlags([])
        public static let readWrite = OpenFlags(rawValue: O_RDWR)
        public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
        public static let create = OpenFlags(rawValue: O_CREAT)
        public static let exclusive = OpenFlags(rawValue: O_EXCL)
        public static let truncate = OpenFlags(rawValue: O_TRUNC)
        public static let noFollow = OpenFlags(rawValue: O_NOFOLLOW)
        public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
        public static let directory = OpenFlags(rawValue: O_DIRECTORY)
        /// Reading for archive must not make a file look recently used to the policy.
        public static let noAccessTime = OpenFlags(rawValue: 0o1000000)
    }

    public static func open(_ path: String, _ flags: OpenFlags, mode: UInt32 = 0o600) throws(SystemError) -> FileDescriptor {
        var fd = chsm_open(path, flags.rawValue, mode)
        if fd == -EPERM && flags.contains(.noAccessTime) {
            // O_NOATIME is refused for files the caller does not own without CAP_FOWNER.
            fd = chsm_open(path, flags.subtracting(.noAccessTime).rawValue, mode)
        }
        try SystemError.check(fd, "open", path)
        return FileDescriptor(rawValue: fd, path: path)
    }

    public func close() {
        _ = Glibc.close(rawValue)
    }

    /// The path the kernel has for this fd now (after renames), for log lines.
    public static func currentPath(of fd: Int32) -> String {
        var buf = [CChar](repeating: 0, count: 4097)
        let n = chsm_fd_path(fd, &buf, 4096)
        if n < 0 { return "fd \(fd)" }
        return String(decoding: buf[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Metadata

    public func stat() throws(SystemError) -> FileStat {
        var s = chsm_stat()
        try SystemError.check(chsm_fstat(rawValue, &s), "statx", path)
        return FileStat(s)
    }

    public func setModificationTime(_ ns: Int64) throws(SystemError) {
        try SystemError.check(chsm_set_mtime(rawValue, ns), "futimens", path)
    }

    // MARK: Data

    /// Reads exactly `count` bytes at `offset` unless EOF comes first; returns bytes read.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError(errno: errno, operation: "pread", path: path)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError(errno: errno, operation: "pwrite", path: path)
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8], at offset: Int64) throws(SystemError) {
        var failure: SystemError?
        bytes.withUnsafeBytes { b in
            do { try write(b, at: offset) } catch { failure = error as? SystemError }
        }
        if let failure { throw failure }
    }

    /// Reads the whole (small) file from offset 0.
    public func readAll(limit: Int = 64 << 20) throws(SystemError) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var offset: Int64 = 0
        while out.count < limit {
            var failure: SystemError?
            let n = chunk.withUnsafeMutableBytes { b -> Int in
                do { return try read(into: b, at: offset) } catch { failure = error as? SystemError; return 0 }
            }
            if let failure { throw failure }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            offset += Int64(n)
        }
        return out
    }

    public func truncate(to size: Int64) throws(SystemError) {
        if ftruncate(rawValue, off_t(size)) < 0 { throw SystemError(errno: errno, operation: "ftruncate", path: path) }
    }

    /// Asks the kernel to start reading `range` into the page cache (a hint; errors ignored).
    /// No read-ahead on this descriptor (its reads are of exactly what is needed).
    public func adviseRandom() {
        _ = posix_fadvise(rawValue, 0, 0, POSIX_FADV_RANDOM)
    }

    public func adviseWillNeed(_ range: Range<Int64>) {
        _ = posix_fadvise(rawValue, off_t(range.lowerBound), off_t(range.upperBound - range.lowerBound), POSIX_FADV_WILLNEED)
    }

    /// Starts writing `range` back to disk (and with `wait`, waits for it): streaming
    /// writes stay bounded instead of ending in one flush that floods the device.
    public func writeBack(_ range: Range<Int64>, wait: Bool) throws(SystemError) {
        try SystemError.check(chsm_sync_file_range(rawValue, range.lowerBound, range.upperBound - range.lowerBound, wait ? 1 : 0),
                              "sync_file_range", path)
    }

    /// syncfs: everything written on this fd's filesystem reaches the disk.
    public func syncFilesystem() throws(SystemError) {
        try SystemError.check(chsm_syncfs(rawValue), "syncfs", path)
    }

    /// fdatasync: the data written so far (and the size) is on disk.
    public func syncData() throws(SystemError) {
        while fdatasync(rawValue) < 0 {
            if errno == EINTR { continue }
            throw SystemError(errno: errno, operation: "fdatasync", path: path)
        }
    }

    public func sync() throws(SystemError) {
        if fsync(rawValue) < 0 { throw SystemError(errno: errno, operation: "fsync", path: path) }
    }

    public func punchHole(offset: Int64, length: Int64) throws(SystemError) {
        try SystemError.check(chsm_punch_hole(rawValue, offset, length), "fallocate(PUNCH_HOLE)", path)
    }

    /// Next offset ≥ `offset` holding data, or nil when only a hole remains up to EOF.
    public func nextData(from offset: Int64) throws(SystemError) -> Int64? {
        let r = chsm_seek_data(rawValue, offset)
        if r == -Int64(ENXIO) { return nil }
        return try SystemError.check(r, "lseek(SEEK_DATA)", path)
    }

    /// Next offset ≥ `offset` that starts a hole (EOF counts as one).
    public func nextHole(from offset: Int64) throws(SystemError) -> Int64 {
        let r = chsm_seek_hole(rawValue, offset)
        if r == -Int64(ENXIO) { return offset }
        return try SystemError.check(r, "lseek(SEEK_HOLE)", path)
    }

    /// The data extents of [start, end) as the filesystem reports them.
    public func dataExtents(in range: Range<Int64>) throws(SystemError) -> [Range<Int64>] {
        var out: [Range<Int64>] = []
        var pos = range.lowerBound
        while pos < range.upperBound {
            guard let d = try nextData(from: pos), d < range.upperBound else { break }
            let h = min(try nextHole(from: d), range.upperBound)
            if h <= d { break }
            out.append(d..<h)
            pos = h
        }
        return out
    }

    /// copy_file_range; returns bytes copied (0 at EOF).
    public func copyRange(to dest: FileDescriptor, from offset: Int64, to destOffset: Int64, count: Int) throws(SystemError) -> Int {
        let r = chsm_copy_file_range(rawValue, offset, dest.rawValue, destOffset, count)
        return Int(try SystemError.check(r, "copy_file_range", path))
    }

    // MARK: Leases

    public enum LeaseState: Sendable, Equatable { case none, read, write }

    public func setWriteLease(signal: Int32) throws(SystemError) {
        try SystemError.check(chsm_set_lease(rawValue, F_WRLCK, signal), "fcntl(F_SETLEASE, F_WRLCK)", path)
    }

    public func releaseLease() throws(SystemError) {
        try SystemError.check(chsm_set_lease(rawValue, F_UNLCK, 0), "fcntl(F_SETLEASE, F_UNLCK)", path)
    }

    /// During a lease break this reports the type the lease is being broken to.
    public func lease() throws(SystemError) -> LeaseState {
        let r = try SystemError.check(chsm_get_lease(rawValue), "fcntl(F_GETLEASE)", path)
        switch r {
        case F_WRLCK: return .write
        case F_RDLCK: return .read
        default: return .none
        }
    }

    public static func installLeaseBreakHandler(signal: Int32) throws(SystemError) {
        try SystemError.check(chsm_lease_signal_setup(signal), "sigaction(lease signal)")
    }
}

/// What statx reports, in plain integers.
public struct FileStat: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    public var allocatedBytes: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var linkCount: UInt32
    /// Nanoseconds since 1970; a time outside 1677...2262 (btrfs allows them) is
    /// saturated to Int64.min or Int64.max.
    public var atimeNs: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64

    init(_ s: chsm_stat) {
        device = s.dev; inode = s.ino; size = Int64(s.size); allocatedBytes = Int64(s.blocks) * 512
        mode = s.mode; uid = s.uid; gid = s.gid; linkCount = s.nlink
        atimeNs = s.atime_ns; mtimeNs = s.mtime_ns; ctimeNs = s.ctime_ns
    }

    public static func of(path: String, followLinks: Bool = false) throws(SystemError) -> FileStat {
        var s = chsm_stat()
        try SystemError.check(chsm_stat_path(path, followLinks ? 0 : 1, &s), "statx", path)
        return FileStat(s)
    }

    public var fileType: FileType {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): return .regular
        case UInt32(S_IFDIR): return .directory
        case UInt32(S_IFLNK): return .symlink
        case UInt32(S_IFIFO): return .fifo
        case UInt32(S_IFSOCK): return .socket
        case UInt32(S_IFCHR): return .characterDevice
        case UInt32(S_IFBLK): return .blockDevice
        default: return .unknown
        }
    }

    public var inodeKey: InodeKey { InodeKey(device: device, inode: inode) }
}

public enum FileType: String, Sendable {
    case regular, directory, symlink, fifo, socket
    case characterDevice = "character device"
    case blockDevice = "block device"
    case unknown
}

/// Identifies an inode across paths and fds.
public struct InodeKey: Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64
    public init(device: UInt64, inode: UInt64) { self.device = device; self.inode = inode }
}
