import HSMKernel

/// What a thread stopped on a fanotify permission event is accessing, as /proc shows it.
public enum StoppedAccess: Sendable, Equatable {
    /// In an open or an exec: it waits on an open-permission event, which has no range.
    case opening
    /// `count` bytes (nil: not known, a vector I/O) of `file` from byte `start`.
    case range(file: InodeKey, start: UInt64, count: UInt64?)
    /// Anything else: another syscall, none, a line or a file that cannot be read.
    case unknown
}

/// Which file a pre-access event is for when the hsmd that read it was killed before it
/// recorded the file (docs/ARCHITECTURE.md, "Restart without harm"). The event then says
/// only the process, the page-rounded range and a number; the process's threads say the
/// rest: a thread stopped in `read(fd, buf, count)` at the fd's position raises exactly
/// [round_down(position), round_up(position + count)) of that fd's file
/// (docs/KERNEL-FACTS.md, "Ranges by operation").
///
/// A wrong answer would let a program read holes as data, so the rules refuse whenever
/// anything is in doubt, and a refused event is denied with EIO as before:
/// - every thread of the process that waits on a fanotify answer must show what it
///   accesses (or be in an open), since the event's own thread is one of them;
/// - exactly one file must be accessed at exactly the event's range.
public enum UnrecordedEventMatch {
    /// What a thread's syscall line asks for, before its fd is resolved.
    public enum Request: Sendable, Equatable {
        case opening
        /// `fd` from `start` (nil: the fd's position), `count` bytes (nil: not known).
        case file(fd: Int32, start: UInt64?, count: UInt64?)
        case unknown
    }

    public enum Outcome: Sendable, Equatable {
        /// The event is for `file`; `thread` is the index of a thread that shows it.
        case file(InodeKey, thread: Int)
        /// Why not.
        case unidentified(String)
    }

    /// What the syscall a thread is stopped in names.
    public static func request(of state: ThreadState) -> Request {
        guard case .syscall(let number, let args, let pc) = state, pc != 0, args.count == 6 else { return .unknown }
        func fd(_ i: Int) -> Int32? { args[i] <= UInt64(Int32.max) ? Int32(args[i]) : nil }
        let kind = SyscallAccessKind(number: number)
        let fdArg = kind == .mmap ? 4 : 0
        if kind == .open { return .opening }
        if kind == .other { return .unknown }
        guard let n = fd(fdArg) else { return .unknown }
        switch kind {
        case .atPosition: return .file(fd: n, start: nil, count: args[2])
        case .vectorAtPosition: return .file(fd: n, start: nil, count: nil)
        case .atOffset: return .file(fd: n, start: args[3], count: args[2])
        case .vectorAtOffset: return .file(fd: n, start: args[3], count: nil)
        case .vectorAtOffsetOrPosition: return .file(fd: n, start: args[3] == UInt64.max ? nil : args[3], count: nil)
        case .mmap: return .file(fd: n, start: args[5], count: args[1])
        case .open, .other: return .unknown
        }
    }

    /// The file of an event with `range`, from `threads`: what each thread of the process
    /// that waits on a fanotify answer is accessing.
    public static func match(range: AccessRange?, threads: [StoppedAccess], pageSize: UInt64 = 4096) -> Outcome {
        guard let range else { return .unidentified("an open, whose thread does not show the file yet") }
        guard range.count > 0 else { return .unidentified("its range runs to the end of the file (a truncation or a clone)") }
        if threads.contains(.unknown) {
            return .unidentified("a thread of the process waits in an operation hsmd cannot see the file of")
        }
        var found: (key: InodeKey, thread: Int)?
        for (i, t) in threads.enumerated() {
            guard case .range(let key, let start, let count) = t, raises(range, start: start, count: count, pageSize: pageSize) else { continue }
            if let f = found, f.key != key {
                return .unidentified("threads of the process access that range of more than one file")
            }
            if found == nil { found = (key, i) }
        }
        guard let found else { return .unidentified("no waiting thread of the process accesses that range") }
        return .file(found.key, thread: found.thread)
    }

    /// True when an access of `count` bytes (nil: unknown) from `start` raises `range`.
    static func raises(_ range: AccessRange, start: UInt64, count: UInt64?, pageSize: UInt64) -> Bool {
        let mask = pageSize - 1
        guard UInt64(range.offset) == start & ~mask else { return false }
        let (eventEnd, o1) = UInt64(range.offset).addingReportingOverflow(UInt64(range.count))
        guard !o1 else { return false }
        guard let count else { return eventEnd > start }
        let (end, o2) = start.addingReportingOverflow(count)
        let (rounded, o3) = end.addingReportingOverflow(mask)
        return count > 0 && !o2 && !o3 && rounded & ~mask == eventEnd
    }
}
