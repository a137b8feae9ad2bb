#!/usr/bin/env python3
"""Catalog benchmark (run through scripts/bench-catalog.sh): how long `hsmctl report`
takes on a catalog of N file rows (default 1,000,000).

Makes its own loop-mounted ext4 and posix store in a temporary folder. The catalog is
filled by `hsmd --bench-fill-catalog N` (hidden), which queues synthetic rows through
the catalog's own writer (the queue and batched transactions archive and release use):
N file rows over all six states and one object row per non-resident file, on the
temporary filesystem. The files themselves do not exist: the catalog is an index, and
report reads only the catalog, so its cost is the same. Then hsmd starts on that state
directory and `hsmctl report` (text and --json) is timed, wall clock, several times.
Everything is removed at the end.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    bindir = Path(a.bindir)
    base = Path(tempfile.mkdtemp(prefix="hsmd-bench-catalog-"))
    mnt, store, state = base / "mnt", base / "store", base / "state"
    proc, mounted = None, False
    try:
        for d in (mnt, store):
            d.mkdir()
        sh("truncate", "-s", "1G", base / "fs.img")
        sh("mkfs.ext4", "-q", "-F", base / "fs.img", stdout=subprocess.DEVNULL)
        sh("mount", "-o", "loop", base / "fs.img", mnt)
        mounted = True
        sock = base / "hsmd.sock"
        cfg = base / "hsmd.toml"
        cfg.write_text(f'socket = "{sock}"\nstate_dir = "{state}"\npremark_files = 0\njournal = false\n'
                       f'[[store]]\nname = "tier1"\ntype = "posix"\npath = "{store}"\n'
                       f'[[filesystem]]\npath = "{mnt}"\nstore = "tier1"\n')
        t = time.monotonic()
        out = sh(bindir / "hsmd", "--config", cfg, "--bench-fill-catalog", a.files, capture_output=True, text=True).stdout.strip()
        print(f"{out} (wall {time.monotonic() - t:.1f} s)")
        size = sum(p.stat().st_size for p in state.glob("catalog.sqlite*"))
        print(f"catalog files: {size / 2**20:.0f} MiB")
        sh("sync")
        log = open(base / "hsmd.log", "wb")
        t = time.monotonic()
        proc = subprocess.Popen([bindir / "hsmd", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
        env = dict(os.environ, HSMD_SOCKET=str(sock))
        while subprocess.run([bindir / "hsmctl", "doctor"], env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, (base / "hsmd.log").read_text()
            time.sleep(0.05)
        print(f"hsmd ready after {time.monotonic() - t:.2f} s (it opens the catalog; quick_check runs after, in the background)")
        for args in (["report"], ["report", "--json"]):
            times = []
            for _ in range(a.runs):
                t = time.monotonic()
                sh(bindir / "hsmctl", *args, env=env, capture_output=True, text=True)
                times.append(time.monotonic() - t)
            print(f"hsmctl {' '.join(args)}: median {statistics.median(times) * 1000:.0f} ms, "
                  f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {a.runs} runs")
        print(sh(bindir / "hsmctl", "report", env=env, capture_output=True, text=True).stdout)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if mounted:
            subprocess.run(["umount", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
