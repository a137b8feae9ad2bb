#!/usr/bin/env python3
"""s3.1 (sequential read of a released file, cold) for several builds or settings side by
side in one gateway session: each round reads the object with boto3's ranged GETs to
nowhere, then releases the file and reads it with `dd bs=1M` under each side's hsmd in
turn (restarted on the same filesystem and bucket). Prints each round, hsmd's CPU seconds
per side and the medians with their ratio to boto3's.

  python3 scripts/bench_s3_ab.py SIDES ROUNDS SIZE_MiB
  SIDES: comma-separated bin dirs (release builds of hsmd and hsmctl), each optionally
         followed by @ and top-level config lines joined by commas, e.g.
         /var/tmp/bin-b@readahead_max="256M"
  WARM=1      write and free 2 GiB just before each timed side, so that each finds memory
              the host still backs (docs/KERNEL-FACTS.md: first touch of reclaimed memory)
  TRACE=LIST  strace -e trace=LIST of hsmd in the last round (/var/tmp/s3ab-trace-SIDE.txt)
  PERF=1      perf record -e cpu-clock -g of hsmd in the last round (/var/tmp/s3ab-SIDE.data)
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "scripts"))
from bench import MiB, drop_caches, timed, write_random  # noqa: E402
import bench_s3  # noqa: E402
from rgw import RGWCluster  # noqa: E402

PROBE = Path(tempfile.gettempdir()) / "hsmd-probe-first-touch"


def warm():
    if os.environ.get("WARM"):
        subprocess.run([str(PROBE), "2", "1"], check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sides = sys.argv[1].split(",")
    rounds, size = int(sys.argv[2]), int(sys.argv[3]) * MiB
    if os.environ.get("WARM"):
        subprocess.run(["cc", "-O2", "-o", str(PROBE), str(ROOT / "tools" / "probe-first-touch.c")], check=True)
    trace, perf = os.environ.get("TRACE"), os.environ.get("PERF")
    os.environ.setdefault("CEPH_OSD_SIZE", str(12 << 30))
    with RGWCluster.running() as rgw:
        b = bench_s3.S3Bench(sides[0].partition("@")[0], True, 1, rgw)
        try:
            config = b.base / "hsmd.toml"
            base_config = config.read_text()
            b.start()
            p = b.mnt / "seq.bin"
            write_random(p, size)
            b.ctl("migrate", p)
            key = b.data_key(p)
            b.stop()
            times = {"boto3": []}
            cpus = {}
            for r in range(rounds):
                drop_caches()
                warm()
                times["boto3"].append(timed(lambda: b.boto_get_ranged(key)))
                for i, side in enumerate(sides):
                    bindir, _, extra = side.partition("@")
                    config.write_text((extra.replace(",", "\n") + "\n" if extra else "") + base_config)
                    b.bindir = Path(bindir)
                    b.start()
                    b.ctl("release", p)
                    drop_caches()
                    warm()
                    last = r == rounds - 1
                    watchers = []
                    if trace and last:
                        watchers.append(subprocess.Popen(["strace", "-f", "-tt", "-T", "--seccomp-bpf", "-e", "trace=" + trace,
                                                          "-o", f"/var/tmp/s3ab-trace-{i}.txt", "-p", str(b.proc.pid)]))
                    if perf and last:
                        watchers.append(subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", f"/var/tmp/s3ab-{i}.data",
                                                          "-p", str(b.proc.pid)], stderr=subprocess.DEVNULL))
                    if watchers:
                        time.sleep(1)
                    c0 = cpu_seconds(b.proc.pid)
                    times.setdefault(side, []).append(timed(lambda: subprocess.run(
                        ["dd", f"if={p}", "of=/dev/null", "bs=1M"], check=True, stderr=subprocess.DEVNULL)))
                    cpus.setdefault(side, []).append(round(cpu_seconds(b.proc.pid) - c0, 2))
                    for w in watchers:
                        w.send_signal(2)
                        w.wait()
                    b.stop()
                print(r, {k: round(v[-1], 3) for k, v in times.items()}, "load", round(os.getloadavg()[0], 1), flush=True)
            print("hsmd CPU seconds per read:", cpus)
            floor = statistics.median(times["boto3"])
            for k, v in times.items():
                print(k, "median", round(statistics.median(v), 3), "s, ratio", round(statistics.median(v) / floor, 3),
                      "per round", [round(x / f, 2) for x, f in zip(v, times["boto3"])])
        finally:
            b.cleanup()


if __name__ == "__main__":
    main()
