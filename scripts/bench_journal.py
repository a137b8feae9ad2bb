#!/usr/bin/env python3
"""Change-journal benchmark (run through scripts/bench-journal.sh).

Creates its own loop-mounted ext4 and posix store under a temporary folder, marks only
that filesystem, and removes everything at the end. Each run, on an idle filesystem:
untar a tree (create + write), rename every file into a sibling directory, chmod every
file, then delete the tree. Runs alternate journal on / journal off (the order reversed
every other run); each journal-on run starts a new epoch first, so it pays for the first
event of every directory. Besides the ratio of the medians it reports the median of the
per-run ratios (on / off of the same run), which a slow drift of the machine's speed
does not move. --compare-bindir DIR also runs another build's hsmd with the journal on,
in the same rotation, so two versions are compared side by side. --floor also runs
tools/probe-journal-floor.c (the cheapest listener that keeps the journal's marks: one
group, ignore marks placed from the reading thread, no database) beside hsmd with its
journal off: what the kernel alone costs.
"""
import argparse
import json
import os
import re
import resource
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
    """Runs the workload; returns tar's system CPU time (s)."""
    root = mnt / "tree"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
    sh("tar", "-xf", tarball, "-C", mnt)
    tar_sys = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - before
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
    return tar_sys


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
    ap.add_argument("--compare-bindir", help="another build's bin directory, run with the journal on alongside")
    ap.add_argument("--floor", action="store_true", help="also run tools/probe-journal-floor beside hsmd with its journal off")
    ap.add_argument("--perf", metavar="DIR", help="record each timed run with `perf record -a -g` into DIR/<mode>-<run>.data")
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
    # (label, bin directory, hsmd's journal on?, floor listener beside it?)
    modes = [("on", a.bindir, True, False), ("off", a.bindir, False, False)]
    if a.compare_bindir:
        modes.append(("compared", a.compare_bindir, True, False))
    floor_exe = base / "probe-journal-floor"
    if a.floor:
        sh("cc", "-O2", "-o", floor_exe, Path(__file__).resolve().parent.parent / "tools/probe-journal-floor.c")
        modes.append(("floor", a.bindir, False, True))
    # One record per timed run, by mode: seconds, tar's system time, and what the journal
    # (or the floor listener) reported for that run.
    runs = {m[0]: [] for m in modes}
    d = helper = None
    try:
        tarball = base / "tree.tar"
        make_tarball(tarball, a.files, a.per_dir)
        for run in range(a.runs):
            for label, bindir, journal, floor in modes if run % 2 == 0 else list(reversed(modes)):
                d = Daemon(base, bindir, mnt, store)
                d.start(journal)
                if journal:
                    d.ctl("journal", "snapshot")
                if floor:
                    helper = subprocess.Popen([floor_exe, mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    if helper.stdout.readline().strip() != "ready":
                        raise SystemExit("probe-journal-floor did not start: " + helper.stderr.read())
                sh("sync")
                recorder = None
                if a.perf:
                    Path(a.perf).mkdir(parents=True, exist_ok=True)
                    recorder = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "2000", "-o", Path(a.perf) / f"{label}-{run + 1}.data"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                t = time.perf_counter()
                r = {"tar_system_seconds": workload(mnt, tarball)}
                r["seconds"] = time.perf_counter() - t
                if recorder:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait()
                if floor:
                    helper.send_signal(signal.SIGTERM)
                    found = re.findall(r"(\d+) events", helper.communicate(timeout=30)[1])
                    helper = None
                    r["events_read"] = int(found[-1]) if found else None
                if journal:
                    st = json.loads(d.ctl("journal", "status", "--json").stdout)[0]
                    r["transactions"], r["directories"] = st["transactions"], st["directories"]
                before = d.log.read_text() if d.log.exists() else ""
                d.stop()
                found = re.findall(r"journal stopped cleanly: (\d+) events read", d.log.read_text()[len(before):])
                d = None
                if found:
                    r["events_read"] = int(found[-1])
                runs[label].append(r)
                print(f"run {run + 1} {label}: {r['seconds']:.2f} s", flush=True)
    finally:
        if helper:
            helper.kill()
            helper.wait()
        if d:
            d.stop()
        subprocess.run(["umount", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)

    def median(label, field):
        return statistics.median(r[field] for r in runs[label])

    off = median("off", "seconds")
    result = {"files": a.files, "directories": a.files // a.per_dir, "runs": a.runs, "modes": {}}
    print(f"\n{a.files} files in {a.files // a.per_dir} directories; create+write (tar -x), rename, chmod, unlink = {a.files * 4} file operations per run")
    for label, bindir, journal, floor in sorted(modes, key=lambda m: m[0] != "off"):
        med = median(label, "seconds")
        per_run = [r["seconds"] / o["seconds"] for r, o in zip(runs[label], runs["off"])]
        result["modes"][label] = {
            "bindir": str(bindir), "journal": journal, "floor_listener": floor,
            "median_seconds": round(med, 3), "ratio_of_medians": round(med / off, 4),
            "median_of_run_ratios": round(statistics.median(per_run), 4), "runs": runs[label],
        }
        what = "journal off" if label == "off" else "floor listener beside hsmd without journal" if floor else f"journal on ({bindir})"
        print(f"{what}: median {med:.2f} s" + ("" if label == "off" else
              f", ratio of medians {med / off:.3f} ({(med / off - 1) * 100:+.1f}%), median of per-run ratios "
              f"{statistics.median(per_run):.3f} (each: {', '.join(f'{x:.3f}' for x in per_run)})"))
        print(f"  tar's system time, median {median(label, 'tar_system_seconds'):.2f} s")
        if journal or floor:
            print(f"  events read per run: {[r.get('events_read') for r in runs[label]]}")
        if journal:
            print(f"  database transactions per epoch: {[r['transactions'] for r in runs[label]]}; "
                  f"directories per epoch: {[r['directories'] for r in runs[label]]}")
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {a.json}")


if __name__ == "__main__":
    main()
