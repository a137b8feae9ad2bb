import CHSMKernel
import Glibc

/// A permission event recorded in the event log by a process that may since have died.
public struct RecordedEvent: Sendable {
    public let slot: Int32
    /// The number the kernel knows the event by: the reader's event fd number.
    public let number: Int32
    public let pid: Int32
    public let mask: UInt64
    public let range: AccessRange?
    /// The file's handle (name_to_handle_at), when it could be taken.
    public let handle: InodeHandle?
    /// st_dev and st_ino of the file, 0 when unknown.
    public let device: UInt64
    public let inode: UInt64

    public var isOpenPermission: Bool { mask & UInt64(FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM) != 0 }
}

/// The event log (chsm_eventlog.h): every permission event hsmd reads, on record in a
/// memfd that outlives the process in systemd's fd store, so a successor can finish what
/// a killed hsmd took (docs/ARCHITECTURE.md, "Restart without harm").
///
/// @unchecked Sendable: the mapping is shared memory written in C. The read buffer and
/// slot allocation belong to the one thread that calls `read` (the event loop); a slot's
/// state word is then cleared once, by whoever answers its event, with an atomic store.
public final class EventLog: @unchecked Sendable {
    public let fd: Int32
    private let base: UnsafeMutableRawPointer
    public let slotCount: Int
    public let rawBytes: Int

    public static let defaultSlots: UInt32 = 8192
    public static let defaultRawBytes: UInt32 = 256 * 1024

    private init(fd: Int32, base: UnsafeMutableRawPointer) {
        self.fd = fd
        self.base = base
        slotCount = Int(chsm_evlog_slot_count(base))
        rawBytes = Int(chsm_evlog_raw_bytes(base))
    }

    /// A new, empty log in a fresh memfd.
    public static func create(slots: UInt32 = defaultSlots, rawBytes: UInt32 = defaultRawBytes) throws(SystemError) -> EventLog {
        let fd = try SystemError.check(chsm_evlog_create(slots, rawBytes), "memfd_create(event log)")
        do { return try adopt(fd: fd) } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// The log in `fd` (a memfd a predecessor created), after checking its header.
    public static func adopt(fd: Int32) throws(SystemError) -> EventLog {
        var err: Int32 = 0
        guard let base = chsm_evlog_map(fd, &err) else {
            throw SystemError(errno: err, operation: "map event log (fd \(fd))")
        }
        return EventLog(fd: fd, base: base)
    }

    /// One blocking read of `group` into the log's buffer, slots recorded (see C).
    func read(group: Int32, into parsed: UnsafeMutablePointer<chsm_event>, capacity: Int32) -> Int32 {
        chsm_evlog_read(base, group, parsed, capacity)
    }

    /// The file handle recorded with the pending event in `slot`; nil when there is none.
    /// Only while that event is unanswered and only on the thread that owns it: the slot
    /// is reused once it is answered.
    public func handle(ofSlot slot: Int32) -> InodeHandle? {
        var h = chsm_handle()
        return chsm_evlog_handle(base, slot, &h) == 0 ? InodeHandle(h) : nil
    }

    /// The event in `slot` is answered.
    public func done(_ slot: Int32) {
        chsm_evlog_done(base, slot)
    }

    /// Every slot still pending: events read and not answered.
    public func pending() -> [RecordedEvent] {
        let out = UnsafeMutableBufferPointer<chsm_evlog_slot>.allocate(capacity: slotCount)
        let index = UnsafeMutableBufferPointer<Int32>.allocate(capacity: slotCount)
        defer { out.deallocate(); index.deallocate() }
        let n = Int(chsm_evlog_pending(base, out.baseAddress, index.baseAddress, Int32(slotCount)))
        return (0..<n).map { i in
            let s = out[i]
            return RecordedEvent(slot: index[i], number: s.fd, pid: s.pid, mask: s.mask,
                                 range: s.has_range != 0 ? AccessRange(kernelOffset: s.offset, count: s.count) : nil,
                                 handle: s.has_handle != 0 ? InodeHandle(s.handle) : nil,
                                 device: s.dev, inode: s.ino)
        }
    }

    /// Every permission event of the last read got a slot: the ones of the buffer without
    /// one had been answered. False when the writer died before it recorded them all (or
    /// the log was full): an event of the buffer without a slot may still wait.
    public var lastBatchRecorded: Bool { chsm_evlog_last_batch_recorded(base) != 0 }

    /// Records an event of the last batch that never got a slot, once a successor has
    /// found its file, so that a successor of this process finds it too. Its slot is -1
    /// when the log is full.
    public func add(number: Int32, pid: Int32, mask: UInt64, range: AccessRange?, handle: InodeHandle, device: UInt64, inode: UInt64) -> RecordedEvent {
        var s = chsm_evlog_slot()
        s.fd = number
        s.pid = pid
        s.mask = mask
        s.has_range = range == nil ? 0 : 1
        s.offset = UInt64(range?.offset ?? 0)
        s.count = UInt64(range?.count ?? 0)
        s.has_handle = 1
        s.handle = handle.raw
        s.dev = device
        s.ino = inode
        let slot = chsm_evlog_add(base, &s)
        return RecordedEvent(slot: slot, number: number, pid: pid, mask: mask, range: range, handle: handle, device: device, inode: inode)
    }

    /// Test-only (HSMD_TEST_DIE_AFTER_READ_FILE): the process kills itself after a read
    /// that delivered a permission event, before it records any of them, while `path`
    /// exists. The string is kept for the life of the process.
    public static func testDieAfterRead(whilePresent path: String) {
        chsm_evlog_test_die_after_read(strdup(path))
    }

    /// The events of the last read still in the buffer, recorded in a slot or not.
    public func lastBatch() -> [FanotifyEvent] {
        let capacity = rawBytes / 24
        let out = UnsafeMutableBufferPointer<chsm_event>.allocate(capacity: capacity)
        defer { out.deallocate() }
        let n = Int(chsm_evlog_last_batch(base, out.baseAddress, Int32(capacity)))
        return (0..<n).map { FanotifyEvent(out[$0]) }
    }
}
