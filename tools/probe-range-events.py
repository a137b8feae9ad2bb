#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root. Never marks anything but its own
# loop filesystems, which it creates and removes.
#
# What FAN_PRE_ACCESS events (mask, range offset/count) does each way of touching a file
# raise, on ext4, xfs and btrfs? And can the listener tell a write or a shifting fallocate
# from a read: by the event, by its fd, or by the blocked thread's /proc/TID/syscall?
#
#   python3 tools/probe-range-events.py [--fs ext4,xfs,btrfs] [--cost]
#   python3 tools/probe-range-events.py --who    (threads, io_uring, other users, capabilities)
#
# Each line: fs, operation, its result, then every event it raised as
#   file:offset+count (count 0 printed as "+0=EOF"), and the actor's /proc syscall decoded.
import argparse, ctypes, errno, fcntl, mmap, os, signal, struct, subprocess, sys, tempfile, time

FAN_CLASS_PRE_CONTENT, FAN_CLOEXEC, FAN_REPORT_TID, FAN_REPORT_FD_ERROR = 0x8, 0x1, 0x100, 0x2000
FAN_MARK_ADD, FAN_MARK_FILESYSTEM, FAN_PRE_ACCESS, FAN_ALLOW = 0x1, 0x100, 0x00100000, 0x1
FAN_EVENT_INFO_TYPE_RANGE = 6
KEEP, PUNCH, COLLAPSE, ZERO, INSERT = 0x1, 0x2, 0x8, 0x10, 0x20
FICLONE, FICLONERANGE = 0x40049409, 0x4020940D
MiB = 1 << 20
SIZE = 8 * MiB

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
libc.ftruncate.argtypes = [ctypes.c_int, ctypes.c_int64]

# x86_64 and aarch64 numbers of the syscalls that can raise a pre-access event.
SYSCALLS = {
    "x86_64": {0: "read", 1: "write", 9: "mmap", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
               40: "sendfile", 76: "truncate", 77: "ftruncate", 2: "open", 257: "openat", 16: "ioctl",
               275: "splice", 285: "fallocate", 295: "preadv", 296: "pwritev", 326: "copy_file_range",
               327: "preadv2", 328: "pwritev2", 426: "io_uring_enter"},
    "aarch64": {63: "read", 64: "write", 222: "mmap", 67: "pread64", 68: "pwrite64", 65: "readv", 66: "writev",
                71: "sendfile", 45: "truncate", 46: "ftruncate", 56: "openat", 29: "ioctl", 76: "splice",
                47: "fallocate", 69: "preadv", 70: "pwritev", 285: "copy_file_range", 286: "preadv2",
                287: "pwritev2", 426: "io_uring_enter"},
}[os.uname().machine]


def decode_syscall(line):
    """'285 0x5 0x20 0x100000 ...' -> 'fallocate(fd=5, 0x20, 0x100000, ...)'"""
    parts = line.split()
    if not parts or not parts[0].lstrip("-").isdigit():
        return line.strip()
    nr = int(parts[0])
    if nr < 0:
        return line.strip()
    args = [int(a, 16) for a in parts[1:7]]
    name = SYSCALLS.get(nr, f"syscall{nr}")
    return f"{name}({', '.join(hex(a) for a in args[:4])})"


def thread_lines(pid):
    """'tid=line|tid=line' for every thread of pid: which of them is in which syscall."""
    out = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as e:
        return f"task list unreadable: {errno.errorcode[e.errno]}"
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                out.append(f"{tid}={f.read().strip()}")
        except OSError as e:
            out.append(f"{tid}=unreadable: {errno.errorcode[e.errno]}")
    return "|".join(out)


def drop_capabilities(keep):
    """capset(2): keep only the capability numbers in `keep` (effective and permitted)."""
    bits = sum(1 << c for c in keep)
    hdr = struct.pack("Ii", 0x20080522, 0)
    data = struct.pack("IIIIII", bits & 0xFFFFFFFF, bits & 0xFFFFFFFF, 0, bits >> 32, bits >> 32, 0)
    if libc.syscall(126, hdr, data) != 0:  # SYS_capset on x86_64
        raise OSError(ctypes.get_errno(), "capset")


def listen(group, out, all_threads=False):
    """Child process: answers every event with ALLOW and writes one line per event to `out`.
    A separate process, not a thread: Python keeps its global lock across mmap(), so a
    listener thread could never answer the event mmap raises."""
    while True:
        try:
            buf = os.read(group, 65536)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            os._exit(0)
        pos = 0
        while pos + 24 <= len(buf):
            ln, vers, _, mlen, mask, fd, pid = struct.unpack_from("IBBHQii", buf, pos)
            off, cnt, info = -1, -1, pos + mlen
            while info < pos + ln:
                typ, _, hlen = struct.unpack_from("BBH", buf, info)
                if typ == FAN_EVENT_INFO_TYPE_RANGE:
                    off, cnt = struct.unpack_from("QQ", buf, info + 8)
                info += hlen
            dev = ino = flags = -1
            sysline = "-"
            if fd >= 0:
                st = os.fstat(fd)
                dev, ino = st.st_dev, st.st_ino
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                try:
                    if all_threads:
                        sysline = thread_lines(pid)
                    else:
                        with open(f"/proc/{pid}/syscall") as f:
                            sysline = f.read().strip()
                except OSError as e:
                    sysline = f"unreadable: {errno.errorcode[e.errno]}"
            os.write(out, f"{dev} {ino} {mask} {off} {cnt} {flags} {pid} {sysline}\n".encode())
            if fd >= 0:
                os.write(group, struct.pack("iI", fd, FAN_ALLOW))
                os.close(fd)
            pos += ln


class Listener:
    """The parent's side: collects the child's lines; `drain()` returns the new events."""

    def __init__(self, group, files, all_threads=False, keep_caps=None):
        self.files = files
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(r)
            if keep_caps is not None:
                drop_capabilities(keep_caps)
            listen(group, w, all_threads)
        os.close(w)
        os.set_blocking(r, False)
        self.r, self.pending = r, b""

    def drain(self):
        try:
            while True:
                chunk = os.read(self.r, 65536)
                if not chunk:
                    break
                self.pending += chunk
        except BlockingIOError:
            pass
        *lines, self.pending = self.pending.split(b"\n")
        out = []
        for line in lines:
            dev, ino, mask, off, cnt, flags, pid, sysline = line.decode().split(" ", 7)
            name = self.files.get((int(dev), int(ino)), f"ino{ino}")
            out.append((name, int(mask), int(off), int(cnt), int(flags), int(pid), sysline))
        return out

    def stop(self):
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


LISTENER = []  # fresh() drains the setup's own events, so they are not counted as the op's


def fresh(mnt, files, name, size=SIZE):
    p = os.path.join(mnt, name)
    if os.path.exists(p):
        os.unlink(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
    st = os.stat(p)
    files[(st.st_dev, st.st_ino)] = name
    if LISTENER:
        time.sleep(0.01)
        LISTENER[0].drain()
    return p


def ops(mnt, files):
    """(label, function) pairs; each function does one access and returns a short result."""
    def fd_of(name, flags=os.O_RDWR, size=SIZE):
        return os.open(fresh(mnt, files, name, size), flags)

    def fa(mode, off, length, name="f"):
        def run():
            fd = fd_of(name)
            try:
                r = libc.fallocate(fd, mode, off, length)
                return "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
            finally:
                os.close(fd)
        return run

    def simple(fn, flags=os.O_RDWR):
        def run():
            fd = fd_of("f", flags)
            try:
                r = fn(fd)
                return "ok" if r is None else str(r)
            except OSError as e:
                return errno.errorcode[e.errno]
            finally:
                os.close(fd)
        return run

    def mmap_read(fd):
        m = mmap.mmap(fd, 12288, mmap.MAP_SHARED, mmap.PROT_READ, offset=4096)
        _ = m[100]
        m.close()

    def mmap_write(fd):
        m = mmap.mmap(fd, 12288, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=4096)
        m[100] = 1
        m.close()

    def truncate_path():
        p = fresh(mnt, files, "f")
        os.truncate(p, 3 * MiB + 12345)
        return "ok"

    def open_trunc():
        p = fresh(mnt, files, "f")
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        return "ok"

    def append_write():
        p = fresh(mnt, files, "f")
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"xyz")
        os.close(fd)
        return "ok"

    def pair(fn):
        def run():
            src, dst = fd_of("src", os.O_RDONLY), fd_of("dst", os.O_RDWR, size=0)
            try:
                r = fn(src, dst)
                return "ok" if r is None else str(r)
            except OSError as e:
                return errno.errorcode[e.errno]
            finally:
                os.close(src)
                os.close(dst)
        return run

    def splice_to_pipe(src, dst):
        r, w = os.pipe()
        try:
            return os.splice(src, w, 100, offset_src=8192)
        finally:
            os.close(r)
            os.close(w)

    def dedupe():
        data = os.urandom(SIZE)
        fds = []
        for name in ("src", "dst"):
            p = os.path.join(mnt, name)
            with open(p, "wb") as f:
                f.write(data)
            st = os.stat(p)
            files[(st.st_dev, st.st_ino)] = name
            fds.append(os.open(p, os.O_RDWR))
        if LISTENER:
            time.sleep(0.01)
            LISTENER[0].drain()
        try:
            arg = bytearray(struct.pack("QQHHI", 0, MiB, 1, 0, 0) + struct.pack("qQQiI", fds[1], 0, 0, 0, 0))
            fcntl.ioctl(fds[0], 0xC0189436, arg)
            status = struct.unpack_from("qQQiI", arg, 24)[3]
            return "ok" if status == 0 else f"status{status}"
        except OSError as e:
            return errno.errorcode[e.errno]
        finally:
            for fd in fds:
                os.close(fd)

    def clone_range(src_off, length, dst_off):
        def fn(src, dst):
            fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, src_off, length, dst_off))
        return fn

    return [
        ("pread 100 @ 8192", simple(lambda fd: len(os.pread(fd, 100, 8192)), os.O_RDONLY)),
        ("pread 100 @ 8MiB-50 (crosses EOF)", simple(lambda fd: len(os.pread(fd, 100, SIZE - 50)), os.O_RDONLY)),
        ("pread 100 @ 9MiB (past EOF)", simple(lambda fd: len(os.pread(fd, 100, 9 * MiB)), os.O_RDONLY)),
        ("pread 3 MiB @ 1MiB+1", simple(lambda fd: len(os.pread(fd, 3 * MiB, MiB + 1)), os.O_RDONLY)),
        ("pwrite 3 @ 300000", simple(lambda fd: os.pwrite(fd, b"abc", 300000))),
        ("pwrite 4096 @ 1MiB (aligned)", simple(lambda fd: os.pwrite(fd, b"a" * 4096, MiB))),
        ("pwrite 1 MiB @ 1MiB (aligned)", simple(lambda fd: os.pwrite(fd, b"a" * MiB, MiB))),
        ("pwrite 10000 @ 5000", simple(lambda fd: os.pwrite(fd, b"a" * 10000, 5000))),
        ("pwrite 3 @ 9MiB (past EOF)", simple(lambda fd: os.pwrite(fd, b"abc", 9 * MiB))),
        ("write 3 O_APPEND", append_write),
        ("mmap read 12 KiB @ 4096", simple(mmap_read, os.O_RDONLY)),
        ("mmap write 12 KiB @ 4096", simple(mmap_write)),
        ("fallocate 0 @ 1MiB len 1MiB", fa(0, MiB, MiB)),
        ("fallocate 0 @ 8MiB len 1MiB (extends)", fa(0, SIZE, MiB)),
        ("fallocate KEEP_SIZE @ 8MiB len 1MiB", fa(KEEP, SIZE, MiB)),
        ("fallocate KEEP_SIZE @ 1MiB len 1MiB", fa(KEEP, MiB, MiB)),
        ("fallocate PUNCH|KEEP @ 1MiB len 1MiB", fa(PUNCH | KEEP, MiB, MiB)),
        ("fallocate PUNCH|KEEP @ 5000 len 10000", fa(PUNCH | KEEP, 5000, 10000)),
        ("fallocate ZERO @ 1MiB len 1MiB", fa(ZERO, MiB, MiB)),
        ("fallocate ZERO @ 5000 len 10000", fa(ZERO, 5000, 10000)),
        ("fallocate ZERO @ 7MiB len 2MiB (extends)", fa(ZERO, 7 * MiB, 2 * MiB)),
        ("fallocate ZERO|KEEP @ 7MiB len 2MiB", fa(ZERO | KEEP, 7 * MiB, 2 * MiB)),
        ("fallocate INSERT @ 1MiB len 1MiB", fa(INSERT, MiB, MiB)),
        ("fallocate INSERT @ 4096 len 4096", fa(INSERT, 4096, 4096)),
        ("fallocate COLLAPSE @ 1MiB len 1MiB", fa(COLLAPSE, MiB, MiB)),
        ("fallocate COLLAPSE @ 4096 len 4096", fa(COLLAPSE, 4096, 4096)),
        ("fallocate COLLAPSE @ 7MiB len 1MiB (to EOF: EINVAL)", fa(COLLAPSE, 7 * MiB, MiB)),
        ("ftruncate down to 3MiB+12345", simple(lambda fd: libc.ftruncate(fd, 3 * MiB + 12345) or None)),
        ("ftruncate down to 3MiB (page aligned)", simple(lambda fd: libc.ftruncate(fd, 3 * MiB) or None)),
        ("ftruncate up to 12MiB", simple(lambda fd: libc.ftruncate(fd, 12 * MiB) or None)),
        ("ftruncate up to 12MiB+5", simple(lambda fd: libc.ftruncate(fd, 12 * MiB + 5) or None)),
        ("ftruncate to same size", simple(lambda fd: libc.ftruncate(fd, SIZE) or None)),
        ("truncate(path) to 3MiB+12345", truncate_path),
        ("open O_TRUNC", open_trunc),
        ("FICLONE src -> empty dst", pair(lambda s, d: fcntl.ioctl(d, FICLONE, s))),
        ("FICLONERANGE src 1MiB+1MiB -> dst @ 0", pair(clone_range(MiB, MiB, 0))),
        ("FICLONERANGE src 1MiB+0 (to EOF) -> dst @ 0", pair(clone_range(MiB, 0, 0))),
        ("copy_file_range 1MiB @ 1MiB -> dst @ 0", pair(lambda s, d: os.copy_file_range(s, d, MiB, MiB, 0))),
        ("sendfile 100 @ 8192 -> dst", pair(lambda s, d: os.sendfile(d, s, 8192, 100))),
        ("splice 100 @ 8192 -> pipe", pair(splice_to_pipe)),
        ("FIDEDUPERANGE src 0+1MiB with an identical dst", dedupe),
    ]


def probe(fstype, cost):
    base = tempfile.mkdtemp(prefix="probe-range-")
    img, mnt = base + "/img", base + "/mnt"
    os.mkdir(mnt)
    mounted = False
    group = -1
    try:
        subprocess.run(["truncate", "-s", "512M", img], check=True)
        mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[fstype]
        subprocess.run(mkfs + [img], check=True)
        subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
        mounted = True
        t = libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_REPORT_TID, os.O_RDONLY)
        print(f"{fstype}: fanotify_init(PRE_CONTENT|REPORT_TID) -> {'ok' if t >= 0 else errno.errorcode[ctypes.get_errno()]}")
        if t >= 0:
            os.close(t)
        group = libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_REPORT_FD_ERROR, os.O_RDONLY)
        assert group >= 0, errno.errorcode[ctypes.get_errno()]
        r = libc.fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_PRE_ACCESS, -100, mnt.encode())
        assert r == 0, errno.errorcode[ctypes.get_errno()]
        files = {}
        listener = Listener(group, files)
        LISTENER[:] = [listener]
        for label, fn in ops(mnt, files):
            for name in ("f", "src", "dst"):
                p = os.path.join(mnt, name)
                if os.path.exists(p):
                    os.unlink(p)
            listener.drain()
            result = fn()
            time.sleep(0.02)
            evs = listener.drain()
            shown = []
            for name, mask, off, cnt, flags, pid, sysline in evs:
                what = decode_syscall(sysline)
                rng = "no range" if off < 0 else f"{off}+{cnt}" + ("=EOF" if cnt == 0 else "")
                shown.append(f"{name}:{rng} mask={mask:#x} fdflags={flags:#o} [{what}]")
            print(f"{fstype:5s} {label:52s} {result:10s} " + ("; ".join(shown) if shown else "NO EVENT"))
        listener.stop()
        LISTENER.clear()
        if cost:
            measure_proc_cost()
    finally:
        if group >= 0:
            os.close(group)
        if mounted:
            subprocess.run(["umount", mnt])
        subprocess.run(["rm", "-rf", base])


# Capability numbers of the shipped unit's CapabilityBoundingSet (systemd/hsmd.service).
UNIT_CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
             "CAP_SYS_ADMIN": 21, "CAP_LEASE": 28}
CAP_SYS_PTRACE = 19


def probe_who(helper):
    """Who raised the event, and can the listener see what that thread is doing?"""
    base = tempfile.mkdtemp(prefix="probe-range-")
    img, mnt = base + "/img", base + "/mnt"
    os.mkdir(mnt)
    mounted, groups = False, []
    try:
        subprocess.run(["truncate", "-s", "512M", img], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
        mounted = True
        files = {}
        cases = [("group without REPORT_TID, all threads listed", 0, True, None),
                 ("group with FAN_REPORT_TID, /proc/PID/syscall of the reported id", FAN_REPORT_TID, False, None),
                 ("listener with the unit's capabilities only (no CAP_SYS_PTRACE)", 0, True, list(UNIT_CAPS.values())),
                 ("listener with the unit's capabilities + CAP_SYS_PTRACE", 0, True, list(UNIT_CAPS.values()) + [CAP_SYS_PTRACE])]
        for title, flags, all_threads, caps in cases:
            g = libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | flags, os.O_RDONLY)
            assert g >= 0, errno.errorcode[ctypes.get_errno()]
            groups.append(g)
            assert libc.fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_PRE_ACCESS, -100, mnt.encode()) == 0
            listener = Listener(g, files, all_threads, caps)
            LISTENER[:] = [listener]
            print(f"-- {title} (probe pid {os.getpid()})")

            def show(label, result, main_tid=None):
                time.sleep(0.05)
                for name, mask, off, cnt, fl, pid, sysline in listener.drain():
                    lines = sysline.split("|")
                    print(f"   {label:44s} {result:8s} {name}:{off}+{cnt} event pid {pid}")
                    for l in lines:
                        tid, _, line = l.partition("=") if "=" in l else ("", "", l)
                        print(f"       {('tid ' + tid) if tid else '':12s} {decode_syscall(line) if not line.startswith('unreadable') else line}   raw: {line[:60]}")

            # A non-main thread does the fallocate; the main thread waits in join (futex).
            p = fresh(mnt, files, "f")
            fd = os.open(p, os.O_RDWR)
            res = {}
            import threading
            t = threading.Thread(target=lambda: res.setdefault("r", libc.fallocate(fd, INSERT, MiB, MiB)))
            t.start(); t.join()
            os.close(fd)
            show("thread: fallocate INSERT @1MiB 1MiB", "ok" if res["r"] == 0 else "err")
            # io_uring: the fallocate runs in an io-wq worker thread.
            p = fresh(mnt, files, "f")
            r = subprocess.run([helper, p, str(INSERT), str(MiB), str(MiB)], capture_output=True, text=True)
            show("io_uring: IORING_OP_FALLOCATE INSERT", r.stdout.strip() or r.stderr.strip())
            # A process of another user reads.
            p = fresh(mnt, files, "f")
            os.chmod(p, 0o644)
            os.chmod(base, 0o755)  # mkdtemp's 0700 would keep the other user out
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "/usr/bin/python3", "-c", f"import os; fd=os.open({p!r}, os.O_RDONLY); print(len(os.pread(fd, 10, 0)))"],
                               capture_output=True, text=True)
            show("uid 65534: pread 10 @ 0", r.stdout.strip() or r.stderr.strip()[-40:])
            # A root process with all capabilities reads.
            p = fresh(mnt, files, "f")
            r = subprocess.run([sys.executable, "-c", f"import os; fd=os.open({p!r}, os.O_RDONLY); print(len(os.pread(fd, 10, 0)))"],
                               capture_output=True, text=True)
            show("root (full caps): pread 10 @ 0", r.stdout.strip() or r.stderr.strip()[-40:])
            listener.stop()
            LISTENER.clear()
            os.close(g)
            groups.remove(g)
    finally:
        for g in groups:
            os.close(g)
        if mounted:
            subprocess.run(["umount", mnt])
        subprocess.run(["rm", "-rf", base])


def measure_proc_cost():
    """How long one read of /proc/PID/task/TID/syscall of a blocked thread takes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)  # blocked in read(2) until the parent is done
        os._exit(0)
    time.sleep(0.1)
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            f.read()
    dt = (time.perf_counter() - t0) / n
    os.write(w, b"x")
    os.waitpid(pid, 0)
    print(f"reading /proc/PID/task/TID/syscall of a blocked thread: {dt * 1e6:.1f} us per read (python, {n} reads)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fs", default="ext4,xfs,btrfs")
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--who", action="store_true", help="who raised the event; what /proc shows per thread")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    # A SIGTERM still unmounts and removes the loop filesystem (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if a.who:
        helper = os.path.join(tempfile.mkdtemp(prefix="probe-uring-"), "probe-uring-fallocate")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe-uring-fallocate.c")
        subprocess.run(["cc", "-O2", "-o", helper, src], check=True)
        try:
            probe_who(helper)
        finally:
            subprocess.run(["rm", "-rf", os.path.dirname(helper)])
        return
    for fstype in a.fs.split(","):
        probe(fstype, a.cost)


if __name__ == "__main__":
    main()
