#!/usr/bin/env python3
"""Change-journal benchmark (run through scripts/bench-journal.sh).

Creates its own loop-mounted ext4 and posix store under a temporary folder, marks only
that filesystem, and removes everything at the end. Each run, on an idle filesystem:
untar a tree (create + write), rename every file into a sibling directory, chmod every
file, then delete the tree. Runs alternate journal on / journal off; each journal-on run
starts a new epoch first, so it pays for the first event of every directory.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def make_tarball(path, files, per_dir):
    """A tree of `files` small files (1-4 KiB), `per_dir` to a directory, three levels deep."""
    src = Path(tempfile.mkdtemp(prefix="hsmd-bench-src-"))
    try:
        blob = os.urandom(4096)
        for i in range(files):
            d = src / "tree" / f"g{i // (per_dir * 10)}" / f"d{i // per_dir}"
            if i % per_dir == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(blob[: 1024 + (i * 37) % 3072])
        with tarfile.open(path, "w") as t:
            t.add(src / "tree", arcname="tree")
    finally:
        shutil.rmtree(src)


def workload(mnt, tarball):
    root = mnt / "tree"
    sh("tar", "-xf", tarball, "-C", mnt)
    for g in sorted(root.iterdir()):
        dirs = sorted(g.iterdir())
        for a, b in zip(dirs, dirs[1:] + dirs[:1]):
            for f in list(a.iterdir()):
                if f.name.startswith("f"):
                    os.rename(f, b / ("m" + f.name[1:]))
    for dirpath, _, names in os.walk(root):
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o640)
    shutil.rmtree(root)


class Daemon:
    def __init__(self, base, bindir, mnt, store):
        self.base, self.bindir, self.mnt, self.store = base, Path(bindir), mnt, store
        self.socket = base / "hsmd.sock"
        self.log = base / "hsmd.log"
        self.proc = None

    def start(self, journal):
        cfg = self.base / "hsmd.toml"
        cfg.write_text(
            f'socket = "{self.socket}"\nstate_dir = "{self.base / "state"}"\nlog_level = "info"\n'
            f"journal = {'true' if journal else 'false'}\n"
            f'[[store]]\nname = "t"\ntype = "posix"\npath = "{self.store}"\n'
            f'[[filesystem]]\npath = "{self.mnt}"\nstore = "t"\n')
        self.proc = subprocess.Popen([self.bindir / "hsmd", "--config", cfg],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.socket.exists() and self.ctl("doctor", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise SystemExit("hsmd did not start:\n" + self.log.read_text()[-2000:])

    def ctl(self, *args, check=True):
        return subprocess.run([str(self.bindir / "hsmctl"), *map(str, args), "--socket", str(self.socket)],
                              capture_output=True, text=True, check=check)

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--files", type=int, default=40000)
    ap.add_argument("--per-dir", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default="bench-journal-results.json")
    a = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hsmd-bench-journal-"))
    mnt, store = base / "mnt", base / "store"
    mnt.mkdir(); store.mkdir()
    image = base / "fs.img"
    sh("truncate", "-s", "4G", image)
    sh("mkfs.ext4", "-q", "-F", image)
    sh("mount", "-o", "loop", image, mnt)
    d = Daemon(base, a.bindir, mnt, store)
    times = {True: [], False: []}
    epochs = []
    try:
        tarball = base / "tree.tar"
        make_tarball(tarball, a.files, a.per_dir)
        for run in range(a.runs):
            for journal in (True, False) if run % 2 == 0 else (False, True):
                d.start(journal)
                if journal:
                    d.ctl("journal", "snapshot")
                sh("sync")
                t = time.perf_counter()
                workload(mnt, tarball)
                times[journal].append(time.perf_counter() - t)
                if journal:
                    st = json.loads(d.ctl("journal", "status", "--json").stdout)[0]
                    epochs.append({"epoch": st["epoch"], "transactions": st["transactions"], "directories": st["directories"]})
                d.stop()
                print(f"run {run + 1} journal {'on ' if journal else 'off'}: {times[journal][-1]:.2f} s", flush=True)
        events = [int(x) for x in re.findall(r"journal stopped cleanly: (\d+) events read", d.log.read_text())]
    finally:
        d.stop()
        subprocess.run(["umount", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)

    on, off = statistics.median(times[True]), statistics.median(times[False])
    ops = a.files * 4
    result = {
        "files": a.files, "directories": a.files // a.per_dir, "runs": a.runs,
        "median_seconds_journal_on": round(on, 3), "median_seconds_journal_off": round(off, 3),
        "ratio_on_off": round(on / off, 4),
        "transactions_per_epoch": [e["transactions"] for e in epochs],
        "events_read_per_journal_run": events,
        "directories_per_epoch": [e["directories"] for e in epochs],
        "all_seconds_on": [round(x, 3) for x in times[True]], "all_seconds_off": [round(x, 3) for x in times[False]],
    }
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{a.files} files in {a.files // a.per_dir} directories; create+write (tar -x), rename, chmod, unlink = {ops} file operations per run")
    print(f"median of {a.runs}: journal on {on:.2f} s, journal off {off:.2f} s, ratio {on / off:.3f} ({(on / off - 1) * 100:+.1f}%)")
    print(f"database transactions per epoch: {result['transactions_per_epoch']}; directories recorded per epoch: {result['directories_per_epoch']}")
    print(f"events hsmd read per journal-on run: {events}")
    print(f"results: {a.json}")


if __name__ == "__main__":
    main()
