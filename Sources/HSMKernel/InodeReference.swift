import CHSMKernel
import Glibc

/// One inode named by an `O_PATH` descriptor: it does not open the file, so it raises no
/// fanotify open event, breaks no lease and changes no atime, and whatever later happens
/// to the name, it still names the same inode.
public struct InodeReference: ~Copyable {
    public let rawValue: Int32
    public let path: String

    public init(path: String) throws(SystemError) {
        let fd = chsm_open_inode_ref(path)
        try SystemError.check(fd, "open(O_PATH)", path)
        rawValue = fd
        self.path = path
    }

    deinit { _ = Glibc.close(rawValue) }

    public func stat() throws(SystemError) -> FileStat {
        var s = chsm_stat()
        try SystemError.check(chsm_fstat(rawValue, &s), "statx", path)
        return FileStat(s)
    }

    /// Reads xattr `name` into `buffer`; the length, or nil when the inode has none.
    public func xattr(_ name: String, into buffer: inout [UInt8]) throws(SystemError) -> Int? {
        let n = chsm_inode_ref_getxattr(rawValue, name, &buffer, buffer.count)
        if n == -Int(ENODATA) { return nil }
        return Int(try SystemError.check(n, "getxattr \(name)", path))
    }
}

extension FanotifyGroup {
    /// The same evictable ignore mark as `ignore(fileAt:)`, on the inode `ref` names.
    public func ignore(_ ref: borrowing InodeReference, mask: UInt64 = allEvents) throws(SystemError) {
        let flags = UInt32(FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE)
        try SystemError.check(chsm_fanotify_mark_inode_ref(fd, flags, mask, ref.rawValue), "fanotify_mark(FAN_MARK_IGNORE)", ref.path)
    }
}

/// Puts the calling thread at idle CPU and I/O priority: background work that must never
/// slow down the programs hsmd serves.
public func setThreadIdlePriority() throws(SystemError) {
    try SystemError.check(chsm_thread_idle_priority(), "sched_setscheduler(SCHED_IDLE)/ioprio_set", "")
}
