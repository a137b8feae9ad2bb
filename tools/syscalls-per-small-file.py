#!/usr/bin/env python3
"""Counts hsmd's syscalls while released small files are read, one `cat` each.

    python3 tools/syscalls-per-small-file.py --bindir .build-rel/release [--files 500]

Uses scripts/bench.py's own filesystem and hsmd (a loop-mounted ext4 under a temporary
folder, removed at the end), releases FILES files of 16 KiB, drops caches, and runs
`strace -f -c` on hsmd while every file is read. Prints strace's table and the calls per
file. strace slows hsmd: this counts calls, it does not time them.
"""
import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--files", type=int, default=500)
    a = ap.parse_args()
    out = Path(tempfile.mkstemp(prefix="hsmd-strace-")[1])
    b = bench.Bench(a.bindir, True, 1, "2G")
    try:
        b.start()
        root = b.mnt / "small"
        b.write_small_files(root, a.files, seed=1)
        b.ctl("migrate", root)
        bench.drop_caches()
        st = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(b.proc.pid)])
        time.sleep(1)  # strace attached to every thread
        files = sorted(root.glob("*/*"))
        subprocess.run(["xargs", "-0", "-n", "1", "cat"], input=b"\0".join(str(p).encode() for p in files),
                       stdout=subprocess.DEVNULL, check=True)
        time.sleep(0.5)
        st.send_signal(signal.SIGINT)
        st.wait()
    finally:
        b.cleanup()
    text = out.read_text()
    out.unlink()
    print(text)
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[3].isdigit():
            print(f"{f[-1]:>20}: {int(f[3]) / a.files:5.2f} per file")


if __name__ == "__main__":
    main()
