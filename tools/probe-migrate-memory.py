#!/usr/bin/env python3
"""hsmd's peak RSS during one `hsmctl migrate` of a tree of many small files.

    python3 tools/probe-migrate-memory.py --bindir .build-rel/release --files 30000 [--size 4096]

Uses scripts/bench.py's own filesystem and hsmd (a loop-mounted ext4 under a temporary
folder, removed at the end), writes FILES files of SIZE bytes (0: empty files, which the
run's `--min-size 1` skips), resets hsmd's peak RSS (proc(5): clear_refs 5), migrates the
tree in one request and prints hsmd's RSS before and its peak during the run.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {key} in /proc/{pid}/status")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--files", type=int, default=30000)
    ap.add_argument("--size", type=int, default=4096)
    a = ap.parse_args()
    b = bench.Bench(a.bindir, True, 1, "4G")
    try:
        b.start()
        root = b.mnt / "tree"
        data = os.urandom(a.size)
        for i in range(a.files):
            d = root / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                d.mkdir(parents=True)
            with open(d / f"file-{i:07d}", "wb") as f:
                f.write(data[:0] if a.size == 0 else i.to_bytes(8, "little") + data[8:])
        subprocess.run(["sync"], check=True)
        pid = b.proc.pid
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        before = status_kib(pid, "VmRSS")
        t = time.perf_counter()
        r = b.ctl("migrate", "--min-size", "1", root)
        took = time.perf_counter() - t
        peak = status_kib(pid, "VmHWM")
        last = r.stdout.strip().splitlines()
        print(f"files {a.files} of {a.size} B: hsmd RSS before {before / 1024:.1f} MiB, peak during the migrate "
              f"{peak / 1024:.1f} MiB (+{(peak - before) / 1024:.1f}), {took:.1f} s; {' / '.join(last)}", flush=True)
    finally:
        b.cleanup()
        subprocess.run(["rm", "-rf", str(b.base)])


if __name__ == "__main__":
    main()
