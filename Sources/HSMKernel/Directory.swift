import Glibc

public enum Directory {
    /// Entry names of a directory, without "." and "..".
    public static func entries(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError(errno: errno, operation: "opendir", path: path) }
        defer { closedir(dir) }
        var names: [String] = []
        // readdir answers NULL both at the end and on an error (EIO, ENOENT of a removed
        // directory): only errno tells them apart.
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw SystemError(errno: errno, operation: "readdir", path: path) }
                break
            }
            let name = withUnsafePointer(to: &ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
