import CHSMKernel
import Glibc

/// Making files and directories relative to an open directory, never following a
/// symlink, for hsmctl import: a name from a store's record must not lead anywhere else.
extension FileDescriptor {
    /// The subdirectory `name` of this directory (not a symlink to one).
    public func openDirectory(_ name: String) throws(SystemError) -> FileDescriptor {
        let p = Self.join(path, name)
        let fd = try SystemError.check(chsm_open_dir_at(rawValue, name), "open directory", p)
        return FileDescriptor(rawValue: fd, path: p)
    }

    /// Makes the subdirectory `name`; false when something of that name exists already.
    @discardableResult
    public func makeDirectory(_ name: String, mode: UInt32) throws(SystemError) -> Bool {
        let r = chsm_mkdir_at(rawValue, name, mode)
        if r == -EEXIST { return false }
        try SystemError.check(r, "mkdir", Self.join(path, name))
        return true
    }

    /// Whether this directory has an entry `name` (of any type, symlinks included).
    public func hasEntry(_ name: String) throws(SystemError) -> Bool {
        try SystemError.check(chsm_exists_at(rawValue, name), "stat", Self.join(path, name)) == 1
    }

    /// A new unnamed regular file on this directory's filesystem (O_TMPFILE), to be named
    /// with `link(_:as:)` once complete; closed unnamed, it vanishes.
    public func makeUnnamedFile(mode: UInt32) throws(SystemError) -> FileDescriptor {
        let fd = try SystemError.check(chsm_open_tmpfile(rawValue, mode), "open O_TMPFILE", path)
        return FileDescriptor(rawValue: fd, path: path + "/(unnamed)")
    }

    /// Names the unnamed file `file` `name` in this directory; EEXIST if the name is taken
    /// (nothing is ever replaced).
    public func link(_ file: FileDescriptor, as name: String) throws(SystemError) {
        try SystemError.check(chsm_link_tmpfile(file.rawValue, rawValue, name), "link", Self.join(path, name))
    }

    public func setOwner(uid: UInt32, gid: UInt32) throws(SystemError) {
        try SystemError.check(chsm_fchown(rawValue, uid, gid), "fchown", path)
    }

    public func setMode(_ mode: UInt32) throws(SystemError) {
        try SystemError.check(chsm_fchmod(rawValue, mode), "fchmod", path)
    }

    public func setTimes(accessNs: Int64, modificationNs: Int64) throws(SystemError) {
        try SystemError.check(chsm_set_times(rawValue, accessNs, modificationNs), "futimens", path)
    }

    private static func join(_ dir: String, _ name: String) -> String { dir.hasSuffix("/") ? dir + name : dir + "/" + name }
}
