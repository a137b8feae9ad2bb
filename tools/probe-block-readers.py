#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root. Never marks anything but its own
# loop filesystem, which it creates and removes.
#
# Programs that read a file through the block layer (loop devices) or map its holes before
# reading (qemu-img): which process opens the file, which fanotify permission events does
# that raise, does reading the loop device raise any, and can a write lease be taken on the
# file while a loop device holds it?
#
#   python3 tools/probe-block-readers.py [ext4|xfs|btrfs]   (the filesystem holding the images)
#
# Each step prints the events it raised as  MASK comm=NAME path  (the listener answers all
# with FAN_ALLOW), then its own result.
import ctypes, errno, fcntl, os, shutil, signal, struct, subprocess, sys, tempfile, time

FAN_CLASS_PRE_CONTENT, FAN_CLOEXEC = 0x8, 0x1
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS = 0x10000, 0x20000, 0x40000, 0x100000
FAN_ALLOW = 0x1
F_SETLEASE, F_WRLCK, F_RDLCK, F_UNLCK = 1024, 1, 0, 2
NAMES = {FAN_OPEN_PERM: "OPEN_PERM", FAN_ACCESS_PERM: "ACCESS_PERM",
         FAN_OPEN_EXEC_PERM: "OPEN_EXEC_PERM", FAN_PRE_ACCESS: "PRE_ACCESS"}
MiB = 1 << 20

libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def listen(group, out):
    """Child process: answers every event with ALLOW, one line per event to `out`."""
    while True:
        try:
            buf = os.read(group, 65536)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            os._exit(0)
        pos = 0
        while pos + 24 <= len(buf):
            ln, _, _, _, mask, fd, pid = struct.unpack_from("IBBHQii", buf, pos)
            comm, path = "?", "?"
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                pass
            if fd >= 0:
                path = os.readlink(f"/proc/self/fd/{fd}")
                os.write(group, struct.pack("iI", fd, FAN_ALLOW))
                os.close(fd)
            kinds = "|".join(n for bit, n in NAMES.items() if mask & bit) or hex(mask)
            os.write(out, f"{kinds} comm={comm} pid={pid} {path}\n".encode())
            pos += ln


def run(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.returncode} {r.stderr.strip()}")
    return r.stdout.strip()


def lease(path):
    """Can a write lease be taken on `path` now (what hsmctl release needs)?"""
    fd = os.open(path, os.O_RDONLY)
    time.sleep(0.2)  # the listener closes its event fd (an open file too) just after answering
    try:
        fcntl.fcntl(fd, F_SETLEASE, F_WRLCK)
        fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
        return "write lease taken"
    except OSError as e:
        return f"write lease refused: {errno.errorcode[e.errno]}"
    finally:
        os.close(fd)


def main():
    if os.geteuid() != 0:
        sys.exit("probe-block-readers: run as root")
    fstype = sys.argv[1] if len(sys.argv) > 1 else "ext4"
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}
    if fstype not in mkfs:
        sys.exit(f"probe-block-readers: unknown filesystem {fstype!r} (ext4, xfs or btrfs)")
    base = tempfile.mkdtemp(prefix="hsmd-probe-")
    outer_img, mnt, inner_mnt = f"{base}/outer.img", f"{base}/mnt", f"{base}/inner"
    os.mkdir(mnt)
    os.mkdir(inner_mnt)
    run("truncate", "-s", "512M", outer_img)
    run(*mkfs[fstype], outer_img)
    print(f"images on {fstype}")
    run("mount", "-o", "loop", outer_img, mnt)
    listener = None
    loops = []
    mounted_inner = False
    try:
        img = f"{mnt}/disk.img"
        run("truncate", "-s", "32M", img)
        run("mkfs.ext4", "-q", "-F", img)
        # Once, before listening: a file inside the image to read back through the mount.
        run("mount", "-o", "loop", img, inner_mnt)
        with open(f"{inner_mnt}/inside.bin", "wb") as f:
            f.write(os.urandom(MiB))
        run("umount", inner_mnt)
        raw = f"{mnt}/raw.img"
        with open(raw, "wb") as f:
            f.write(os.urandom(8 * MiB))

        group = libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, os.O_RDWR | os.O_LARGEFILE)
        if group < 0:
            sys.exit(f"fanotify_init: {errno.errorcode[ctypes.get_errno()]} (needs Linux 6.14+)")
        mask = FAN_OPEN_PERM | FAN_PRE_ACCESS
        if libc.fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, -100, mnt.encode()) != 0:
            sys.exit(f"fanotify_mark: {errno.errorcode[ctypes.get_errno()]}")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            listen(group, w)
        os.close(w)
        os.close(group)
        os.set_blocking(r, False)
        listener = pid
        pending = [b""]

        def events():
            time.sleep(0.2)
            try:
                while True:
                    chunk = os.read(r, 65536)
                    if not chunk:
                        break
                    pending[0] += chunk
            except BlockingIOError:
                pass
            *lines, pending[0] = pending[0].split(b"\n")
            return [l.decode() for l in lines]

        def step(label, fn):
            result = fn()
            evs = events()
            print(f"== {label}: {result}")
            seen = {}
            for e in evs:
                seen[e] = seen.get(e, 0) + 1
            for e, n in seen.items():
                print(f"     {e}" + (f"  (x{n})" if n > 1 else ""))
            if not evs:
                print("     (no events)")

        def read_dev(dev):
            run("dd", f"if={dev}", "of=/dev/null", "bs=1M", "iflag=direct", "status=none")
            return "read all of it (O_DIRECT)"

        for label, args in [("losetup -f --show", []), ("losetup -r -f --show", ["-r"]),
                            ("losetup --direct-io=on -f --show", ["--direct-io=on"])]:
            dev = []
            step(label, lambda: dev.append(run("losetup", *args, "-f", "--show", raw)) or dev[0])
            loops.append(dev[0])
            step(f"  read {dev[0]}", lambda: read_dev(dev[0]))
            step(f"  read {dev[0]} buffered", lambda: run("blockdev", "--flushbufs", dev[0]) or
                 run("dd", f"if={dev[0]}", "of=/dev/null", "bs=1M", "status=none") or "read all of it (buffered)")
            step(f"  lease on {raw} while {dev[0]} holds it", lambda: lease(raw))
            step(f"  losetup -d {dev[0]}", lambda: run("losetup", "-d", dev[0]) or "detached")
            loops.remove(dev[0])
        step("lease after detaching", lambda: lease(raw))

        def mount_loop():
            run("mount", "-o", "loop", img, inner_mnt)
            return "mounted " + run("findmnt", "-n", "-o", "SOURCE", inner_mnt)
        step("mount -o loop disk.img", mount_loop)
        mounted_inner = True
        step("  read a file inside", lambda: run("sha256sum", f"{inner_mnt}/inside.bin")[:16])
        step("  lease on disk.img while mounted", lambda: lease(img))
        step("  umount", lambda: run("umount", inner_mnt) or "unmounted")
        mounted_inner = False
        step("mount -o loop,ro disk.img", lambda: run("mount", "-o", "loop,ro", img, inner_mnt) or "mounted")
        mounted_inner = True
        step("  lease on disk.img while mounted ro", lambda: lease(img))
        step("  umount", lambda: run("umount", inner_mnt) or "unmounted")
        mounted_inner = False

        def fiemap():
            out = run("filefrag", raw)  # FS_IOC_FIEMAP
            return out.split(": ", 1)[1]
        step("filefrag raw.img (FIEMAP)", fiemap)

        def seek_data():
            fd = os.open(raw, os.O_RDONLY)
            try:
                return f"SEEK_DATA from 0: {os.lseek(fd, 0, os.SEEK_DATA)}, SEEK_HOLE: {os.lseek(fd, 0, os.SEEK_HOLE)}"
            finally:
                os.close(fd)
        step("lseek SEEK_DATA/SEEK_HOLE on raw.img", seek_data)

        if shutil.which("qemu-img"):
            out = f"{base}/out.img"  # not on the marked filesystem
            step("qemu-img info raw.img", lambda: run("qemu-img", "info", raw).splitlines()[1])
            step("qemu-img convert -O raw raw.img (to another fs)",
                 lambda: run("qemu-img", "convert", "-O", "raw", raw, out) or "ok")
            step("qemu-img convert -O qcow2 raw.img",
                 lambda: run("qemu-img", "convert", "-O", "qcow2", raw, out) or "ok")
            step("qemu-img compare", lambda: run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, out, check=False))
            r2 = subprocess.run(["strace", "-f", "-e", "trace=lseek,ioctl", "qemu-img", "convert", "-O", "raw",
                                 raw, out], capture_output=True, text=True)
            probes = sorted({l.split("(")[0].split()[-1] + ":" + ("SEEK_DATA" if "SEEK_DATA" in l else
                             "SEEK_HOLE" if "SEEK_HOLE" in l else "FS_IOC_FIEMAP" if "FIEMAP" in l else "other")
                             for l in r2.stderr.splitlines() if "lseek(" in l or "ioctl(" in l})
            events()
            print(f"== strace of qemu-img convert: {', '.join(probes)}")
        else:
            print("== qemu-img not installed (apt-get install qemu-utils)")
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev])
        if mounted_inner:
            subprocess.run(["umount", inner_mnt])
        if listener:
            os.kill(listener, signal.SIGKILL)
            os.waitpid(listener, 0)
        subprocess.run(["umount", mnt])
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
