import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// A permission event on its way through the recall engine. Exactly one answer is sent:
/// by the worker that recalls its range, or by the timeout sweep, whichever comes first;
/// the event's fd closes only after that answer, under the same lock, so an answer can
/// never go out through a number the kernel has since given to another event.
final class PendingEvent: Sendable {
    /// The file: the event fd itself (read-only: recall opens the inode for writing by
    /// handle, see `RecallEngine.writableFile`), or for an event a predecessor read, the
    /// file opened read-write by its handle.
    let file: Int32
    private let ownsFile: Bool
    /// `file` is open for writing (a predecessor's event, opened by handle).
    var fileIsWritable: Bool { ownsFile }
    let pid: Int32
    /// The kernel's range record (count 0: to the end of the file); nil: the whole file.
    let range: AccessRange?
    /// What the event turned out to be, once the blocked process was looked at
    /// (RecallEngine.nature(of:…)); looked at once per event at most.
    let nature: Mutex<EventNature?>
    /// A FAN_OPEN_PERM event rather than an access.
    let atOpen: Bool
    /// For an open: the opening program's name when it is one of full_recall_programs
    /// (RecallEngine.fullRecallOpener), read once where the event was read; nil otherwise.
    let opener: String?
    /// The file is at most one recall block long: an open recalls all of it, so that its
    /// reads raise no second event (the block would come back whole at the first read).
    let fitsOneBlock: Bool
    let filesystem: ManagedFilesystem
    /// The file's handle as the event log recorded it when the event was read (nil: not
    /// recorded): recall opens the inode for writing by it without asking again.
    let handle: InodeHandle?
    let received: UInt64
    private let event: Mutex<PermissionEvent?>

    /// An event read by this process, with its (read-only) event fd.
    convenience init(_ event: consuming PermissionEvent, range: AccessRange?, atOpen: Bool, opener: String? = nil, fitsOneBlock: Bool = false,
                     filesystem: ManagedFilesystem, handle: InodeHandle? = nil, nature: EventNature? = nil) {
        let fd = event.number
        self.init(event, file: fd, ownsFile: false, range: range, atOpen: atOpen, opener: opener, fitsOneBlock: fitsOneBlock,
                  filesystem: filesystem, handle: handle, nature: nature)
    }

    /// An event a dead predecessor read: answered by its old number, recalled through
    /// `file` (opened by handle; closed with the event).
    convenience init(inherited event: consuming PermissionEvent, file: FileDescriptor, range: AccessRange?, atOpen: Bool, opener: String? = nil,
                     filesystem: ManagedFilesystem, nature: EventNature? = nil) {
        self.init(event, file: file.rawValue, ownsFile: true, range: range, atOpen: atOpen, opener: opener, fitsOneBlock: false,
                  filesystem: filesystem, handle: nil, nature: nature)
    }

    private init(_ event: consuming PermissionEvent, file: Int32, ownsFile: Bool, range: AccessRange?, atOpen: Bool, opener: String?,
                 fitsOneBlock: Bool, filesystem: ManagedFilesystem, handle: InodeHandle?, nature: EventNature?) {
        self.file = file
        self.ownsFile = ownsFile
        pid = event.pid
        self.range = range
        self.nature = Mutex(nature)
        self.atOpen = atOpen
        self.opener = opener
        self.fitsOneBlock = fitsOneBlock
        self.filesystem = filesystem
        self.handle = handle
        received = monotonicNanos()
        self.event = Mutex(event)
    }

    var isAnswered: Bool { event.withLock { $0?.isAnswered ?? true } }

    /// Sends the answer unless one was sent already; true when this call sent it.
    /// `onSent` runs under the lock, while the fd is still open (for a log line).
    @discardableResult
    func answer(_ response: FanotifyResponse, onSent: ((Result<FanotifyResponse, SystemError>) -> Void)? = nil) -> Bool {
        event.withLock { (slot: inout PermissionEvent?) -> Bool in
            guard var e = slot.take() else { return false }
            let sent = e.respond(response)
            slot = .some(consume e)
            guard let sent else { return false }
            onSent?(sent)
            return true
        }
    }

    /// The worker is done with the event: deny it if nothing answered it yet (never a
    /// silent allow), then close its fd. Returns true when it had to be denied here.
    @discardableResult
    func finish() -> Bool {
        event.withLock { (slot: inout PermissionEvent?) -> Bool in
            guard let e = slot.take() else { return false }
            let unanswered = !e.isAnswered
            _ = consume e   // deinit: EIO if unanswered, then close
            if ownsFile { close(file) }
            return unanswered
        }
    }
}
