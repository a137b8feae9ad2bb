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
