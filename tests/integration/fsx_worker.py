"""The fsx-style workload of test_fsx.py, run as a subprocess (so a hang is a timeout, not a
stuck suite). A seeded random mix of pread, pwrite, O_APPEND writes, mmap reads and writes,
ftruncate up and down and every fallocate mode the filesystem supports, on one file, with
`hsmctl archive` + `hsmctl release` every --release-every operations. A shadow bytearray
holds what the file must contain: every read is compared with it, the size after every
operation, and the whole file (after fsync and dropping its cached pages, so the bytes
come from disk) before each release and at the end.

The operation sequence depends only on the seed, the starting size and the fallocate modes
the filesystem supports, so a failing run is reproduced by the same arguments. On a
mismatch it exits 1 and prints the seed, the operation's index, what differed and the log
of the last operations; every operation is also written to --log before it runs, so the
log tail is there even when the worker is killed for a hang.
"""
import argparse
import errno
import json
import mmap
import os
import random
import subprocess
import sys
import time

from fileops import COLLAPSE_RANGE, INSERT_RANGE, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, fallocate

KiB = 1 << 10
MiB = 1 << 20
PAGE = mmap.PAGESIZE

FALLOCATE_MODES = {
    "allocate": 0,
    "allocate-keep-size": KEEP_SIZE,
    "punch-hole": PUNCH_HOLE | KEEP_SIZE,
    "zero-range": ZERO_RANGE,
    "zero-range-keep-size": ZERO_RANGE | KEEP_SIZE,
    "insert-range": INSERT_RANGE,
    "collapse-range": COLLAPSE_RANGE,
}


class Mismatch(Exception):
    pass


def supported_modes(directory):
    """The fallocate modes this filesystem accepts: EOPNOTSUPP means unsupported."""
    probe = os.path.join(directory, ".fsx-mode-probe")
    out = []
    for name, mode in FALLOCATE_MODES.items():
        with open(probe, "wb") as f:
            f.write(b"\1" * (256 * KiB))
        fd = os.open(probe, os.O_RDWR)
        try:
            fallocate(fd, mode, 64 * KiB, 64 * KiB)
            out.append(name)
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
        finally:
            os.close(fd)
    os.unlink(probe)
    return out


def first_difference(a, b):
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n
    while hi - lo > 4096:  # bisect on slices: fast even for 16 MiB
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return n


class Fsx:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.path = a.path
        self.block = os.statvfs(os.path.dirname(a.path)).f_frsize
        self.modes = supported_modes(os.path.dirname(a.path))
        self.logf = open(a.log, "w", buffering=1)
        self.history = []
        self.counts = {}
        self.cycles = 0
        size = self.rng.randrange(a.min_size, (a.min_size + a.max_size) // 2)
        self.shadow = bytearray(self.rng.randbytes(size))
        with open(self.path, "wb") as f:
            f.write(self.shadow)
        self.fd = self.afd = None
        self.release()

    # --- plumbing ---------------------------------------------------------------

    def log(self, i, text):
        line = f"{i}: {text}"
        self.history.append(line)
        if len(self.history) > 60:
            del self.history[:20]
        self.logf.write(line + "\n")

    def open(self):
        self.fd = os.open(self.path, os.O_RDWR)
        self.afd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def close(self):
        for fd in (self.fd, self.afd):
            if fd is not None:
                os.close(fd)
        self.fd = self.afd = None

    def ctl(self, *args):
        r = subprocess.run([self.a.hsmctl, *args, "--json", self.path], capture_output=True, text=True,
                           env=dict(os.environ, HSMD_SOCKET=self.a.socket), timeout=300)
        try:
            rows = json.loads(r.stdout)["files"]
        except (ValueError, KeyError):
            raise Mismatch(f"hsmctl {args[0]} exited {r.returncode}: {r.stdout} {r.stderr}")
        if r.returncode != 0 or rows[0]["outcome"] != "done":
            raise Mismatch(f"hsmctl {args[0]} exited {r.returncode}: {rows} {r.stderr}")

    def release(self):
        """Whole-file check from disk, then archive + release: the next operations meet
        a file whose every block is offline."""
        self.close()
        self.check_whole("before release")
        self.ctl("archive")
        self.ctl("release")
        self.cycles += 1
        self.open()

    def check_whole(self, when):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            data = bytearray()
            while True:
                chunk = os.read(fd, MiB)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        if data != self.shadow:
            at = first_difference(data, self.shadow)
            raise Mismatch(f"whole-file compare {when}: file has {len(data)} bytes, shadow {len(self.shadow)}; "
                           f"first difference at byte {at} (MiB {at // MiB}): file {bytes(data[at:at + 8]).hex()} "
                           f"shadow {bytes(self.shadow[at:at + 8]).hex()}")

    def expect_size(self):
        size = os.fstat(self.fd).st_size
        if size != len(self.shadow):
            raise Mismatch(f"size {size}, shadow {len(self.shadow)}")

    # --- random choices -----------------------------------------------------------

    def length(self):
        # Mostly small: each operation should meet offline blocks (1 MiB recall blocks)
        # for as long as possible after a release, not recall the file in a few steps.
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randrange(1, 4 * KiB)
        if r < 0.85:
            return self.rng.randrange(1, 64 * KiB)
        if r < 0.98:
            return self.rng.randrange(1, 512 * KiB)
        return self.rng.randrange(1, 2 * MiB)

    def offset(self, slack=64 * KiB):
        size = len(self.shadow)
        return self.rng.randrange(0, size + slack)

    def room(self, off, n):
        """Clip a length so the file stays under max_size."""
        return max(0, min(n, self.a.max_size - off))

    def aligned(self, x):
        return x // self.block * self.block

    # --- operations (each returns its log text before doing anything) ----------------

    def op_read(self):
        off, n = self.offset(), self.length()
        yield f"pread {n} @ {off}"
        got = os.pread(self.fd, n, off)
        want = bytes(self.shadow[off:off + n])
        if got != want:
            at = first_difference(got, want)
            raise Mismatch(f"pread returned {len(got)} bytes, shadow {len(want)}; first difference at byte "
                           f"{off + at} (MiB {(off + at) // MiB}): got {got[at:at + 8].hex()} want {want[at:at + 8].hex()}")

    def op_write(self):
        off = self.offset(slack=2 * MiB if self.rng.random() < 0.1 else 64 * KiB)
        n = self.room(off, self.length())
        data = self.rng.randbytes(n)
        yield f"pwrite {n} @ {off}"
        if n == 0:
            return
        os.pwrite(self.fd, data, off)
        if off > len(self.shadow):
            self.shadow.extend(bytes(off - len(self.shadow)))
        self.shadow[off:off + n] = data

    def op_append(self):
        n = self.room(len(self.shadow), self.rng.randrange(1, 64 * KiB))
        data = self.rng.randbytes(n)
        yield f"append {n} (O_APPEND; size {len(self.shadow)})"
        if n == 0:
            return
        os.write(self.afd, data)
        self.shadow.extend(data)

    def _map(self):
        size = len(self.shadow)
        if size == 0:
            return None
        off = self.aligned(self.rng.randrange(0, size)) // PAGE * PAGE
        n = self.rng.randrange(1, min(size - off, 128 * KiB) + 1)
        return off, n

    def op_mapread(self):
        r = self._map()
        yield f"mapread {r[1]} @ {r[0]}" if r else "mapread (empty file)"
        if not r:
            return
        off, n = r
        with mmap.mmap(self.fd, n, mmap.MAP_SHARED, mmap.PROT_READ, offset=off) as m:
            got = m[:n]
        want = bytes(self.shadow[off:off + n])
        if got != want:
            at = first_difference(got, want)
            raise Mismatch(f"mmap read differs at byte {off + at} (MiB {(off + at) // MiB}): "
                           f"got {got[at:at + 8].hex()} want {want[at:at + 8].hex()}")

    def op_mapwrite(self):
        r = self._map()
        if r:
            data = self.rng.randbytes(min(r[1], 64 * KiB))
            start = r[0] + self.rng.randrange(0, r[1] - len(data) + 1)
        yield f"mapwrite {len(data)} @ {start} (mapping {r[1]} @ {r[0]})" if r else "mapwrite (empty file)"
        if not r:
            return
        off, n = r
        with mmap.mmap(self.fd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off) as m:
            m[start - off:start - off + len(data)] = data
            m.flush()
        self.shadow[start:start + len(data)] = data

    def op_truncate(self):
        size = len(self.shadow)
        if self.rng.random() < 0.5 or size >= self.a.max_size:
            new = self.rng.randrange(0, size + 1)
        else:
            new = self.rng.randrange(size, self.a.max_size + 1)
        if self.rng.random() < 0.3:
            new = self.aligned(new)  # page-aligned sizes raise count-0 events
        yield f"ftruncate {size} -> {new}"
        os.ftruncate(self.fd, new)
        if new < size:
            del self.shadow[new:]
        else:
            self.shadow.extend(bytes(new - size))

    def op_fallocate(self):
        name = self.rng.choice(self.modes)
        mode, size = FALLOCATE_MODES[name], len(self.shadow)
        off, n = self.offset(), self.length()
        if name in ("insert-range", "collapse-range"):
            off, n = self.aligned(self.rng.randrange(0, max(size, 1))), max(self.aligned(n), self.block)
            if name == "insert-range":
                n = self.aligned(self.room(size, n))
                ok = off < size and n > 0
            else:
                ok = off + n < size
            if not ok:
                yield f"{name} {n} @ {off}: not possible at size {size}, skipped"
                return
        elif name in ("allocate", "zero-range"):
            n = max(1, self.room(off, n))
        yield f"fallocate {name} {n} @ {off} (size {size})"
        try:
            fallocate(self.fd, mode, off, n)
        except OSError as e:
            raise Mismatch(f"fallocate {name} {n} @ {off} failed: {e}")
        end = off + n
        if name == "allocate":
            if end > size:
                self.shadow.extend(bytes(end - size))
        elif name == "zero-range":
            if end > size:
                self.shadow.extend(bytes(end - size))
            self.shadow[off:end] = bytes(n)
        elif name in ("punch-hole", "zero-range-keep-size"):
            if off < size:
                self.shadow[off:min(end, size)] = bytes(min(end, size) - off)
        elif name == "insert-range":
            self.shadow[off:off] = bytes(n)
        elif name == "collapse-range":
            del self.shadow[off:end]

    # --- the run ----------------------------------------------------------------

    def run(self):
        ops = [(self.op_read, 24), (self.op_write, 16), (self.op_append, 4), (self.op_mapread, 8),
               (self.op_mapwrite, 4), (self.op_truncate, 6), (self.op_fallocate, 22)]
        funcs, weights = zip(*ops)
        i = 0
        try:
            for i in range(1, self.a.ops + 1):
                f = self.rng.choices(funcs, weights)[0]
                steps = f()
                self.log(i, next(steps))
                for _ in steps:
                    pass
                self.counts[f.__name__[3:]] = self.counts.get(f.__name__[3:], 0) + 1
                self.expect_size()
                if i % self.a.release_every == 0:
                    self.log(i, "check whole file, archive, release")
                    self.release()
            self.close()
            self.check_whole("at the end")
        except Mismatch as e:
            return self.fail(i, str(e))
        except OSError as e:
            return self.fail(i, f"unexpected error: {e}")
        print(json.dumps({"seed": self.a.seed, "ops": self.a.ops, "releases": self.cycles,
                          "modes": self.modes, "counts": self.counts, "final_size": len(self.shadow)}))
        return 0

    def fail(self, i, why):
        print(f"fsx FAILED: seed {self.a.seed}, operation {i}: {why}\n"
              f"fallocate modes used: {', '.join(self.modes)}; releases so far: {self.cycles}\n"
              f"last operations (full log: {self.a.log}):\n  " + "\n  ".join(self.history[-25:]))
        return 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--release-every", type=int, default=250)
    ap.add_argument("--min-size", type=int, default=4 * MiB)
    ap.add_argument("--max-size", type=int, default=12 * MiB)
    ap.add_argument("--log", required=True)
    ap.add_argument("--hsmctl", required=True)
    ap.add_argument("--socket", required=True)
    a = ap.parse_args()
    t0 = time.time()
    try:
        rc = Fsx(a).run()
    except Mismatch as e:
        print(f"fsx FAILED: seed {a.seed}, during setup: {e}")
        rc = 1
    print(f"fsx: {time.time() - t0:.1f} s", file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
