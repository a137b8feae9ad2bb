import CHSMKernel
import Glibc

/// A file handle (name_to_handle_at / fanotify FID): identifies an inode on one
/// filesystem across renames, and tells a deleted one (ESTALE) from a live one.
public struct InodeHandle: Hashable, Sendable, CustomStringConvertible {
    public let type: Int32
    public let bytes: [UInt8]

    public init(type: Int32, bytes: [UInt8]) {
        self.type = type
        self.bytes = bytes
    }

    init(_ h: chsm_handle) {
        type = h.type
        bytes = withUnsafeBytes(of: h.data) { Array($0.prefix(Int(h.bytes))) }
    }

    /// Serialized as 4 bytes of type (little endian) then the handle bytes: the form
    /// kept in the journal database.
    public var encoded: [UInt8] {
        withUnsafeBytes(of: type.littleEndian) { Array($0) } + bytes
    }

    public init?(encoded: [UInt8]) {
        guard encoded.count > 4, encoded.count - 4 <= Int(CHSM_HANDLE_MAX) else { return nil }
        type = encoded[0..<4].withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        bytes = Array(encoded[4...])
    }

    public var description: String {
        "\(type):" + bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// The C form, for a record that keeps it (the event log).
    var raw: chsm_handle { withRaw { $0.pointee } }

    fileprivate func withRaw<T>(_ body: (UnsafePointer<chsm_handle>) -> T) -> T {
        var h = chsm_handle()
        h.type = type
        h.bytes = UInt32(bytes.count)
        withUnsafeMutableBytes(of: &h.data) { dst in
            bytes.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(dst.count))) }
        }
        return body(&h)
    }

    /// The handle of the inode `fd` refers to (an O_PATH fd is fine).
    public static func of(fd: Int32, path: String) throws(SystemError) -> InodeHandle {
        var h = chsm_handle()
        try SystemError.check(chsm_name_to_handle(fd, "", CHSM_EMPTY_PATH, &h), "name_to_handle_at", path)
        return InodeHandle(h)
    }

    /// The handle of `path` (symlinks not followed).
    public static func of(path: String) throws(SystemError) -> InodeHandle {
        var h = chsm_handle()
        try SystemError.check(chsm_name_to_handle(AT_FDCWD, path, 0, &h), "name_to_handle_at", path)
        return InodeHandle(h)
    }

    /// open_by_handle_at with O_PATH: an fd for the inode if it still exists (ESTALE when
    /// it was deleted). `mountFD` is any fd on the handle's filesystem.
    public func openPath(mountFD: Int32, what: String) throws(SystemError) -> Int32 {
        let fd = withRaw { chsm_open_by_handle(mountFD, $0, CHSM_OPEN_PATH_DIR) }
        return try SystemError.check(fd, "open_by_handle_at", what)
    }
}

extension InodeHandle {
    /// open_by_handle_at with ordinary open flags: the inode itself, whatever its names
    /// are now (ESTALE when it was deleted). `mountFD` is any fd on its filesystem.
    public func open(mountFD: Int32, _ flags: FileDescriptor.OpenFlags, path: String) throws(SystemError) -> FileDescriptor {
        let fd = withRaw { chsm_open_by_handle(mountFD, $0, flags.rawValue) }
        return FileDescriptor(rawValue: try SystemError.check(fd, "open_by_handle_at", path), path: path)
    }
}

/// Opens the directory `name` relative to a directory fd with O_PATH, not following a
/// symlink (for ".." and for a moved directory's name in its new parent).
public func openPathAt(_ dirFD: Int32, _ name: String, what: String) throws(SystemError) -> Int32 {
    try openPathAt(dirFD, nameBytes: Array(name.utf8), what: what)
}

/// The same for a name given as the kernel's bytes (NUL-free; a name need not be UTF-8).
public func openPathAt(_ dirFD: Int32, nameBytes: [UInt8], what: String) throws(SystemError) -> Int32 {
    let fd = (nameBytes + [0]).withUnsafeBufferPointer { b in
        b.withMemoryRebound(to: CChar.self) { chsm_openat(dirFD, $0.baseAddress!, CHSM_OPEN_PATH_DIR) }
    }
    return try SystemError.check(fd, "openat(\(String(decoding: nameBytes, as: UTF8.self)))", what)
}

/// The filesystem id (statfs f_fsid) of the filesystem holding `path`.
public func filesystemID(of path: String) throws(SystemError) -> UInt64 {
    var v: UInt64 = 0
    try SystemError.check(chsm_fsid(path, &v), "statfs", path)
    return v
}

/// One event of the change-journal group: its mask, the process that caused it, and the
/// directories it names (the entry's parent, or a directory itself for an event on it).
public struct DirectoryEvent: Sendable {
    public let mask: UInt64
    public let pid: Int32
    public let directories: [InodeHandle]
    /// For a directory moved into `directories[0]`: its name there, as the kernel's bytes
    /// (a name need not be UTF-8). nil for other events: nothing needs their names.
    public let movedDirectoryName: [UInt8]?

    public var isOverflow: Bool { mask & UInt64(FAN_Q_OVERFLOW) != 0 }
    /// An event that a recorded directory's ignore mark suppresses when it is in place.
    public var isSuppressedByIgnoreMark: Bool {
        mask & DirectoryChangeGroup.ignoredOnRecordedDirectory != 0 && mask & UInt64(FAN_ONDIR) == 0
    }
    /// A directory arrived in a new parent (renamed or moved).
    public static func isDirectoryArrival(_ mask: UInt64) -> Bool {
        mask & UInt64(FAN_MOVED_TO) != 0 && mask & UInt64(FAN_ONDIR) != 0
    }
}

/// The journal's notification group for one filesystem, reporting directory file handles
/// and entry names (FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME) instead of fds.
///
/// Only FAN_REPORT_DFID_NAME, not also FAN_REPORT_FID, because every unlink raises
/// FAN_ATTRIB on the file itself (its link count) with no parent, which no directory's
/// ignore mark can stop: a group with FAN_REPORT_FID receives it, a group with only
/// FAN_REPORT_DFID_NAME is never sent it (docs/KERNEL-FACTS.md). One such group takes
/// every journal event, so each recorded directory needs one ignore mark (kernel memory,
/// one fanotify_mark call) rather than one per group. Without the entry's own handle, a
/// moved directory is found by its name in its new parent.
/// The queue is bounded (no FAN_UNLIMITED_QUEUE) on purpose: an overflow is reported and
/// marks the journal's epoch incomplete, instead of hsmd's memory growing without limit.
public struct DirectoryChangeGroup: Sendable {
    public let fd: Int32

    /// Everything that changes a directory's entries, an entry's data or its attributes
    /// (chmod, chown, utimes, xattrs). Moves as FAN_MOVED_FROM + FAN_MOVED_TO rather than
    /// FAN_RENAME: each of those is an event of ONE directory, so an already-recorded
    /// directory's ignore mark can swallow it while a move into a directory not yet
    /// recorded still arrives. A FAN_RENAME event names both parents and is dropped when
    /// an ignore mark on either matches (fanotify ORs the ignore masks of all marks
    /// involved), so it could never be ignored, and a tree of renames would send every
    /// one of them to hsmd.
    public static let events: UInt64 = UInt64(FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_ONDIR)
    /// What an already-recorded directory's ignore mark suppresses: the events of its
    /// non-directory entries. FAN_ONDIR is left out: with it, the parent's mark would also
    /// swallow events of a subdirectory itself (chmod of the subdirectory is reported to
    /// the parent's marks too), and that subdirectory may not be recorded yet; moves of
    /// directories must also arrive (the moved tree is remembered).
    public static let ignoredOnRecordedDirectory: UInt64 = UInt64(FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD)

    public init(fd: Int32) {
        self.fd = fd
    }

    public static func open() throws(SystemError) -> DirectoryChangeGroup {
        let fd = chsm_fanotify_init(UInt32(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME), UInt32(O_RDONLY | O_CLOEXEC))
        try SystemError.check(fd, "fanotify_init(FAN_CLASS_NOTIF|FAN_REPORT_DFID_NAME)")
        return DirectoryChangeGroup(fd: fd)
    }

    public func markFilesystem(_ path: String) throws(SystemError) {
        let r = chsm_fanotify_mark(fd, UInt32(FAN_MARK_ADD | FAN_MARK_FILESYSTEM), Self.events, AT_FDCWD, path)
        try SystemError.check(r, "fanotify_mark(FAN_MARK_FILESYSTEM, journal events)", path)
    }

    /// An evictable ignore mark on a directory: the kernel stops sending the events of
    /// its entries until the marks are flushed (next epoch) or the inode leaves the cache.
    /// Directories need FAN_MARK_IGNORED_SURV_MODIFY with FAN_MARK_IGNORE (else EISDIR).
    /// `dirFD` may be an O_PATH fd.
    public func ignoreDirectory(fd dirFD: Int32, path: String) throws(SystemError) {
        let flags = UInt32(FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE)
        // Measured: an O_PATH fd with a NULL pathname is refused (EBADF); "." looked up
        // relative to it names the same directory and is accepted.
        let r = chsm_fanotify_mark(fd, flags, Self.ignoredOnRecordedDirectory, dirFD, ".")
        try SystemError.check(r, "fanotify_mark(FAN_MARK_IGNORE, directory)", path)
    }

    /// What of hsmd's own recall I/O a mount mark can stop: data changes. FAN_ATTRIB (the
    /// mtime restore, the marker) cannot be: it carries no path, so the kernel refuses it
    /// on a mount mark (EINVAL) and those events still arrive, to be dropped by pid.
    public static let ignoredOnPrivateMount: UInt64 = UInt64(FAN_MODIFY | FAN_CLOSE_WRITE)

    /// A mount ignore mark on hsmd's private clone of a managed mount (the one recall
    /// writes through): recall's writes are not a user's changes, and without it each
    /// recall woke the journal's reader several times.
    public func ignore(mountOf dirFD: Int32, path: String) throws(SystemError) {
        let flags = UInt32(FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
        let r = chsm_fanotify_mark(fd, flags, Self.ignoredOnPrivateMount, dirFD, nil)
        try SystemError.check(r, "fanotify_mark(FAN_MARK_MOUNT|FAN_MARK_IGNORE, journal)", path)
    }

    /// Removes every inode mark of the group (the ignore marks), keeping the filesystem mark.
    public func flushInodeMarks() throws(SystemError) {
        try SystemError.check(chsm_fanotify_mark(fd, UInt32(FAN_MARK_FLUSH), 0, AT_FDCWD, nil), "fanotify_mark(FAN_MARK_FLUSH)")
    }

    public func close() {
        _ = Glibc.close(fd)
    }
}

/// Reads and parses batches of directory events; owns its buffers, one reader per thread.
public final class DirectoryEventReader {
    private let group: DirectoryChangeGroup
    private let buffers: EventBuffers<chsm_fid_event>

    public init(group: DirectoryChangeGroup, bufferSize: Int = 64 * 1024) {
        self.group = group
        // The smallest event (metadata + one DFID record of an 8-byte handle) is > 40 bytes.
        buffers = EventBuffers(bytes: bufferSize, smallestEvent: 40)
    }

    /// The events queued now; [] when none (the group is non-blocking).
    public func next() throws(SystemError) -> [DirectoryEvent] {
        let batch: UnsafeMutableBufferPointer<chsm_fid_event>
        do { batch = try buffers.read(group.fd, "read(fanotify journal group)", chsm_fanotify_read_fid) } catch {
            if error.errno == EAGAIN { return [] }
            throw error
        }
        var out: [DirectoryEvent] = []
        out.reserveCapacity(batch.count)
        for i in batch.indices {
            let e = batch[i]
            var dirs: [InodeHandle] = []
            if e.ndirs > 0 { dirs.append(InodeHandle(e.dirs.0)) }
            if e.ndirs > 1 { dirs.append(InodeHandle(e.dirs.1)) }
            var name: [UInt8]?
            if DirectoryEvent.isDirectoryArrival(e.mask), e.ndirs > 0, e.name_len > 0 {
                name = withUnsafeBytes(of: &batch[i].name) { Array($0.prefix(Int(e.name_len))) }
            }
            out.append(DirectoryEvent(mask: e.mask, pid: e.pid, directories: dirs, movedDirectoryName: name))
        }
        return out
    }
}

extension InodeHandle {
    /// The (device, inode) the handle names on the filesystem of `mountFD`, found with an
    /// O_PATH open (no open event, so the event thread may call it); nil when it names
    /// nothing there. Works whatever mount namespace the handle came from.
    public func identity(onFilesystemOf mountFD: Int32) -> (device: UInt64, inode: UInt64)? {
        let fd = withRaw { chsm_open_by_handle(mountFD, $0, CHSM_OPEN_PATH_FILE) }
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        guard let st = try? FileDescriptor(rawValue: fd, path: "").stat() else { return nil }
        return (st.device, st.inode)
    }

    /// open_by_handle_at for I/O (`flags` as for open, e.g. O_RDWR): how hsmd reaches a
    /// file it knows only by handle, such as an event a predecessor left unanswered.
    public func openFile(mountFD: Int32, flags: FileDescriptor.OpenFlags, what: String) throws(SystemError) -> FileDescriptor {
        let fd = withRaw { chsm_open_by_handle(mountFD, $0, flags.rawValue) }
        return FileDescriptor(rawValue: try SystemError.check(fd, "open_by_handle_at", what), path: what)
    }
}
