#!/usr/bin/env python3
"""Runs a tool attached to hsmd while released small files are read, one `cat` each.

    python3 tools/profile-small-files.py --bindir .build-rel/release --files 2000 \\
        --wrap 'perf record -e cpu-clock -F 2999 -g -o hsmd.perf -p {pid}'

Uses scripts/bench.py's own filesystem and hsmd (a loop-mounted ext4 under a temporary
folder, removed at the end), writes and migrates FILES files of 16 KiB, drops caches,
starts WRAP ({pid} is hsmd's), reads every file and prints the time and hsmd's CPU per
file of each pass. A pass after the first migrates the files again first (outside the
timing, not outside the tool's view). SIGINT ends the tool at the end.
"""
import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--wrap", required=True)
    ap.add_argument("--passes", type=int, default=1)
    a = ap.parse_args()
    b = bench.Bench(a.bindir, True, 1, "2G")
    try:
        b.start()
        root = b.mnt / "small"
        b.write_small_files(root, a.files, seed=1)
        b.ctl("migrate", root)
        bench.drop_caches()
        tool = subprocess.Popen(a.wrap.format(pid=b.proc.pid), shell=True)
        time.sleep(1.5)  # the tool attached
        files = sorted(root.glob("*/*"))
        for p in range(a.passes):
            if p:
                b.ctl("migrate", root)
                bench.drop_caches()
            c0 = b.hsmd_cpu_seconds()
            t = time.perf_counter()
            subprocess.run(["xargs", "-0", "-n", "1", "cat"], input=b"\0".join(str(f).encode() for f in files),
                           stdout=subprocess.DEVNULL, check=True)
            print(f"pass {p}: {time.perf_counter() - t:.3f} s, hsmd CPU per file "
                  f"{(b.hsmd_cpu_seconds() - c0) * 1000 / a.files:.4f} ms", flush=True)
        time.sleep(0.5)
        tool.send_signal(signal.SIGINT)
        tool.wait()
    finally:
        b.cleanup()
        # Seen with perf attached: umount finds the filesystem busy for 10-20 s after.
        for _ in range(60):
            if str(b.mnt) not in Path("/proc/mounts").read_text():
                break
            time.sleep(1)
            subprocess.run(["umount", str(b.mnt)])
        subprocess.run(["rm", "-rf", str(b.base)])


if __name__ == "__main__":
    main()
