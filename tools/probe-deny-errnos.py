#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root. Never marks anything but its own loop fs.
# Which errnos does FAN_DENY_ERRNO accept on this kernel? Uses a throwaway loop fs.
import ctypes, os, errno, subprocess, tempfile, threading, struct
libc = ctypes.CDLL(None, use_errno=True)
base = tempfile.mkdtemp(); img = base + "/img"; mnt = base + "/mnt"; os.mkdir(mnt)
subprocess.run(["truncate", "-s", "64M", img], check=True); subprocess.run(["mkfs.ext4", "-q", img], check=True)
subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
try:
    open(mnt + "/f", "wb").write(b"x" * 8192)
    g = libc.fanotify_init(0x8 | 0x2000, os.O_RDWR)  # PRE_CONTENT | REPORT_FD_ERROR
    assert g >= 0, ctypes.get_errno()
    r = libc.fanotify_mark(g, 0x1 | 0x100, ctypes.c_uint64(0x00100000), -100, mnt.encode())
    assert r == 0, ctypes.get_errno()
    results = {}
    for name in ["EPERM", "EIO", "EBUSY", "ETXTBSY", "EAGAIN", "ENOSPC", "EDQUOT", "ETIMEDOUT", "ENODATA", "EROFS"]:
        e = getattr(errno, name)
        out = {}
        def reader():
            try:
                with open(mnt + "/f", "rb") as f: f.read(10)
                out["r"] = "read ok"
            except OSError as ex: out["r"] = errno.errorcode[ex.errno]
        t = threading.Thread(target=reader); t.start()
        buf = os.read(g, 4096)
        ln, vers, _, mlen, mask, fd, pid = struct.unpack_from("IBBHQii", buf)
        resp = struct.pack("iI", fd, 0x2 | ((e & 0xff) << 24))
        try:
            os.write(g, resp); w = "accepted"
        except OSError as ex:
            w = "refused " + errno.errorcode[ex.errno]
            os.write(g, struct.pack("iI", fd, 0x1))  # allow, so the reader finishes
        t.join(5); os.close(fd)
        print(f"{name:10s} response {w:16s} reader got {out.get('r')}")
    os.close(g)
finally:
    subprocess.run(["umount", mnt]); subprocess.run(["rm", "-rf", base])
