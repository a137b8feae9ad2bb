#!/usr/bin/env python3
"""Profiles hsmd while a program makes random 4 KiB reads of a released 256 MiB file.

    python3 tools/profile-random-reads.py --bindir .build-rel/release [--reads 4000] [--mode cpu|strace|trace|perf]

Uses scripts/bench.py's own filesystem and hsmd (a loop-mounted ext4 under a temporary
folder, removed at the end). `cpu`: hsmd's CPU time per read (utime + stime from
/proc/PID/stat) and the reads' p50/p99, nothing attached; `strace`: `strace -f -c`
calls per read; `trace`: a timed `strace -f` of every call into /tmp/prof/trace.txt;
`perf`: `perf record -e cpu-clock -g` into /tmp/prof/perf.data. strace and perf slow
hsmd: their times are not the `cpu` mode's.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402
ap = argparse.ArgumentParser()
ap.add_argument("--bindir", required=True)
ap.add_argument("--reads", type=int, default=500)
ap.add_argument("--mode", default="strace")
a = ap.parse_args()
os.makedirs("/tmp/prof", exist_ok=True)
out = Path(tempfile.mkstemp(prefix="hsmd-prof-")[1])
b = bench.Bench(a.bindir, True, 1, "2G")
try:
    b.start()
    p = b.mnt / "big"
    bench.write_random(p, 256 << 20)
    b.ctl("migrate", p)
    bench.drop_caches()
    if a.mode == "strace":
        st = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(b.proc.pid)])
    elif a.mode == "trace":
        st = subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", str(out), "-p", str(b.proc.pid)])
    elif a.mode == "cpu":
        st = subprocess.Popen(["sleep", "0"])
    else:
        st = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "20000", "-g", "-o", "/tmp/prof/perf.data", "-p", str(b.proc.pid)])
    time.sleep(1)  # the tracer attached to every thread
    rng = random.Random(1)
    fd = os.open(p, os.O_RDONLY)
    def cpu():
        f = open(f"/proc/{b.proc.pid}/stat").read().rsplit(")",1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    c0 = cpu()
    t0 = time.perf_counter(); lat = []
    for _ in range(a.reads):
        off = rng.randrange(0, (256 << 20) // 4096) * 4096
        s = time.perf_counter(); os.pread(fd, 4096, off); lat.append(time.perf_counter() - s)
    os.close(fd)
    print("hsmd cpu ms per read", (cpu() - c0) * 1e3 / a.reads)
    lat.sort()
    print("total", time.perf_counter() - t0, "p50 ms", lat[len(lat)//2]*1e3, "p99", lat[int(len(lat)*.99)]*1e3)
    time.sleep(0.5)
    st.send_signal(signal.SIGINT); st.wait()
finally:
    b.cleanup()
if a.mode in ("strace", "trace"):
    text = out.read_text(); out.unlink()
    if a.mode == "strace":
        print(text)
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 5 and f[3].isdigit():
                print(f"{f[-1]:>20}: {int(f[3]) / a.reads:5.2f} per read")
    else:
        open("/tmp/prof/trace.txt", "w").write(text)
else:
    out.unlink()  # only the strace modes write into it
