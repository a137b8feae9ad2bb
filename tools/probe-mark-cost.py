#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root. Never marks anything but its own loop fs.
# What do the change journal's marks cost the programs that change files, when no event is
# delivered? Builds tools/probe-mark-cost.c, makes a throwaway loop ext4, runs each setup
# alternately (--runs times, order reversed every other run) and prints medians.
import argparse, os, shutil, statistics, subprocess, tempfile
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("--files", type=int, default=40000)
ap.add_argument("--runs", type=int, default=5)
a = ap.parse_args()
setups = ["none", "two-groups", "one-group", "ignore-only"]
here = os.path.dirname(os.path.abspath(__file__))
base = tempfile.mkdtemp(prefix="hsmd-probe-marks-")
exe, img, mnt = base + "/probe", base + "/fs.img", base + "/mnt"
os.mkdir(mnt)
subprocess.run(["cc", "-O2", "-o", exe, here + "/probe-mark-cost.c", "-lpthread"], check=True)
subprocess.run(["truncate", "-s", "2G", img], check=True)
subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
phases = defaultdict(lambda: defaultdict(list))
try:
    for run in range(a.runs):
        for s in setups if run % 2 == 0 else reversed(setups):
            out = subprocess.run([exe, mnt, s, str(a.files)], check=True, capture_output=True, text=True).stdout.split()
            for k, v in zip(out[1::2], out[2::2]):
                phases[s][k].append(float(v))
finally:
    subprocess.run(["umount", mnt])
    shutil.rmtree(base, ignore_errors=True)
base_total = statistics.median(phases["none"]["total"])
print(f"{a.files} files, median of {a.runs} runs (seconds):")
for s in setups:
    cols = " ".join(f"{k} {statistics.median(v):.3f}" for k, v in phases[s].items())
    t = statistics.median(phases[s]["total"])
    print(f"  {s:12} {cols}  (+{(t / base_total - 1) * 100:.1f}% over none)")
