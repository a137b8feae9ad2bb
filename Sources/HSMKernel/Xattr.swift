import CHSMKernel
import Glibc

extension FileDescriptor {
    /// The value of xattr `name`, or nil when the file has none.
    public func xattr(_ name: String) throws(SystemError) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chsm_fgetxattr(rawValue, name, &buf, buf.count)
            if n == -Int(ENODATA) { return nil }
            if n == -Int(ERANGE) {
                let size = chsm_fgetxattr(rawValue, name, nil, 0)
                try SystemError.check(size, "fgetxattr \(name)", path)
                buf = [UInt8](repeating: 0, count: Int(size) + 1)
                continue
            }
            try SystemError.check(n, "fgetxattr \(name)", path)
            return Array(buf[0..<Int(n)])
        }
    }

    /// Reads xattr `name` into `buffer` without allocating; the length, or nil when the
    /// file has none. For the event thread's hot path.
    public func xattr(_ name: String, into buffer: inout [UInt8]) throws(SystemError) -> Int? {
        let n = chsm_fgetxattr(rawValue, name, &buffer, buffer.count)
        if n == -Int(ENODATA) { return nil }
        return Int(try SystemError.check(n, "fgetxattr \(name)", path))
    }

    public func setXattr(_ name: String, _ value: [UInt8]) throws(SystemError) {
        try SystemError.check(chsm_fsetxattr(rawValue, name, value, value.count), "fsetxattr \(name)", path)
    }

    public func removeXattr(_ name: String) throws(SystemError) {
        let r = chsm_fremovexattr(rawValue, name)
        if r == -ENODATA { return }
        try SystemError.check(r, "fremovexattr \(name)", path)
    }

    public func xattrNames() throws(SystemError) -> [String] {
        let size = chsm_flistxattr(rawValue, nil, 0)
        try SystemError.check(size, "flistxattr", path)
        if size == 0 { return [] }
        var buf = [CChar](repeating: 0, count: Int(size) + 256)
        let n = chsm_flistxattr(rawValue, &buf, buf.count)
        try SystemError.check(n, "flistxattr", path)
        return buf[0..<Int(n)].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    }
}

public enum Xattr {
    /// lgetxattr: reads without opening the file (no lease break, no access event).
    public static func get(path: String, _ name: String) throws(SystemError) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = chsm_lgetxattr(path, name, &buf, buf.count)
        if n == -Int(ENODATA) { return nil }
        try SystemError.check(n, "lgetxattr \(name)", path)
        return Array(buf[0..<n])
    }
}
