import CHSMKernel
import Glibc

public enum Filesystem {
    /// statfs magic numbers of the filesystems that support pre-content events.
    public static let supportedTypes: [Int64: String] = [
        0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs",
    ]

    /// statfs magic numbers of filesystems whose contents vanish at unmount or reboot.
    public static let volatileTypes: [Int64: String] = [0x01021994: "tmpfs", 0x858458F6: "ramfs"]

    /// The statfs magic number of the filesystem holding `path`.
    public static func typeMagic(of path: String) throws(SystemError) -> Int64 {
        try SystemError.check(chsm_fs_type(path), "statfs", path)
    }

    public static func typeName(of path: String) throws(SystemError) -> String? {
        let t = try SystemError.check(chsm_fs_type(path), "statfs", path)
        return supportedTypes[t]
    }

    /// A directory fd on the root of a private clone of the mount `path` is on: a detached
    /// mount (open_tree) that no other process reaches by a path, with the mount's
    /// read-write state, alive while the fd is open. hsmd opens files by handle through it.
    public static func privateMount(of path: String) throws(SystemError) -> FileDescriptor {
        let fd = chsm_private_mount(path)
        return FileDescriptor(rawValue: try SystemError.check(fd, "open_tree(OPEN_TREE_CLONE)", path), path: path)
    }

    /// True when `path` is the root of a mounted filesystem (its parent is on another
    /// device, or it is the same inode as its parent: "/").
    public static func isMountPoint(_ path: String) throws(SystemError) -> Bool {
        let st = try FileStat.of(path: path, followLinks: true)
        let parent = try FileStat.of(path: path == "/" ? "/" : path + "/..", followLinks: true)
        return st.device != parent.device || st.inode == parent.inode
    }

    /// `path` with every symlink, `.` and `..` resolved (realpath(3)).
    public static func realPath(_ path: String) throws(SystemError) -> String {
        guard let p = Glibc.realpath(path, nil) else { throw SystemError(errno: errno, operation: "realpath", path: path) }
        defer { free(p) }
        return String(cString: p)
    }
}

extension Filesystem {
    /// statvfs counts of the filesystem holding the open file `fd`: fragment size, blocks,
    /// free blocks, and blocks available to unprivileged writers.
    public static func space(fd: Int32, path: String) throws(SystemError) -> (fragmentSize: UInt64, blocks: UInt64, free: UInt64, available: UInt64) {
        var s = statvfs()
        guard fstatvfs(fd, &s) == 0 else { throw SystemError(errno: errno, operation: "fstatvfs", path: path) }
        return (UInt64(s.f_frsize), UInt64(s.f_blocks), UInt64(s.f_bfree), UInt64(s.f_bavail))
    }
}
