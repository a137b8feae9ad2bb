#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root. Never marks anything but its own
# loop filesystem. What a pre-content group sees when a file of a marked filesystem is opened
# through an overlayfs lower layer, a read-only bind mount and a second mount of the same
# device, with event fds opened read-write and read-only; and whether hsmd's own I/O through
# a detached clone of the mount (open_tree) under a mount ignore mark raises events.
import ctypes, errno, os, struct, subprocess, tempfile, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
libc.syscall.restype = ctypes.c_long
FAN_CLASS_PRE_CONTENT, FAN_REPORT_FD_ERROR, FAN_CLOEXEC = 0x8, 0x2000, 0x1
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
FAN_MARK_IGNORE, FAN_MARK_IGNORED_SURV_MODIFY = 0x400, 0x40
FAN_OPEN_PERM, FAN_PRE_ACCESS = 0x10000, 0x100000
SYS_open_tree, OPEN_TREE_CLONE = 428, 1

base = tempfile.mkdtemp(prefix="probe-ro-")
img, mnt, tmp = base + "/img", base + "/mnt", base + "/tmp"
for d in (mnt, tmp):
    os.mkdir(d)
mounts = []
fds = []


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def mount(*args):
    sh("mount", *args)
    mounts.append(args[-1])


def fdinfo(fd):
    st = os.fstat(fd)
    flags = ctypes.CDLL(None).fcntl(fd, 3)  # F_GETFL
    mnt_id = next(l.split()[1] for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("mnt_id"))
    mode = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}[flags & 3]
    return f"fd {mode} dev {os.major(st.st_dev)}:{os.minor(st.st_dev)} ino {st.st_ino} mnt_id {mnt_id} path {os.readlink(f'/proc/self/fd/{fd}')}"


class Listener:
    def __init__(self, event_f_flags):
        self.g = libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_REPORT_FD_ERROR | FAN_CLOEXEC, event_f_flags)
        assert self.g >= 0, os.strerror(ctypes.get_errno())
        r = libc.fanotify_mark(self.g, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_PERM | FAN_PRE_ACCESS, -100, mnt.encode())
        assert r == 0, os.strerror(ctypes.get_errno())
        self.seen = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                buf = os.read(self.g, 65536)
            except OSError:
                return
            off = 0
            while off + 24 <= len(buf):
                ln, _, _, _, mask, fd, pid = struct.unpack_from("IBBHQii", buf, off)
                off += ln
                kind = "OPEN_PERM" if mask & FAN_OPEN_PERM else "PRE_ACCESS" if mask & FAN_PRE_ACCESS else hex(mask)
                if fd < 0:
                    self.seen.append(f"{kind}: no fd, {errno.errorcode.get(-fd, fd)}")
                    continue
                self.seen.append(f"{kind}: {fdinfo(fd)}{' (own pid)' if pid == os.getpid() else ''}")
                try:
                    os.write(self.g, struct.pack("iI", fd, 0x1))
                except OSError:
                    pass
                os.close(fd)

    def close(self):
        # Wakes the reader with one more event (an open, which raises nothing else), so that it stops before the group closes
        # (a read in flight could otherwise answer through a reused number).
        self.stop = True
        os.close(os.open(mnt + "/lower/f", os.O_RDONLY))  # one FAN_OPEN_PERM, no access
        self.t.join()
        os.close(self.g)

    def take(self):
        s, self.seen = self.seen, []
        return s


def reader(path):
    r = sh("dd", f"if={path}", "of=/dev/null", "bs=4096", "count=1", "status=none", check=False)
    return "read ok" if r.returncode == 0 else "read failed: " + r.stderr.strip()


def handle_of(path):
    h = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("Ii", h, 0, 128, 0)
    mid = ctypes.c_int()
    assert libc.name_to_handle_at(-100, path.encode(), h, ctypes.byref(mid), 0) == 0
    return h


try:
    sh("truncate", "-s", "64M", img)
    sh("mkfs.ext4", "-q", img)
    mount("-o", "loop", img, mnt)
    dev = sh("findmnt", "-n", "-o", "SOURCE", mnt).stdout.strip()
    os.makedirs(mnt + "/lower")
    with open(mnt + "/lower/f", "wb") as f:
        f.write(b"x" * 8192)
    st = os.stat(mnt + "/lower/f")
    print(f"the file: dev {os.major(st.st_dev)}:{os.minor(st.st_dev)} ino {st.st_ino}")
    mount("-t", "tmpfs", "tmpfs", tmp)
    for d in ("upper", "work", "ovl"):
        os.mkdir(f"{tmp}/{d}")
    mount("-t", "overlay", "overlay", "-o", f"lowerdir={mnt}/lower,upperdir={tmp}/upper,workdir={tmp}/work", tmp + "/ovl")
    os.mkdir(base + "/robind")
    mount("--bind", mnt, base + "/robind")
    sh("mount", "-o", "remount,bind,ro", base + "/robind")
    os.mkdir(base + "/second")
    second = sh("mount", "-o", "ro", dev, base + "/second", check=False)
    print("mount -o ro of the same device a second time:", "ok" if second.returncode == 0 else second.stderr.strip())
    if second.returncode == 0:
        mounts.append(base + "/second")
        print("  first mount then:", sh("findmnt", "-n", "-o", "OPTIONS", mnt).stdout.strip().split(",")[0])
    else:
        mount(dev, base + "/second")
        sh("mount", "-o", "remount,bind,ro", base + "/second")
        print("  second mount made ro with remount,bind,ro instead")

    for flags, name in ((os.O_RDWR, "O_RDWR"), (os.O_RDONLY, "O_RDONLY")):
        L = Listener(flags | os.O_CLOEXEC | os.O_LARGEFILE)
        print(f"\n== event_f_flags {name}")
        for label, path in (("host mount", mnt + "/lower/f"), ("overlay lower", tmp + "/ovl/f"),
                            ("ro bind mount", base + "/robind/lower/f"), ("second mount ro", base + "/second/lower/f")):
            print(f"{label}: {reader(path)}")
            for s in L.take():
                print("   ", s)
        L.close()

    # Copy-up: does it read the lower file with pre-access events?
    L = Listener(os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
    r = sh("sh", "-c", f"echo y >> {tmp}/ovl/f", check=False)
    print("\n== copy-up (append through the overlay):", "ok" if r.returncode == 0 else r.stderr.strip())
    for s in L.take():
        print("   ", s)
    print("    upper copy size", os.stat(tmp + "/upper/f").st_size)

    # hsmd's own I/O by handle: through the mount everyone uses vs a detached clone with a
    # mount ignore mark.
    root = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    clone = libc.syscall(SYS_open_tree, -100, mnt.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC)
    print("\n== open_tree(OPEN_TREE_CLONE):", clone if clone >= 0 else os.strerror(ctypes.get_errno()))
    fds += [root, clone]
    # open_by_handle_at takes no O_PATH fd (EBADF): a directory opened on the clone.
    clone_dir = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=clone)
    fds.append(clone_dir)
    r = libc.fanotify_mark(L.g, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY,
                           FAN_OPEN_PERM | FAN_PRE_ACCESS, clone, b".")
    print("mount ignore mark on the clone:", "ok" if r == 0 else os.strerror(ctypes.get_errno()))
    h = handle_of(mnt + "/lower/f")
    for label, mfd in (("by handle on the mount's root fd", root), ("by handle on the ignored clone", clone_dir)):
        fd = libc.open_by_handle_at(mfd, h, os.O_RDWR)
        assert fd >= 0, os.strerror(ctypes.get_errno())
        os.pwrite(fd, b"z", 0)
        print(f"{label}: {fdinfo(fd)}")
        os.close(fd)
        import time; time.sleep(0.2)
        for s in L.take():
            print("   ", s)
    print("a reader through the mount with the clone ignored:", reader(mnt + "/lower/f"))
    for s in L.take():
        print("   ", s)
finally:
    for fd in fds:
        os.close(fd)
    for m in reversed(mounts):
        sh("umount", m, check=False)
    sh("rm", "-rf", base, check=False)
