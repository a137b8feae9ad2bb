import Glibc

/// What a write or a punch makes the kernel take from a file, kept to be put back:
/// the setuid/setgid bits (stripped unless the writer holds CAP_FSETID) and the
/// `security.capability` xattr (stripped always; putting it back needs CAP_SETFCAP).
/// docs/KERNEL-FACTS.md has the measurements.
public struct FilePrivileges: Sendable, Equatable {
    public static let capabilityXattr = "security.capability"
    /// Only S_ISUID and S_ISGID of the file's mode; 0 when it has neither.
    public var setIDBits: UInt32
    /// The raw `security.capability` value, nil when the file has none.
    public var capability: [UInt8]?

    public init(setIDBits: UInt32, capability: [UInt8]?) {
        self.setIDBits = setIDBits & UInt32(S_ISUID | S_ISGID)
        self.capability = capability
    }

    /// The privileges of the file open at `fd`, or nil when it has none to lose: the
    /// mode comes from a stat the caller already has, the capability costs one fgetxattr.
    public static func of(_ fd: FileDescriptor, mode: UInt32) throws(SystemError) -> FilePrivileges? {
        guard mode & UInt32(S_IFMT) == UInt32(S_IFREG) else { return nil }
        let bits = mode & UInt32(S_ISUID | S_ISGID)
        let capability = try fd.xattr(capabilityXattr)
        if bits == 0 && capability == nil { return nil }
        return FilePrivileges(setIDBits: bits, capability: capability)
    }

    /// Puts back what a write or punch took. Only the set-id bits are added to the mode
    /// the file has now (its other bits are not hsmd's to change); the capability is
    /// written whenever the file has one to keep, since every write strips it.
    public func restore(_ fd: FileDescriptor) throws(SystemError) {
        // Both are tried; the first failure is reported.
        var failure: SystemError?
        if let capability {
            do { try fd.setXattr(Self.capabilityXattr, capability) } catch { failure = error }
        }
        do {
            try restoreSetIDBits(fd)
        } catch {
            if failure == nil { failure = error }
        }
        if let failure { throw failure }
    }

    private func restoreSetIDBits(_ fd: FileDescriptor) throws(SystemError) {
        guard setIDBits != 0 else { return }
        let mode = try fd.stat().mode
        guard mode & setIDBits != setIDBits else { return }
        let wanted = (mode & 0o7777) | setIDBits
        if Glibc.fchmod(fd.rawValue, mode_t(wanted)) != 0 {
            throw SystemError(errno: errno, operation: "fchmod \(String(wanted, radix: 8))", path: fd.path)
        }
        // Without CAP_FSETID the kernel silently drops a setgid bit for a group the
        // caller is not in: say so rather than believe it.
        if try fd.stat().mode & setIDBits != setIDBits {
            throw SystemError(errno: EPERM, operation: "fchmod \(String(wanted, radix: 8)) (set-id bits refused: CAP_FSETID missing?)", path: fd.path)
        }
    }

    /// For log lines: what an operator would have to put back by hand.
    public var description: String {
        var parts: [String] = []
        if setIDBits != 0 { parts.append("set-id bits \(String(setIDBits, radix: 8))") }
        if let capability { parts.append("\(Self.capabilityXattr) 0x\(Self.hex(capability))") }
        return parts.joined(separator: ", ")
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef")
        return String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
    }
}

/// The capabilities this process holds, for a warning at start when keeping files'
/// privileges, or seeing what accessing processes do, is impossible.
public enum OwnCapabilities {
    public static let fsetid = 4
    public static let sysPtrace = 19
    public static let setfcap = 31

    /// The effective set (CapEff in /proc/self/status), nil when it cannot be read.
    public static func effective() -> UInt64? {
        guard let fd = try? FileDescriptor.open("/proc/self/status", [.readOnly]) else { return nil }
        defer { fd.close() }
        guard let bytes = try? fd.readAll(limit: 1 << 16) else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(String(line.dropFirst("CapEff:".count).filter { $0 != " " && $0 != "\t" }), radix: 16)
        }
        return nil
    }
}
