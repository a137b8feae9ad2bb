#!/usr/bin/env python3
"""hsmd benchmarks: each case measured side by side with its baseline in one run.

Run through scripts/bench.sh (which builds hsmd in release mode first). Creates its own
loop-mounted ext4 filesystem and posix store under a temporary folder, never touches
anything else, and removes everything at the end. Prints a table and writes JSON.
"""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stats(xs):
    xs = sorted(xs)
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def write_random(path, size, chunk=8 * MiB):
    with open(path, "wb") as f:
        left = size
        block = os.urandom(min(chunk, max(size, 1)))
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            # Vary the data a little so blocks differ.
            block = block[1:] + block[:1]


class Hsmd:
    """One hsmd of a benchmark: `bindir`'s hsmd and hsmctl, with `base`/hsmd.toml, its log
    in `base`, its socket `sock`, its filesystem mounted at `mnt` (set by the subclass)."""

    start_tries = 200  # of 50 ms

    def start(self):
        self.proc = subprocess.Popen([self.bindir / "hsmd", "--config", self.base / "hsmd.toml"],
                                     stderr=open(self.base / "hsmd.log", "ab"))
        for _ in range(self.start_tries):
            if self.ctl("doctor", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("hsmd did not start:\n" + (self.base / "hsmd.log").read_text())

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            self.proc = None

    def ctl(self, *args, check=True):
        env = dict(os.environ, HSMD_SOCKET=str(self.sock))
        return subprocess.run([self.bindir / "hsmctl", *map(str, args)], env=env, check=check,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cleanup(self):
        try:
            self.stop()
        finally:
            subprocess.run(["umount", str(self.mnt)])
            shutil.rmtree(self.base, ignore_errors=True)

    def ttfb(self, p, runs):
        """Milliseconds to the first byte of `p`, released and cold, `runs` times."""
        times = []
        for _ in range(runs):
            self.ctl("release", p)
            drop_caches()
            t = time.perf_counter()
            with open(p, "rb", buffering=0) as f:
                f.read(1)
            times.append((time.perf_counter() - t) * 1000)
        return times


class Bench(Hsmd):
    def __init__(self, bindir, quick, runs, image_size, jobs=4):
        self.jobs = jobs
        self.bindir = Path(bindir)
        self.quick = quick
        self.runs = runs
        self.base = Path(tempfile.mkdtemp(prefix="hsmd-bench-"))
        self.mnt = self.base / "mnt"
        self.store = self.base / "store"
        self.sock = self.base / "hsmd.sock"
        self.mnt.mkdir()
        self.store.mkdir()
        self.proc = None
        self.peak_rss_kib = 0
        sh("truncate", "-s", image_size, self.base / "fs.img")
        sh("mkfs.ext4", "-q", "-F", self.base / "fs.img")
        sh("mount", "-o", "loop", self.base / "fs.img", self.mnt)
        (self.base / "hsmd.toml").write_text(
            f'socket = "{self.sock}"\nstate_dir = "{self.base}/state"\nlog_level = "warning"\n'
            f'[[store]]\nname = "bench"\ntype = "posix"\npath = "{self.store}"\n'
            f'[[filesystem]]\npath = "{self.mnt}"\nstore = "bench"\n')
        self.results = {}

    # --- hsmd --------------------------------------------------------------------------

    def sample_rss(self):
        if self.proc and self.proc.poll() is None:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))

    def stop(self):
        self.sample_rss()
        super().stop()

    def release(self, path):
        """Leave `path` released: archive if needed, then punch."""
        self.ctl("archive", path)
        self.ctl("release", path)

    def object_path(self, path):
        rows = json.loads(self.ctl("status", "--json", path).stdout)
        oid = rows[0]["object"]
        return self.store / "objects" / oid[:2] / f"{oid}.data"

    # --- cases -------------------------------------------------------------------------

    def record(self, case, **values):
        self.sample_rss()
        values["hsmd_peak_rss_MiB_so_far"] = round(self.peak_rss_kib / 1024, 1)
        self.results[case] = values
        print(f"  {case}: " + ", ".join(f"{k}={v}" for k, v in values.items() if not isinstance(v, (dict, list))), flush=True)

    def make_tree(self, root, count, sizes, seed):
        rng = random.Random(seed)
        blob = os.urandom(2 * MiB)
        total = 0
        for i in range(count):
            d = root / f"d{i % 64:02d}"
            d.mkdir(parents=True, exist_ok=True)
            size = sizes(rng)
            off = rng.randrange(0, MiB)
            (d / f"f{i:06d}").write_bytes(blob[off:off + size])
            total += size
        return total

    @staticmethod
    def read_tree(root):
        # find | xargs cat: real programs, few process spawns.
        sh("sh", "-c", f"find '{root}' -type f -print0 | xargs -0 cat > /dev/null")

    def case1_resident_tree(self):
        n = 2000 if self.quick else 20000
        root = self.mnt / "tree"
        total = self.make_tree(root, n, lambda r: int(4096 * (256 ** r.random())), 1)
        os.sync()
        self.read_tree(root)  # warm the page cache once; all passes read from memory
        base, first, second = [], [], []
        for _ in range(self.runs):
            self.stop()
            base.append(timed(lambda: self.read_tree(root)))
            self.start()
            first.append(timed(lambda: self.read_tree(root)))
            second.append(timed(lambda: self.read_tree(root)))
        b, f, s = stats(base), stats(first), stats(second)
        self.record("1 resident tree read", files=n, bytes=total, no_hsmd_s=b, first_pass_s=f, second_pass_s=s,
                    first_ratio=round(f["median"] / b["median"], 3), second_ratio=round(s["median"] / b["median"], 3),
                    cache="warm (page cache), all passes")
        shutil.rmtree(root)

    def case2_sequential_released(self):
        size = 256 * MiB if self.quick else 2 * GiB
        p = self.mnt / "seq.bin"
        write_random(p, size)
        self.release(p)
        obj = self.object_path(p)
        direct, recall, floor, durable, events, cat, cat_events = [], [], [], [], [], [], []
        copy = self.mnt / "seq-floor.bin"
        for _ in range(self.runs):
            drop_caches()
            direct.append(timed(lambda: sh("dd", f"if={obj}", "of=/dev/null", "bs=1M", stderr=subprocess.DEVNULL)))
            # The floor of any recall that writes the data back: copying the object into
            # a file of the managed filesystem (page cache, not flushed), with no checks.
            drop_caches()
            floor.append(timed(lambda: sh("dd", f"if={obj}", f"of={copy}", "bs=1M", stderr=subprocess.DEVNULL)))
            copy.unlink()
            # The same with recall's durability: hsmd makes each read-ahead window durable
            # (fdatasync) before its marker calls it local (docs/ARCHITECTURE.md, invariant 8).
            drop_caches()
            durable.append(timed(lambda: sh("dd", f"if={obj}", f"of={copy}", "bs=1M", "conv=fdatasync",
                                            stderr=subprocess.DEVNULL)))
            copy.unlink()
            self.ctl("release", p)
            drop_caches()
            e0 = self.hsmd_events()
            recall.append(timed(lambda: sh("dd", f"if={p}", "of=/dev/null", "bs=1M", stderr=subprocess.DEVNULL)))
            events.append((self.hsmd_events() - e0) / (size / GiB))
            # The reader is `cat`, whose smaller read calls each raise an event
            # while offline blocks remain: count them too.
            self.ctl("release", p)
            drop_caches()
            e0 = self.hsmd_events()
            cat.append(timed(lambda: sh("cat", str(p), stdout=subprocess.DEVNULL)))
            cat_events.append((self.hsmd_events() - e0) / (size / GiB))
        d, r, f, fd = stats(direct), stats(recall), stats(floor), stats(durable)
        self.record("2 sequential read, released", bytes=size, store_object_direct_s=d, released_file_s=r,
                    copy_into_file_s=f, copy_into_file_fdatasync_s=fd, events_per_GiB=round(statistics.median(events), 1),
                    released_file_cat_s=stats(cat), cat_events_per_GiB=round(statistics.median(cat_events), 1),
                    ratio_to_durable_floor=round(r["median"] / fd["median"], 3), ratio=round(r["median"] / d["median"], 3),
                    floor_ratio=round(f["median"] / d["median"], 3), ratio_to_floor=round(r["median"] / f["median"], 3),
                    released_MBps=round(size / r["median"] / 1e6), direct_MBps=round(size / d["median"] / 1e6),
                    cache="cold (drop_caches before each read)")
        p.unlink()

    def case3_ttfb(self):
        big_size = 512 * MiB if self.quick else 4 * GiB
        big, small = self.mnt / "ttfb-big.bin", self.mnt / "ttfb-small.bin"
        write_random(big, big_size)
        write_random(small, 8 * MiB)
        self.release(big)
        self.release(small)
        runs = max(self.runs, 7)
        b, s = self.ttfb(big, runs), self.ttfb(small, runs)
        self.record("3 time to first byte", big_bytes=big_size, big_ms=stats(b), small_8MiB_ms=stats(s),
                    big_median_ms=round(statistics.median(b), 2), small_median_ms=round(statistics.median(s), 2),
                    cache="cold")
        big.unlink()
        small.unlink()

    @staticmethod
    def first_pread_ms(path):
        """open + the first 4 KiB pread, in this process, cold: milliseconds."""
        drop_caches()
        t = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, 4096, 0)
        finally:
            ms = (time.perf_counter() - t) * 1000
            os.close(fd)
        assert len(data) > 0, f"first pread of {path} returned nothing"
        return ms

    def case11_first_byte(self):
        """Issue 11 target 2: open + first pread of a released file against the same of its
        stored object (the floor), for a small and a large file, alternating in one run."""
        sizes = {"small": 16 * 1024, "large": 512 * MiB if self.quick else 4 * GiB}
        runs = max(self.runs, 7)
        out = {}
        for name, size in sizes.items():
            p = self.mnt / f"first-byte-{name}.bin"
            write_random(p, size)
            self.release(p)
            obj = self.object_path(p)
            floor, hsmd = [], []
            for _ in range(runs):
                floor.append(self.first_pread_ms(obj))
                self.ctl("release", p)
                hsmd.append(self.first_pread_ms(p))
            f, h = stats(floor), stats(hsmd)
            out[name] = {"bytes": size, "floor_ms": f, "hsmd_ms": h, "ratio": round(h["median"] / f["median"], 2)}
            p.unlink()
        self.record("11 first byte in one process", small=out["small"], large=out["large"],
                    small_ratio=out["small"]["ratio"], large_ratio=out["large"]["ratio"],
                    small_ms=round(out["small"]["hsmd_ms"]["median"], 3),
                    small_floor_ms=round(out["small"]["floor_ms"]["median"], 3),
                    large_ms=round(out["large"]["hsmd_ms"]["median"], 3),
                    large_floor_ms=round(out["large"]["floor_ms"]["median"], 3),
                    large_bytes=sizes["large"], cache="cold (drop_caches before each open)")
    def hsmd_io(self):
        """hsmd's (rchar, wchar) from /proc/PID/io: bytes its read and write calls moved.
        During a recall nearly all of rchar is the store and of wchar the managed file."""
        fields = dict(line.split(": ") for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines())
        return int(fields["rchar"]), int(fields["wchar"])

    def case4_random_reads(self):
        """Random 4 KiB preads of a released file against the same preads of the stored
        object (the floor), cold; a fresh file each run, so that no run finds anything an
        earlier one left (record cache, page cache). Local bytes: what hsmd
        wrote (wchar) and what the file holds (st_blocks) after the run; store bytes: what
        hsmd read (rchar). Then the same preads again, cold: their pages are local now, and
        a second pass that still read the store would show in its store bytes."""
        size = 256 * MiB if self.quick else GiB
        reads = 200 if self.quick else 500
        p = self.mnt / "random.bin"
        runs = {k: [] for k in ("total", "p50", "p99", "floor_total", "floor_p50", "floor_p99", "written", "allocated", "store",
                                "again_total", "again_p50", "again_store")}

        def preads(path, offsets):
            lat = []
            with open(path, "rb", buffering=0) as f:
                for off in offsets:
                    t = time.perf_counter()
                    assert len(os.pread(f.fileno(), 4096, off)) == 4096
                    lat.append((time.perf_counter() - t) * 1000)
            return lat

        for run in range(self.runs):
            write_random(p, size)
            self.release(p)
            obj = self.object_path(p)
            rng = random.Random(4 + run)
            offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(reads)]
            drop_caches()
            r0, w0 = self.hsmd_io()
            lat = preads(p, offsets)
            r1, w1 = self.hsmd_io()
            drop_caches()
            again = preads(p, offsets)
            r2, _ = self.hsmd_io()
            drop_caches()
            floor = preads(obj, offsets)
            read = reads * 4096
            runs["total"].append(sum(lat) / 1000)
            runs["p50"].append(percentile(lat, 50))
            runs["p99"].append(percentile(lat, 99))
            runs["floor_total"].append(sum(floor) / 1000)
            runs["floor_p50"].append(percentile(floor, 50))
            runs["floor_p99"].append(percentile(floor, 99))
            runs["written"].append((w1 - w0) / read)
            runs["allocated"].append(os.stat(p).st_blocks * 512 / read)
            runs["store"].append((r1 - r0) / read)
            runs["again_total"].append(sum(again) / 1000)
            runs["again_p50"].append(percentile(again, 50))
            runs["again_store"].append((r2 - r1) / read)
            p.unlink()
        m = {k: statistics.median(v) for k, v in runs.items()}
        self.record("4 random 4 KiB reads, released", bytes=size, reads=reads, runs=self.runs,
                    total_s=round(m["total"], 4), floor_total_s=round(m["floor_total"], 4),
                    total_over_floor=round(m["total"] / m["floor_total"], 2),
                    p50_ms=round(m["p50"], 3), p99_ms=round(m["p99"], 3),
                    floor_p50_ms=round(m["floor_p50"], 3), floor_p99_ms=round(m["floor_p99"], 3),
                    p99_over_floor_p99=round(m["p99"] / m["floor_p99"], 2),
                    local_written_over_read=round(m["written"], 2), local_allocated_over_read=round(m["allocated"], 2),
                    store_read_over_read=round(m["store"], 2),
                    recalled_over_read=round(m["allocated"], 1),
                    second_pass_total_s=round(m["again_total"], 4),
                    second_pass_over_floor=round(m["again_total"] / m["floor_total"], 2),
                    second_pass_p50_ms=round(m["again_p50"], 3),
                    second_pass_store_read_over_read=round(m["again_store"], 2), cache="cold; medians of the runs")

    def case5_tar(self):
        n = 2000 if self.quick else 10000
        root = self.mnt / "tartree"
        self.make_tree(root, n, lambda r: 16384, 5)
        os.sync()
        resident, released = [], []
        tar = f"tar cf - -C '{root}' . | wc -c > /dev/null"
        for _ in range(self.runs):
            drop_caches()
            resident.append(timed(lambda: sh("sh", "-c", tar)))
        self.ctl("migrate", root, "--jobs", "2")
        for _ in range(self.runs):
            drop_caches()
            released.append(timed(lambda: sh("sh", "-c", tar)))
            self.ctl("migrate", root, "--jobs", "2")
        a, b = stats(resident), stats(released)
        self.record("5 tar of 16 KiB files", files=n, resident_s=a, released_s=b,
                    resident_files_per_s=round(n / a["median"]), released_files_per_s=round(n / b["median"]),
                    ratio=round(b["median"] / a["median"], 2), cache="cold")
        shutil.rmtree(root)

    def case6_migrate(self):
        n = 2000 if self.quick else 10000
        big = 256 * MiB if self.quick else 2 * GiB
        tmpl = self.mnt / "mig-template"
        small_bytes = self.make_tree(tmpl, n, lambda r: int(4096 * (16 ** r.random())), 6)
        write_random(tmpl / "big.bin", big)
        total = small_bytes + big
        os.sync()
        cp_times, mig_times = [], []
        for i in range(self.runs):
            dst = self.store / f"cp-{i}"
            drop_caches()
            cp_times.append(timed(lambda: (sh("cp", "-a", tmpl, dst), os.sync())))
            shutil.rmtree(dst)
            work = self.mnt / f"mig-{i}"
            sh("cp", "-a", "--reflink=never", tmpl, work)
            drop_caches()
            mig_times.append(timed(lambda: self.ctl("migrate", work, "--jobs", str(self.jobs))))
            shutil.rmtree(work)
            shutil.rmtree(self.store / "objects", ignore_errors=True)
        c, m = stats(cp_times), stats(mig_times)
        self.record("6 migrate small files + one big file", files=n + 1, bytes=total, cp_a_sync_s=c, migrate_s=m,
                    migrate_files_per_s=round((n + 1) / m["median"]), migrate_MBps=round(total / m["median"] / 1e6),
                    ratio=round(m["median"] / c["median"], 2), jobs=self.jobs, cache="cold sources")
        shutil.rmtree(tmpl)

    def case7_concurrent(self):
        size = 64 * MiB if self.quick else 256 * MiB
        files = [self.mnt / f"conc{i}.bin" for i in range(8)]
        for p in files:
            write_random(p, size)
            self.release(p)
        objects = [self.object_path(p) for p in files]
        copies = [self.mnt / f"conc{i}-floor.bin" for i in range(8)]
        one, eight, floor, durable = [], [], [], []

        def at_once(commands):
            """Seconds until every one of `commands`, started together, has ended."""
            t = time.perf_counter()
            procs = [subprocess.Popen(c, stderr=subprocess.DEVNULL) for c in commands]
            for pr in procs:
                pr.wait()
            return time.perf_counter() - t

        for _ in range(self.runs):
            # Issue 11's floor for target 5: the same eight streams copied from the store
            # objects into new files of the managed filesystem at once, with no checks;
            # then with recall's guarantee (invariant 8): each copy on disk before it ends.
            for extra, times in (([], floor), (["conv=fdatasync"], durable)):
                drop_caches()
                times.append(at_once([["dd", f"if={o}", f"of={c}", "bs=1M", *extra] for o, c in zip(objects, copies)]))
                for c in copies:
                    c.unlink()
            for p in files:
                self.ctl("release", p)
            drop_caches()
            one.append(timed(lambda: sh("dd", f"if={files[0]}", "of=/dev/null", "bs=1M", stderr=subprocess.DEVNULL)))
            for p in files:
                self.ctl("release", p)
            drop_caches()
            eight.append(at_once([["dd", f"if={p}", "of=/dev/null", "bs=1M"] for p in files]))
        o, e, f, fd = stats(one), stats(eight), stats(floor), stats(durable)
        one_mbps = size / o["median"] / 1e6
        eight_mbps = 8 * size / e["median"] / 1e6
        floor_mbps = 8 * size / f["median"] / 1e6
        self.record("7 concurrent readers of released files", bytes_each=size, one_reader_MBps=round(one_mbps),
                    eight_readers_MBps=round(eight_mbps), scaling=round(eight_mbps / one_mbps, 2),
                    eight_readers_s=e, floor_eight_copies_s=f, floor_eight_copies_MBps=round(floor_mbps),
                    aggregate_over_floor=round(eight_mbps / floor_mbps, 3), floor_eight_durable_copies_s=fd,
                    floor_eight_durable_copies_MBps=round(8 * size / fd["median"] / 1e6),
                    aggregate_over_durable_floor=round(eight_mbps / (8 * size / fd["median"] / 1e6), 3), cache="cold")
        for p in files:
            p.unlink()

    def case8_reads_during_migrate(self):
        big = 512 * MiB if self.quick else 4 * GiB
        n = 500
        root = self.mnt / "hot"
        self.make_tree(root, n, lambda r: 8192, 8)
        paths = sorted(root.rglob("f*"))
        p = self.mnt / "migrating.bin"
        write_random(p, big)
        os.sync()

        def probe(stop_when):
            lat = []
            rng = random.Random(8)
            while not stop_when():
                q = paths[rng.randrange(len(paths))]
                t = time.perf_counter()
                with open(q, "rb") as f:
                    f.read()
                lat.append((time.perf_counter() - t) * 1000)
                time.sleep(0.005)
            return lat

        drop_caches()
        deadline = time.time() + (5 if self.quick else 15)
        quiet = probe(lambda: time.time() > deadline)
        drop_caches()
        done = threading.Event()
        th = threading.Thread(target=lambda: (self.ctl("migrate", p), done.set()))
        t0 = time.time()
        th.start()
        busy = probe(done.is_set)
        th.join()
        migrate_s = time.time() - t0
        self.record("8 reads of resident files during a big migrate", migrate_bytes=big, migrate_s=round(migrate_s, 1),
                    quiet_p99_ms=round(percentile(quiet, 99), 2), quiet_max_ms=round(max(quiet), 2),
                    busy_p99_ms=round(percentile(busy, 99), 2), busy_max_ms=round(max(busy), 2),
                    busy_samples=len(busy), cache="cold")
        p.unlink()
        shutil.rmtree(root)


    def hsmd_cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hsmd_events(self):
        import re
        return int(re.search(r"(\d+) events\)", self.ctl("doctor").stdout).group(1))

    @staticmethod
    def write_small_files(root, count, seed):
        """`count` files of 16 KiB of seeded random bytes, 100 per directory under root:
        the small-files workload of case 10 and of the tools that profile it."""
        rng = random.Random(seed)
        for i in range(count):
            d = root / f"d{i // 100}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(rng.randbytes(16 * 1024))

    def case10_small_files(self):
        """Released 16 KiB files, each read by its own cat: time against cat of the stored
        objects (the floor), events reaching hsmd and hsmd CPU per file."""
        n = 1000 if self.quick else 5000
        root = self.mnt / "small"
        self.write_small_files(root, n, seed=10)
        objects_before = set(self.store.glob("objects/*/*.data"))
        self.ctl("migrate", root)
        objects = sorted(set(self.store.glob("objects/*/*.data")) - objects_before)
        files = sorted(root.glob("*/*"))
        assert len(objects) == n, f"{len(objects)} objects for {n} files"

        def cat_each(paths):
            subprocess.run(["xargs", "-0", "-n", "1", "cat"], input=b"\0".join(str(p).encode() for p in paths),
                           stdout=subprocess.DEVNULL, check=True)

        floor, hsmd, events, cpu = [], [], [], []
        for _ in range(self.runs):
            drop_caches()
            floor.append(timed(lambda: cat_each(objects)))
            self.ctl("migrate", root)
            drop_caches()
            e0, c0 = self.hsmd_events(), self.hsmd_cpu_seconds()
            hsmd.append(timed(lambda: cat_each(files)))
            events.append((self.hsmd_events() - e0) / n)
            cpu.append((self.hsmd_cpu_seconds() - c0) * 1000 / n)
        f, h = stats(floor), stats(hsmd)
        self.record("10 small released files", files=n, file_KiB=16, floor_s=f, hsmd_s=h,
                    ratio=round(h["median"] / f["median"], 3), files_per_s=round(n / h["median"]),
                    events_per_file=round(statistics.median(events), 3),
                    hsmd_cpu_ms_per_file=round(statistics.median(cpu), 4), cache="cold (drop_caches before each pass)")
        shutil.rmtree(root)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--json", default="bench-results.json")
    ap.add_argument("--cases", default="1,2,3,4,5,6,7,8,10,11,s3",
                    help="s3: the S3 section against a real Ceph RGW (scripts/bench_s3.py)")
    ap.add_argument("--jobs", type=int, default=4, help="hsmctl migrate --jobs in case 6")
    a = ap.parse_args()
    runs = a.runs or (3 if a.quick else 5)
    cases = a.cases.split(",")
    started = time.time()
    s3_results = {}
    if "s3" in cases:
        # First, on a machine not yet filled by the posix cases' files; its own hsmd.
        cases.remove("s3")
        import bench_s3
        s3_results = bench_s3.run(a.bindir, a.quick, runs)
    b = Bench(a.bindir, a.quick, runs, "8G" if a.quick else "24G", jobs=a.jobs)
    b.results.update(s3_results)
    try:
        b.start()
        for c in cases:
            fn = {"1": b.case1_resident_tree, "2": b.case2_sequential_released, "3": b.case3_ttfb,
                  "4": b.case4_random_reads, "5": b.case5_tar, "6": b.case6_migrate, "7": b.case7_concurrent,
                  "8": b.case8_reads_during_migrate, "10": b.case10_small_files,
                  "11": b.case11_first_byte}[c]
            if b.proc is None:
                b.start()
            fn()
        b.sample_rss()
        b.results["9 hsmd peak RSS"] = {"peak_rss_MiB": round(b.peak_rss_kib / 1024, 1)}
        print(f"  9 hsmd peak RSS: {b.peak_rss_kib / 1024:.1f} MiB")
    finally:
        b.cleanup()
    machine = {"nproc": os.cpu_count(), "kernel": os.uname().release,
               "mem_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
               "quick": a.quick, "runs": runs, "seconds": round(time.time() - started)}
    out = {"machine": machine, "results": b.results}
    Path(a.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {a.json} ({machine['seconds']} s)")


if __name__ == "__main__":
    main()
