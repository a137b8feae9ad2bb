"""A program that streams one file slowly, the way a consumer of released data does.

Run as its own process on the host (`python3 stream_reader.py FILE PROGRESS PAUSE [PID]`): it
reads FILE in 1 MiB chunks, sleeping PAUSE seconds between chunks, hashes what it read and
appends one JSON line per chunk to PROGRESS ({"t": time, "done": bytes}) so the test can
tell a slow reader from a hung one. The last line is the verdict: {"end": time,
"sha256": ..., "zero_pages": [first offsets of all-zero 4 KiB pages], "error": null or
"errno NAME at offset N: message"}. The test's files are random data, so an all-zero page
is never theirs: it is a released range that was allowed without being recalled.

With PID, the reading process lives in the pid namespace of PID (a container's init) while
keeping the host's files: hsmd in that container then sees the reader's real pid, as a
host's hsmd sees every process. From outside its namespace a reader's pid is 0 to hsmd,
which cannot look at such a process (docs/KERNEL-FACTS.md) and recalls for the worst case:
the rest of the file at the first read, so the reader would never wait again.
"""
import ctypes
import errno
import hashlib
import json
import os
import signal
import sys
import time

CHUNK = 1 << 20
PAGE = 4096
ZERO_PAGE = bytes(PAGE)


def main(path, progress_path, pause):
    h = hashlib.sha256()
    zero_pages = []
    error = None
    done = 0
    with open(progress_path, "a", buffering=1) as progress:
        progress.write(json.dumps({"t": time.time(), "done": 0, "pid": os.getpid()}) + "\n")
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                while True:
                    try:
                        chunk = os.pread(fd, CHUNK, done)
                    except OSError as e:
                        error = f"errno {errno.errorcode.get(e.errno, e.errno)} at offset {done}: {e.strerror}"
                        break
                    if not chunk:
                        break
                    for off in range(0, len(chunk), PAGE):
                        page = chunk[off:off + PAGE]
                        if len(zero_pages) < 16 and page == ZERO_PAGE[:len(page)]:
                            zero_pages.append(done + off)
                    h.update(chunk)
                    done += len(chunk)
                    progress.write(json.dumps({"t": time.time(), "done": done}) + "\n")
                    time.sleep(pause)
            finally:
                os.close(fd)
        except OSError as e:
            error = f"open: errno {errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
        progress.write(json.dumps({"end": time.time(), "done": done, "sha256": h.hexdigest(),
                                   "zero_pages": zero_pages, "error": error}) + "\n")


def enter_pid_namespace_of(pid):
    """Forks into the pid namespace of `pid`: the child returns, the parent waits for it
    and exits with its status. The child dies with the parent (a test kills the parent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ns = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
    if libc.setns(ns, 0x20000000) != 0:  # CLONE_NEWPID: for the children from now on
        raise OSError(ctypes.get_errno(), f"setns(pid namespace of {pid})")
    os.close(ns)
    child = os.fork()
    if child == 0:
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        return
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    if len(sys.argv) > 4:
        enter_pid_namespace_of(int(sys.argv[4]))
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
