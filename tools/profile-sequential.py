#!/usr/bin/env python3
"""Profiles hsmd while `cat` (or `dd bs=1M`) reads a released file from start to end.

    python3 tools/profile-sequential.py --bindir .build-rel/release [--mib 512] [--reader cat|dd] [--mode cpu|strace|perf]

Uses scripts/bench.py's own filesystem and hsmd (a loop-mounted ext4 under a temporary
folder, removed at the end). `cpu`: wall time, hsmd's CPU time (utime + stime) and the
events that reached hsmd (`hsmctl doctor`), per GiB and per event, nothing attached;
`strace`: `strace -f -c` calls per event; `perf`: `perf record -e cpu-clock -g` into
/tmp/prof/perf.data. strace and perf slow hsmd: their times are not the `cpu` mode's.
"""
import argparse
import os
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
ap.add_argument("--mib", type=int, default=512)
ap.add_argument("--reader", default="cat", choices=["cat", "dd"])
ap.add_argument("--mode", default="cpu", choices=["cpu", "strace", "perf"])
ap.add_argument("--runs", type=int, default=3)
a = ap.parse_args()
os.makedirs("/tmp/prof", exist_ok=True)
out = Path(tempfile.mkstemp(prefix="hsmd-prof-")[1])
b = bench.Bench(a.bindir, True, 1, "4G")
size = a.mib << 20
try:
    b.start()
    p = b.mnt / "seq"
    bench.write_random(p, size)
    b.ctl("migrate", p)
    reader = ["cat", str(p)] if a.reader == "cat" else ["dd", f"if={p}", "of=/dev/null", "bs=1M"]
    for run in range(a.runs):
        b.ctl("release", p)
        bench.drop_caches()
        st = None
        if a.mode == "strace":
            st = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(b.proc.pid)])
        elif a.mode == "perf":
            st = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "10000", "-g",
                                   "-o", f"/tmp/prof/perf{run}.data", "-p", str(b.proc.pid)])
        if st:
            time.sleep(1)  # the tracer attached to every thread
        e0, c0, t0 = b.hsmd_events(), b.hsmd_cpu_seconds(), time.perf_counter()
        subprocess.run(reader, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - t0
        cpu, events = b.hsmd_cpu_seconds() - c0, b.hsmd_events() - e0
        if st:
            time.sleep(0.5)
            st.send_signal(signal.SIGINT)
            st.wait()
        gib = size / 2**30
        print(f"{a.reader} {a.mib} MiB: {wall:.3f} s, hsmd CPU {cpu:.3f} s ({cpu / gib:.3f} s/GiB), "
              f"{events} events ({events / gib:.0f}/GiB), {cpu * 1e6 / max(events, 1):.1f} µs of hsmd CPU per event")
        if a.mode == "strace":
            text = out.read_text()
            for line in text.splitlines():
                f = line.split()
                if len(f) >= 5 and f[3].isdigit():
                    print(f"{f[-1]:>20}: {int(f[3]) / max(events, 1):6.2f} per event")
finally:
    b.cleanup()
    out.unlink(missing_ok=True)
