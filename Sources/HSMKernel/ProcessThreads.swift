import CHSMKernel
import Glibc

/// This architecture's numbers of the syscalls whose pre-access events hsmd tells apart.
public struct SyscallNumbers: Sendable, Equatable {
    public var fallocate: Int
    public var ftruncate: Int
    public var truncate: Int
    public var ioctl: Int
    public var ioUringEnter: Int
    /// Can reflink holes into the file (btrfs, xfs).
    public var copyFileRange: Int
    /// MADV_REMOVE punches holes.
    public var madvise: Int

    public init(fallocate: Int, ftruncate: Int, truncate: Int, ioctl: Int, ioUringEnter: Int,
                copyFileRange: Int = -1, madvise: Int = -1) {
        self.copyFileRange = copyFileRange
        self.madvise = madvise
        self.fallocate = fallocate
        self.ftruncate = ftruncate
        self.truncate = truncate
        self.ioctl = ioctl
        self.ioUringEnter = ioUringEnter
    }

    public static let native: SyscallNumbers = {
        var n = chsm_syscall_numbers()
        chsm_syscall_numbers(&n)
        return SyscallNumbers(fallocate: Int(n.fallocate), ftruncate: Int(n.ftruncate), truncate: Int(n.truncate),
                              ioctl: Int(n.ioctl), ioUringEnter: Int(n.io_uring_enter),
                              copyFileRange: Int(n.copy_file_range), madvise: Int(n.madvise))
    }()
}

/// What the threads of a process blocked on a pre-access event are doing, as
/// /proc/PID/task/TID/syscall shows it ("NR ARG1 … ARG6 SP PC", "-1 SP PC" or "running").
/// Reading it needs ptrace access to the process (CAP_SYS_PTRACE for other users' and for
/// more privileged processes; docs/KERNEL-FACTS.md). It touches no managed filesystem.
public enum ProcessThreads {
    /// The kernel's name for a process (/proc/PID/comm, at most 15 bytes); "" when it
    /// cannot be read (the process is gone).
    public static func programName(pid: Int32) -> String {
        guard pid > 0 else { return "" }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer -> String in
            let n = chsm_process_comm(pid, buffer.baseAddress, buffer.count)
            guard n > 0 else { return "" }
            var bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<Int(n)])[...]
            // Trimmed like the names in full_recall_programs are compared: ASCII blanks.
            let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
            while let last = bytes.last, blank(last) { bytes = bytes.dropLast() }
            while let first = bytes.first, blank(first) { bytes = bytes.dropFirst() }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// One line per thread, nil for a thread whose line could not be read; nil for all
    /// when the thread list cannot be read or has more than `limit` threads.
    public static func syscallLines(pid: Int32, limit: Int) -> [String?]? {
        guard pid > 0 else { return nil }
        // One C call for the whole process, into an uninitialized buffer: this runs for
        // many pre-access events, on the event thread. Big enough for a few dozen threads;
        // more take a second, larger try.
        for size in [8192, 160 * min(max(limit, 1), 4096) + 256] {
            let lines = withUnsafeTemporaryAllocation(of: CChar.self, capacity: size) { buffer -> [String?]? in
                let n = chsm_thread_syscalls(pid, buffer.baseAddress, buffer.count, Int32(clamping: limit))
                guard n > 0 else { return n == -Int(E2BIG) ? [] : nil }
                return UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<Int(n)])
                    .split(separator: UInt8(ascii: "\n"))
                    .map { $0.count == 1 && $0.first == UInt8(ascii: "?") ? nil : String(decoding: $0, as: UTF8.self) }
            }
            if let lines, lines.isEmpty { continue }  // E2BIG: a larger buffer, or too many threads
            return lines
        }
        return nil
    }
}

/// How a syscall names the file range it accesses (chsm_processes.h), for telling which
/// event a thread stopped in it raised.
public enum SyscallAccessKind: Int32, Sendable {
    case other = 0
    /// read, write: fd argument 0, count argument 2, at the fd's position.
    case atPosition = 1
    /// readv, writev: fd argument 0, at the fd's position; the count is in user memory.
    case vectorAtPosition = 2
    /// pread64, pwrite64: fd argument 0, count argument 2, offset argument 3.
    case atOffset = 3
    /// preadv, pwritev: fd argument 0, offset argument 3.
    case vectorAtOffset = 4
    /// preadv2, pwritev2: as preadv, an offset of -1 meaning the fd's position.
    case vectorAtOffsetOrPosition = 5
    /// mmap: length argument 1, fd argument 4, offset argument 5.
    case mmap = 6
    /// open, openat, openat2, creat, execve, execveat: waits on an open-permission event.
    case open = 7

    /// This architecture's syscall `number`.
    public init(number: Int) {
        self = SyscallAccessKind(rawValue: chsm_syscall_access_kind(number)) ?? .other
    }
}

/// A thread as a successor hsmd sees it (ProcessThreads.waitingThreads).
public struct ThreadWait: Sendable, Equatable {
    public let tid: Int32
    /// /proc/PID/task/TID/wchan: the kernel function the thread sleeps in, "0" when it does
    /// not sleep, "?" when it cannot be read.
    public let wchan: String
    /// Its syscall line, nil when it could not be read.
    public let syscallLine: String?

    public init(tid: Int32, wchan: String, syscallLine: String?) {
        self.tid = tid
        self.wchan = wchan
        self.syscallLine = syscallLine
    }

    /// Asleep waiting for a fanotify permission answer: the wait is in fanotify's event
    /// handler (docs/KERNEL-FACTS.md), of this group or another.
    public var waitsOnFanotify: Bool { wchan.hasPrefix("fanotify_") }
}

extension ProcessThreads {
    /// Every thread of `pid` with where it sleeps and its syscall line; nil when the list
    /// cannot be read or has more than `limit` threads. For a successor's start, not for
    /// the event thread: it opens two files per thread.
    public static func waitingThreads(pid: Int32, limit: Int) -> [ThreadWait]? {
        guard pid > 0 else { return nil }
        let size = 300 * min(max(limit, 1), 4096) + 256
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: size) { buffer -> [ThreadWait]? in
            let n = chsm_waiting_threads(pid, buffer.baseAddress, buffer.count, Int32(clamping: limit))
            guard n > 0 else { return nil }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<Int(n)]), as: UTF8.self)
            var out: [ThreadWait] = []
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3, let tid = Int32(parts[0]) else { return nil }
                out.append(ThreadWait(tid: tid, wchan: String(parts[1]), syscallLine: parts[2] == "?" ? nil : String(parts[2])))
            }
            return out
        }
    }

    /// The file `pid` has open as `fd`, opened O_PATH through /proc/PID/fd/FD: no event,
    /// no access to its data; good for statx and name_to_handle_at.
    public static func openFile(pid: Int32, fd: Int32) throws(SystemError) -> FileDescriptor {
        let path = "/proc/\(pid)/fd/\(fd)"
        return FileDescriptor(rawValue: try SystemError.check(chsm_process_fd_open(pid, fd), "open(O_PATH)", path), path: path)
    }

    /// The file position of `pid`'s `fd`, nil when it cannot be read.
    public static func filePosition(pid: Int32, fd: Int32) -> Int64? {
        var pos: Int64 = 0
        return chsm_process_fd_position(pid, fd, &pos) == 0 ? pos : nil
    }
}
