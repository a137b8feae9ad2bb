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

    /// True when `path` is the root of a mounted filesystem (its parent is on another
    /// device, or it is the same inode as its parent: "/").
    public static func isMountPoint(_ path: String) throws(SystemError) -> Bool {
        let st = try FileStat.of(path: path, followLinks: true)
        let parent = try FileStat.of(path: path == "/" ? "/" : path + "/..", followLinks: true)
        return st.device != parent.device || st.inode == parent.inode
    }
}
