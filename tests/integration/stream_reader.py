"""A program that streams one file slowly, the way a consumer of released data does.

Run as its own process on the host (`python3 stream_reader.py FILE PROGRESS PAUSE`): it
reads FILE in 1 MiB chunks, sleeping PAUSE seconds between chunks, hashes what it read and
appends one JSON line per chunk to PROGRESS ({"t": time, "done": bytes}) so the test can
tell a slow reader from a hung one. The last line is the verdict: {"end": time,
"sha256": ..., "zero_pages": [first offsets of all-zero 4 KiB pages], "error": null or
"errno NAME at offset N: message"}. The test's files are random data, so an all-zero page
is never theirs: it is a released range that was allowed without being recalled.
"""
import errno
import hashlib
import json
import os
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
