#!/usr/bin/env python3
"""What one cold pread of each size costs on this machine's disk.

    python3 tools/cold-read-cost.py [--dir /var/tmp] [--reads 200] [--rounds 5]

Writes a 256 MiB file of random bytes under --dir (removed at the end), then per round and
size: drop_caches, 200 preads at random offsets aligned to the size, with
POSIX_FADV_RANDOM as hsmd's partial store reads use; prints the median of the rounds'
medians. It is what a random read's store chunk costs (docs/BENCHMARKS.md, target 1,
fifth step). Needs root (drop_caches).
"""
import argparse
import os
import random
import statistics
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("--dir", default="/var/tmp")
ap.add_argument("--reads", type=int, default=200)
ap.add_argument("--rounds", type=int, default=5)
a = ap.parse_args()
size = 256 << 20
fd, path = tempfile.mkstemp(prefix="cold-read-cost-", dir=a.dir)
try:
    for _ in range(size >> 20):
        os.write(fd, os.urandom(1 << 20))
    os.close(fd)
    res = {}
    for rnd in range(a.rounds):
        for n in (4096, 16384, 65536):
            rng = random.Random(rnd * 7 + n)
            offs = [rng.randrange(0, size // n) * n for _ in range(a.reads)]
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            f = os.open(path, os.O_RDONLY)
            os.posix_fadvise(f, 0, 0, os.POSIX_FADV_RANDOM)
            lat = []
            for o in offs:
                t = time.perf_counter()
                os.pread(f, n, o)
                lat.append((time.perf_counter() - t) * 1e6)
            os.close(f)
            res.setdefault(n, []).append(statistics.median(lat))
    for n, v in res.items():
        print(f"{n // 1024:3d} KiB: median {statistics.median(v):6.1f} µs  (rounds: {', '.join(f'{x:.0f}' for x in v)})")
finally:
    os.unlink(path)
