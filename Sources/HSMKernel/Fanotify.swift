import CHSMKernel
import Glibc

/// The range record of a pre-access event, as the kernel reports it (page-rounded).
/// `count == 0` means "from `offset` to the end of the file" (FICLONE, FICLONERANGE with
/// length 0, ftruncate to a page-aligned size; docs/KERNEL-FACTS.md), never an empty range.
public struct AccessRange: Sendable, Equatable, CustomStringConvertible {
    public let offset: Int64
    public let count: Int64

    public init(offset: Int64, count: Int64) {
        self.offset = max(offset, 0)
        self.count = max(count, 0)
    }

    /// The kernel's record, clamped into Int64.
    public init(kernelOffset offset: UInt64, count: UInt64) {
        self.init(offset: Int64(clamping: offset), count: Int64(clamping: count))
    }

    /// Everything: an event without a range record, a whole-file recall.
    public static let wholeFile = AccessRange(offset: 0, count: 0)

    public var toEndOfFile: Bool { count == 0 }

    /// The bytes it covers in a file of `fileSize` bytes.
    public func bytes(fileSize: Int64) -> Range<Int64> {
        if count == 0 { return offset..<max(offset, fileSize) }
        let (end, overflow) = offset.addingReportingOverflow(count)
        return offset..<(overflow ? Int64.max : end)
    }

    public var description: String { count == 0 ? "\(offset)..EOF" : "\(offset)+\(count)" }
}

/// One fanotify event with its range record, if any.
public struct FanotifyEvent: Sendable {
    public let mask: UInt64
    /// The event's fd (opened by the kernel with FMODE_NONOTIFY), or -errno on failure.
    public let fd: Int32
    public let pid: Int32
    /// nil when the event carried no range record (open-permission events).
    public let range: AccessRange?
    /// Its slot in the event log, or -1 (not a permission event, or the log was full).
    public let slot: Int32
    /// statx of the event fd, taken when the event log recorded the event (nil when it did
    /// not): the same call the event loop would make right after.
    public let stat: FileStat?

    public var isOverflow: Bool { mask & UInt64(FAN_Q_OVERFLOW) != 0 }
    public var isPreAccess: Bool { mask & UInt64(FAN_PRE_ACCESS) != 0 }
    public var isOpenPermission: Bool { mask & UInt64(FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM) != 0 }
    public var isPermission: Bool { mask & UInt64(FAN_PRE_ACCESS | FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_ACCESS_PERM) != 0 }

    init(_ e: chsm_event) {
        mask = e.mask
        fd = e.fd
        pid = e.pid
        range = e.has_range != 0 ? AccessRange(kernelOffset: e.offset, count: e.count) : nil
        slot = e.slot
        stat = e.has_stat != 0 ? FileStat(e.st) : nil
    }

}

/// The answer to a permission event.
public enum FanotifyResponse: Sendable, Equatable {
    case allow
    case deny(errno: Int32)

    var raw: UInt32 {
        switch self {
        case .allow: return UInt32(FAN_ALLOW)
        case .deny(let e): return UInt32(FAN_DENY) | ((UInt32(e) & 0xff) << 24)
        }
    }
}

/// A fanotify group fd. Reads are blocking and meant for one dedicated thread;
/// `respond` may be called from any thread.
public struct FanotifyGroup: Sendable {
    public let fd: Int32

    public static let preAccess: UInt64 = UInt64(FAN_PRE_ACCESS)
    public static let openPermission: UInt64 = UInt64(FAN_OPEN_PERM)
    /// Everything hsmd listens for.
    public static let allEvents: UInt64 = preAccess | openPermission

    /// A pre-content group whose event fds are opened read-only: the kernel opens them on
    /// the accessing program's mount, and a read-write open fails with EROFS on a
    /// read-only one (an overlayfs lower layer, a read-only bind mount), which denies the
    /// access (docs/KERNEL-FACTS.md). Recall writes through a file opened by handle on
    /// hsmd's own mount instead (`ignore(mountOf:)`).
    public static func preContent() throws(SystemError) -> FanotifyGroup {
        let flags = UInt32(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_REPORT_FD_ERROR)
        let fd = chsm_fanotify_init(flags, UInt32(O_RDONLY | O_CLOEXEC))
        try SystemError.check(fd, "fanotify_init(FAN_CLASS_PRE_CONTENT)")
        return FanotifyGroup(fd: fd)
    }

    public init(fd: Int32) { self.fd = fd }

    /// Marks the whole filesystem holding `path` for pre-access and open events.
    public func markFilesystem(_ path: String) throws(SystemError) {
        let r = chsm_fanotify_mark(fd, UInt32(FAN_MARK_ADD | FAN_MARK_FILESYSTEM), Self.allEvents, AT_FDCWD, path)
        try SystemError.check(r, "fanotify_mark(FAN_MARK_FILESYSTEM)", path)
    }

    public func unmarkFilesystem(_ path: String) {
        _ = chsm_fanotify_mark(fd, UInt32(FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM), Self.allEvents, AT_FDCWD, path)
    }

    /// Adds an evictable inode ignore mark: the kernel stops sending the events in `mask`
    /// for this inode until the mark is removed or the inode leaves the cache.
    public func ignore(fileAt fileFD: Int32, path: String, mask: UInt64 = allEvents) throws(SystemError) {
        let flags = UInt32(FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE)
        let r = chsm_fanotify_mark(fd, flags, mask, fileFD, nil)
        try SystemError.check(r, "fanotify_mark(FAN_MARK_IGNORE)", path)
    }

    /// Ignores every event of files reached through the mount `dirFD` is on (a mount
    /// ignore mark; the filesystem mark still sees every other mount). For hsmd's private
    /// clone of a managed mount: its own I/O through it then raises no events. The mark
    /// goes with the mount when its last fd closes.
    public func ignore(mountOf dirFD: Int32, path: String, mask: UInt64 = allEvents) throws(SystemError) {
        let flags = UInt32(FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
        try SystemError.check(chsm_fanotify_mark(fd, flags, mask, dirFD, nil), "fanotify_mark(FAN_MARK_MOUNT|FAN_MARK_IGNORE)", path)
    }

    /// Removes every inode mark of the group (its filesystem marks stay). A kept group
    /// still carries the ignore marks of a dead hsmd, among them one a release puts on a
    /// file while it punches: left in place, reads of those holes would raise no event.
    public func flushInodeMarks() throws(SystemError) {
        try SystemError.check(chsm_fanotify_mark(fd, UInt32(FAN_MARK_FLUSH), 0, AT_FDCWD, nil), "fanotify_mark(FAN_MARK_FLUSH)")
    }

    /// Removes the inode ignore mark; absent marks are not an error.
    public func stopIgnoring(fileAt fileFD: Int32, path: String) throws(SystemError) {
        let flags = UInt32(FAN_MARK_REMOVE | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
        let r = chsm_fanotify_mark(fd, flags, Self.allEvents, fileFD, nil)
        if r == -ENOENT { return }
        try SystemError.check(r, "fanotify_mark(FAN_MARK_REMOVE|FAN_MARK_IGNORE)", path)
    }

    public func respond(to eventFD: Int32, _ response: FanotifyResponse) throws(SystemError) {
        try SystemError.check(chsm_fanotify_respond(fd, eventFD, response.raw), "fanotify response")
    }

    /// Answers, and if the kernel refuses the errno of a denial (it accepts only a few:
    /// see README, kernel facts), denies with EIO instead: an unanswered event would
    /// hang the program forever. Returns the response actually sent, or why none was.
    @discardableResult
    public func respondOrFallBack(to eventFD: Int32, _ response: FanotifyResponse) -> Result<FanotifyResponse, SystemError> {
        do {
            try respond(to: eventFD, response)
            return .success(response)
        } catch {
            guard case .deny(let e) = response, e != EIO, error.errno == EINVAL else { return .failure(error) }
            do { try respond(to: eventFD, .deny(errno: EIO)) } catch { return .failure(error) }
            return .success(.deny(errno: EIO))
        }
    }

    /// True when `fd` is a fanotify group (an fd handed back by systemd's fd store is
    /// checked before it is trusted).
    public static func isFanotifyGroup(_ fd: Int32) -> Bool {
        FileDescriptor.currentPath(of: fd) == "anon_inode:[fanotify]"
    }

    public func close() { _ = Glibc.close(fd) }

    /// Installs a no-op handler for `signal` without SA_RESTART: sending it to the thread
    /// blocked reading the group makes the read return EINTR.
    public static func installWakeupHandler(signal: Int32) throws(SystemError) {
        try SystemError.check(chsm_wakeup_signal_setup(signal), "sigaction(wake-up signal)")
    }
}

/// Reads and parses batches of events into the event log's buffer, which records every
/// permission event before the caller sees it. One reader per thread.
public final class FanotifyReader {
    private let group: FanotifyGroup
    private let log: EventLog
    private let parsed: UnsafeMutableBufferPointer<chsm_event>

    public init(group: FanotifyGroup, log: EventLog) {
        self.group = group
        self.log = log
        // Left uninitialized: the parser writes each entry it returns (see EventBuffers).
        parsed = .allocate(capacity: log.rawBytes / 24)
    }

    deinit { parsed.deallocate() }

    /// Blocks until events arrive; returns [] at EOF (group closed).
    public func next() throws(SystemError) -> [FanotifyEvent] {
        let n = log.read(group: group.fd, into: parsed.baseAddress!, capacity: Int32(parsed.count))
        try SystemError.check(n, "read(fanotify)")
        return (0..<Int(n)).map { FanotifyEvent(parsed[$0]) }
    }
}

public enum Memory {
    /// Call once at start, before threads: see chsm_tune_malloc.
    public static func keepResidentSetSmall() { chsm_tune_malloc() }
    /// Returns the free pages inside malloc's arenas to the kernel. glibc trims only the
    /// top of an arena by itself; after an operation on thousands of files the holes in
    /// the middle stay resident (about 2 MiB after a 10,000-file migrate). Takes a few ms.
    public static func returnFreePages() { chsm_trim_malloc() }
}

public enum KernelProbe {
    public enum Result { case ok, failed(String) }

    /// Creates and drops a pre-content group: does this kernel offer FAN_PRE_ACCESS?
    public static func preContentEvents() -> Result {
        do {
            // Creating the group is the test: kernels without pre-content events refuse
            // FAN_CLASS_PRE_CONTENT. Nothing is marked (marking "/" could stall the machine).
            let g = try FanotifyGroup.preContent()
            g.close()
            return .ok
        } catch {
            return .failed(error.description)
        }
    }
}
