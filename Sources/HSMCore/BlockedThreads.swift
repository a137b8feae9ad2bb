import HSMKernel

/// What one thread of a process is doing, from its /proc/PID/task/TID/syscall line.
public enum ThreadState: Sendable, Equatable {
    /// Running: not waiting for a pre-access answer.
    case running
    /// Not in a syscall ("-1 SP PC"), e.g. in a page fault.
    case noSyscall(pc: UInt64)
    /// In syscall `number` with its six arguments.
    case syscall(number: Int, args: [UInt64], pc: UInt64)
    /// The line could not be read (no ptrace access) or parsed.
    case unknown

    public init(line: String?) {
        guard var line else { self = .unknown; return }
        self = line.withUTF8 { ThreadState(bytes: $0) }
    }

    /// A byte scan, not split/map: this runs for many pre-access events.
    public init(bytes: UnsafeBufferPointer<UInt8>) {
        let running = Array("running".utf8)
        if bytes.count >= running.count && zip(bytes, running).allSatisfy({ $0 == $1 }) { self = .running; return }
        var fields = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var count = 0, negative = false, value: UInt64 = 0, digits = 0, hex = false
        var i = 0
        while i <= bytes.count {
            let c = i < bytes.count ? bytes[i] : UInt8(ascii: " ")
            i += 1
            if c == UInt8(ascii: " ") || c == UInt8(ascii: "\n") {
                guard digits > 0 else { continue }
                // The number is decimal; the arguments, stack and instruction pointers hex.
                guard count == 0 || hex, count < 9 else { self = .unknown; return }
                withUnsafeMutableBytes(of: &fields) { $0.storeBytes(of: value, toByteOffset: count * 8, as: UInt64.self) }
                count += 1
                value = 0; digits = 0; hex = false
                continue
            }
            if c == UInt8(ascii: "-") && count == 0 && digits == 0 && !negative { negative = true; continue }
            if c == UInt8(ascii: "x") && count > 0 && digits == 1 && value == 0 && !hex { hex = true; digits = 0; continue }
            let d: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f") where hex: d = UInt64(c - UInt8(ascii: "a") + 10)
            default: self = .unknown; return
            }
            let (m, o1) = value.multipliedReportingOverflow(by: hex ? 16 : 10)
            let (a, o2) = m.addingReportingOverflow(d)
            guard !o1 && !o2 else { self = .unknown; return }
            value = a
            digits += 1
        }
        let f = withUnsafeBytes(of: fields) { Array($0.bindMemory(to: UInt64.self)) }
        if negative {
            guard count == 3, f[0] == 1 else { self = .unknown; return }
            self = .noSyscall(pc: f[2])
            return
        }
        guard count == 9, f[0] <= UInt64(Int.max) else { self = .unknown; return }
        self = .syscall(number: Int(f[0]), args: Array(f[1..<7]), pc: f[8])
    }
}

/// What a pre-access event is, as far as recall must care.
public struct EventNature: Sendable, Equatable {
    /// Which blocks it needs (AccessPlan).
    public var intent: AccessIntent
    /// It may shorten the file (ftruncate, truncate, collapse-range, or an operation that
    /// cannot be seen): once it is let go, no recall write may follow past its offset, or
    /// the write would extend the file again with old data.
    public var mayCut: Bool
    /// It may make holes in the file (truncate, fallocate, a clone, copy_file_range,
    /// madvise MADV_REMOVE, or an operation that cannot be seen). Only an event that cannot
    /// may leave a block partly recalled: a partly recalled block's holes are all data
    /// still to come back, and a hole the program made would be filled with old data.
    public var mayMakeHoles: Bool

    public init(intent: AccessIntent, mayCut: Bool, mayMakeHoles: Bool = true) {
        self.intent = intent
        self.mayCut = mayCut
        self.mayMakeHoles = mayMakeHoles
    }
}

/// Decides, from the states of every thread of the process that raised a pre-access
/// event, what the event can be. The event names the process, not the thread, so every
/// thread counts: a thread in an operation that would need more than the plain range
/// makes the whole process count as doing it. Whatever cannot be seen counts as the worst
/// case: an unreadable line, a thread with no user context (instruction pointer 0: an
/// io_uring worker or a kernel thread, whose operation /proc does not show), a thread in
/// io_uring_enter (its operations run elsewhere).
public enum BlockedThreads {
    /// fallocate modes that move no data: KEEP_SIZE, PUNCH_HOLE, NO_HIDE_STALE, ZERO_RANGE,
    /// UNSHARE_RANGE, WRITE_ZEROES. INSERT_RANGE (0x20), COLLAPSE_RANGE (0x08) and any mode
    /// bit this list does not know shift or may shift.
    public static let nonShiftingFallocateModes: UInt64 = 0x01 | 0x02 | 0x04 | 0x10 | 0x40 | 0x80
    /// INSERT_RANGE: shifts data up, never shortens the file.
    static let insertRange: UInt64 = 0x20

    /// The nature of an event with `range` raised by a process whose threads are in
    /// `states` (nil: they could not be listed). `canShift`: the filesystem supports
    /// INSERT_RANGE/COLLAPSE_RANGE (ext4, xfs; btrfs refuses them, after the event).
    public static func classify(_ range: AccessRange?, states: [ThreadState]?, canShift: Bool,
                                numbers: SyscallNumbers = .native) -> EventNature {
        let conservative = AccessPlan.conservativeIntent(range, canShift: canShift)
        guard let states, !states.isEmpty else { return EventNature(intent: conservative, mayCut: true) }
        var unseen = false, truncating = false, cloning = false, shifting = false, collapsing = false, holing = false
        for state in states {
            switch state {
            case .running, .noSyscall: continue
            case .unknown: unseen = true
            case .syscall(let number, let args, let pc):
                if pc == 0 || number == numbers.ioUringEnter { unseen = true; continue }
                switch number {
                case numbers.ftruncate, numbers.truncate: truncating = true
                case numbers.ioctl: cloning = true  // FICLONE, FICLONERANGE, FIDEDUPERANGE
                case numbers.copyFileRange, numbers.madvise: holing = true
                case numbers.fallocate:
                    holing = true
                    let mode = args[1]
                    if mode & ~nonShiftingFallocateModes != 0 {
                        shifting = true
                        if mode & ~(nonShiftingFallocateModes | insertRange) != 0 { collapsing = true }
                    }
                default: continue
                }
            }
        }
        let mayCut = truncating || collapsing || unseen
        let mayMakeHoles = holing || truncating || cloning || unseen
        if (range ?? .wholeFile).toEndOfFile {
            // Count 0: a clone to the end of the file (recall it all) or a truncation.
            return EventNature(intent: truncating && !cloning && !unseen ? .truncation : .event, mayCut: mayCut, mayMakeHoles: mayMakeHoles)
        }
        if !canShift { return EventNature(intent: .event, mayCut: mayCut, mayMakeHoles: mayMakeHoles) }
        return EventNature(intent: shifting || unseen ? .shiftingEvent : .event, mayCut: mayCut, mayMakeHoles: mayMakeHoles)
    }
}
