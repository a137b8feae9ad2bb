"""File operations the integration tests apply to released files: every fallocate mode,
reflink clones, append writes. Importable, and a command line so a test can run one
operation in a subprocess with a timeout (a recall that never finishes must fail the test,
not hang it):

    python3 fileops.py fallocate PATH MODE OFFSET LENGTH
    python3 fileops.py append PATH HEXBYTES
    python3 fileops.py pwrite PATH OFFSET HEXBYTES
    python3 fileops.py ftruncate PATH LENGTH
    python3 fileops.py clone SRC DST                      (FICLONE, whole file)
    python3 fileops.py clonerange SRC SRCOFF LEN DST DSTOFF   (FICLONERANGE; LEN 0 = to EOF)
    python3 fileops.py copyrange SRC SRCOFF LEN DST DSTOFF    (copy_file_range)

Each prints "ok" or the errno name and exits 0; anything else is a bug of the test.
With FILEOPS_THREADS=N in the environment, N idle threads wait while the operation runs
(hsmd looks at every thread of a process that raises an event).
"""
import ctypes
import errno
import fcntl
import os
import struct
import sys

KEEP_SIZE = 0x01
PUNCH_HOLE = 0x02
COLLAPSE_RANGE = 0x08
ZERO_RANGE = 0x10
INSERT_RANGE = 0x20

FICLONE = 0x40049409
FICLONERANGE = 0x4020940D

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, offset, length):
    """fallocate(2) with any mode; raises OSError with the errno."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fallocate(mode={mode:#x}, {offset}, {length}): {os.strerror(e)}")


def clone(src_fd, dst_fd):
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def clone_range(src_fd, src_offset, length, dst_fd, dst_offset):
    fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_offset, length, dst_offset))


def _run(argv):
    op, args = argv[0], argv[1:]
    if op == "fallocate":
        fd = os.open(args[0], os.O_RDWR)
        try:
            fallocate(fd, int(args[1], 0), int(args[2]), int(args[3]))
        finally:
            os.close(fd)
    elif op == "append":
        fd = os.open(args[0], os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, bytes.fromhex(args[1]))
        finally:
            os.close(fd)
    elif op == "pwrite":
        fd = os.open(args[0], os.O_WRONLY)
        try:
            os.pwrite(fd, bytes.fromhex(args[2]), int(args[1]))
        finally:
            os.close(fd)
    elif op == "ftruncate":
        fd = os.open(args[0], os.O_WRONLY)
        try:
            os.ftruncate(fd, int(args[1]))
        finally:
            os.close(fd)
    elif op in ("clone", "clonerange", "copyrange"):
        src_path, dst_path = (args[0], args[1]) if op == "clone" else (args[0], args[3])
        src = os.open(src_path, os.O_RDONLY)
        dst = os.open(dst_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if op == "clone":
                clone(src, dst)
            elif op == "clonerange":
                clone_range(src, int(args[1]), int(args[2]), dst, int(args[4]))
            else:
                n, want = 0, int(args[2])
                while n < want:
                    got = os.copy_file_range(src, dst, want - n, int(args[1]) + n, int(args[4]) + n)
                    if got == 0:
                        break
                    n += got
        finally:
            os.close(src)
            os.close(dst)
    else:
        raise SystemExit(f"fileops: unknown operation {op}")


if __name__ == "__main__":
    import threading
    idle = threading.Event()
    for _ in range(int(os.environ.get("FILEOPS_THREADS", "0"))):
        threading.Thread(target=idle.wait, daemon=True).start()
    try:
        _run(sys.argv[1:])
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    idle.set()
