#!/usr/bin/env python3
"""The S3 section of hsmd's benchmarks (scripts/bench.py --cases s3): hsmd against a real
Ceph RADOS Gateway on 127.0.0.1 (tests/integration/rgw.py, started here and stopped at the
end), each case side by side with boto3 doing the same transfer in the same run.

  s3.1 sequential read of a released file (dd bs=1M, cold) against boto3 reading the same
       object: one streamed GET, and its TransferManager's concurrent ranged GETs (to
       nowhere, and, the floor of a recall, into a file of the managed filesystem + fsync)
  s3.2 migrate of many small files against boto3 put_object of the same files (4 threads)
  s3.3 migrate of one big file against boto3 upload_file (multipart, concurrent parts)
  s3.4 time to first byte of a released big file, cold
  s3.5 hsmd's peak RSS during a migrate of a 4 GiB file (a fresh hsmd, so VmHWM is this
       migrate's), against connections x part_size

"Cold" drops this machine's page cache; the gateway's own caches (bluestore, RGW) are
not dropped, and boto3 and hsmd read the same object alternately.
"""
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import GiB, Hsmd, MiB, drop_caches, timed, write_random  # noqa: E402
from bench import stats as raw_stats  # noqa: E402


def stats(xs):
    """bench.stats, rounded to 0.1 ms for the JSON."""
    return {k: round(v, 4) for k, v in raw_stats(xs).items()}


class S3Bench(Hsmd):
    start_tries = 400  # of 50 ms: the s3 store checks its bucket at start

    def __init__(self, bindir, quick, runs, rgw):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig
        self.bindir = Path(bindir)
        self.quick = quick
        self.runs = runs
        self.rgw = rgw
        self.s3 = boto3.client("s3", endpoint_url=rgw.endpoint, aws_access_key_id=rgw.access_key,
                               aws_secret_access_key=rgw.secret_key, region_name="us-east-1",
                               config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=16))
        # boto3's defaults: 8 MiB parts and ranges, 10 threads.
        self.transfer = TransferConfig()
        self.bucket = "hsmd-bench"
        self.s3.create_bucket(Bucket=self.bucket)
        self.base = Path(tempfile.mkdtemp(prefix="hsmd-bench-s3-"))
        self.mnt = self.base / "mnt"
        self.mnt.mkdir()
        self.sock = self.base / "hsmd.sock"
        self.proc = None
        self.results = {}
        image = "6G" if quick else "16G"
        subprocess.run(["truncate", "-s", image, str(self.base / "fs.img")], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.base / "fs.img")], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.base / "fs.img"), str(self.mnt)], check=True)
        (self.base / "hsmd.toml").write_text(
            f'socket = "{self.sock}"\nstate_dir = "{self.base}/state"\nlog_level = "warning"\n'
            f'[[store]]\nname = "bench"\ntype = "s3"\nendpoint = "{rgw.endpoint}"\nbucket = "{self.bucket}"\n'
            f'prefix = "hsm/"\naccess_key_id = "{rgw.access_key}"\nsecret_access_key = "{rgw.secret_key}"\n'
            f'[[filesystem]]\npath = "{self.mnt}"\nstore = "bench"\n')

    # --- hsmd ----------------------------------------------------------------------------

    def status_value(self, field):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def data_key(self, path):
        oid = json.loads(self.ctl("status", "--json", path).stdout)[0]["object"]
        return f"hsm/objects/{oid[:2]}/{oid}.data"

    def empty_bucket(self):
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=o["Key"])

    def cleanup(self):
        try:
            super().cleanup()
        finally:
            try:
                self.empty_bucket()
                self.s3.delete_bucket(Bucket=self.bucket)
            except Exception as e:  # noqa: BLE001 - the cluster goes away anyway
                print(f"  (bucket cleanup: {e})")

    def record(self, case, **values):
        self.results[case] = values
        print(f"  {case}: " + ", ".join(f"{k}={v}" for k, v in values.items() if not isinstance(v, (dict, list))), flush=True)

    # --- cases ---------------------------------------------------------------------------

    def boto_get_stream(self, key):
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        while body.read(MiB):
            pass

    class _Null(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return len(b)

        def seek(self, *a):
            return 0

    def boto_get_ranged(self, key):
        self.s3.download_fileobj(self.bucket, key, self._Null(), Config=self.transfer)

    def boto_get_into_file(self, key, dest):
        """The floor of any recall that writes the data back durably: boto3's ranged GETs
        into a new file of the managed filesystem, then fsync."""
        with open(dest, "wb") as f:
            self.s3.download_fileobj(self.bucket, key, f, Config=self.transfer)
            f.flush()
            os.fsync(f.fileno())

    def case1_sequential(self):
        size = 256 * MiB if self.quick else GiB
        p = self.mnt / "seq.bin"
        write_random(p, size)
        self.ctl("migrate", p)
        key = self.data_key(p)
        stream, ranged, floor, recall = [], [], [], []
        copy = self.mnt / "seq-floor.bin"
        for _ in range(self.runs):
            drop_caches()
            stream.append(timed(lambda: self.boto_get_stream(key)))
            drop_caches()
            ranged.append(timed(lambda: self.boto_get_ranged(key)))
            drop_caches()
            floor.append(timed(lambda: self.boto_get_into_file(key, copy)))
            copy.unlink()
            self.ctl("release", p)
            drop_caches()
            recall.append(timed(lambda: subprocess.run(["dd", f"if={p}", "of=/dev/null", "bs=1M"], check=True,
                                                       stderr=subprocess.DEVNULL)))
        s, g, f, r = stats(stream), stats(ranged), stats(floor), stats(recall)
        best = min(s["median"], g["median"])
        self.record("s3.1 sequential read, released", bytes=size, boto3_get_stream_s=s, boto3_ranged_get_s=g,
                    boto3_ranged_get_into_file_fsync_s=f, released_file_s=r,
                    ratio_to_ranged=round(r["median"] / g["median"], 3), ratio_to_floor=round(r["median"] / f["median"], 3),
                    ratio_to_best=round(r["median"] / best, 3), released_MBps=round(size / r["median"] / 1e6),
                    boto3_ranged_MBps=round(size / g["median"] / 1e6), boto3_stream_MBps=round(size / s["median"] / 1e6),
                    cache="cold page cache (gateway caches not dropped)")
        self.ttfb_file = p

    def case4_ttfb(self):
        p = self.ttfb_file
        times = self.ttfb(p, max(self.runs, 7))
        self.record("s3.4 time to first byte, released", bytes=os.path.getsize(p), ms=stats(times),
                    median_ms=round(statistics.median(times), 2), cache="cold")
        p.unlink()

    def make_small(self, root, n):
        import random
        rng = random.Random(6)
        blob = os.urandom(2 * MiB)
        total = 0
        for i in range(n):
            d = root / f"d{i % 16:02d}"
            d.mkdir(parents=True, exist_ok=True)
            size = int(4096 * (16 ** rng.random()))  # 4 KiB to 64 KiB
            off = rng.randrange(0, MiB)
            (d / f"f{i:05d}").write_bytes(blob[off:off + size])
            total += size
        return total

    def boto_put_tree(self, root, prefix, threads=4):
        files = sorted(q for q in root.rglob("*") if q.is_file())

        def put(q):
            with open(q, "rb") as f:
                self.s3.put_object(Bucket=self.bucket, Key=f"{prefix}/{q.relative_to(root)}", Body=f.read())

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(put, files))

    def case2_small_files(self):
        n = 200 if self.quick else 1000
        tmpl = self.base / "small-template"
        total = self.make_small(tmpl, n)
        boto, mig = [], []
        for i in range(self.runs):
            drop_caches()
            boto.append(timed(lambda: self.boto_put_tree(tmpl, f"boto-small-{i}")))
            work = self.mnt / f"small-{i}"
            shutil.copytree(tmpl, work)
            drop_caches()
            mig.append(timed(lambda: self.ctl("migrate", work, "--jobs", "4")))
            shutil.rmtree(work)
        self.empty_bucket()
        b, m = stats(boto), stats(mig)
        self.record("s3.2 migrate small files", files=n, bytes=total, boto3_put_4_threads_s=b, migrate_jobs_4_s=m,
                    ratio=round(m["median"] / b["median"], 3), migrate_files_per_s=round(n / m["median"]),
                    boto3_files_per_s=round(n / b["median"]), cache="cold sources")
        shutil.rmtree(tmpl)

    def case3_big_file(self):
        size = 256 * MiB if self.quick else GiB
        tmpl = self.base / "big-template.bin"
        write_random(tmpl, size)
        boto, mig = [], []
        for i in range(self.runs):
            drop_caches()
            boto.append(timed(lambda: self.s3.upload_file(str(tmpl), self.bucket, f"boto-big-{i}", Config=self.transfer)))
            self.s3.delete_object(Bucket=self.bucket, Key=f"boto-big-{i}")
            work = self.mnt / f"big-{i}.bin"
            shutil.copyfile(tmpl, work)
            drop_caches()
            mig.append(timed(lambda: self.ctl("migrate", work)))
            work.unlink()
        # Where a migrate's time goes: the upload (archive), then release, which reads the
        # store's copy of every block back to check it before punching (invariant 8).
        work = self.mnt / "big-split.bin"
        shutil.copyfile(tmpl, work)
        drop_caches()
        archive_s = timed(lambda: self.ctl("archive", work))
        release_s = timed(lambda: self.ctl("release", work))
        work.unlink()
        self.empty_bucket()
        b, m = stats(boto), stats(mig)
        self.record("s3.3 migrate one big file", bytes=size, boto3_upload_file_s=b, migrate_s=m,
                    one_archive_s=round(archive_s, 2), one_release_s=round(release_s, 2),
                    ratio=round(m["median"] / b["median"], 3), migrate_MBps=round(size / m["median"] / 1e6),
                    boto3_MBps=round(size / b["median"] / 1e6), cache="cold source")
        tmpl.unlink()

    def case5_rss(self):
        size = GiB if self.quick else 4 * GiB
        p = self.mnt / "rss.bin"
        write_random(p, size)
        os.sync()
        # A fresh hsmd: its VmHWM is this migrate's.
        self.stop()
        self.start()
        before = self.status_value("VmRSS")
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.status_value("VmRSS"))
                time.sleep(0.05)

        th = threading.Thread(target=sample)
        th.start()
        t = timed(lambda: self.ctl("migrate", p))
        done.set()
        th.join()
        hwm = self.status_value("VmHWM")
        self.record("s3.5 hsmd peak RSS during a big migrate", bytes=size, migrate_s=round(t, 2),
                    rss_before_MiB=round(before / 1024, 1), peak_rss_sampled_MiB=round(peak[0] / 1024, 1),
                    vmhwm_MiB=round(hwm / 1024, 1), bound_connections_x_part_size_MiB=8 * 16,
                    migrate_MBps=round(size / t / 1e6))
        p.unlink()
        self.empty_bucket()


def run(bindir, quick, runs):
    """Starts a gateway, runs the S3 cases, stops it; returns their results."""
    from rgw import RGWCluster
    os.environ.setdefault("CEPH_OSD_SIZE", str((12 if quick else 24) << 30))
    t = time.time()
    with RGWCluster.running() as rgw:
        print(f"  (Ceph RGW up in {time.time() - t:.0f} s at {rgw.endpoint})", flush=True)
        b = S3Bench(bindir, quick, runs, rgw)
        try:
            b.start()
            b.case1_sequential()
            b.case4_ttfb()
            b.case2_small_files()
            b.case3_big_file()
            b.case5_rss()
        finally:
            b.cleanup()
    return b.results


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--json", default="bench-results-s3.json")
    a = ap.parse_args()
    runs = a.runs or (3 if a.quick else 5)
    started = time.time()
    results = run(a.bindir, a.quick, runs)
    Path(a.json).write_text(json.dumps({"machine": {"nproc": os.cpu_count(), "kernel": os.uname().release,
                                                    "quick": a.quick, "runs": runs,
                                                    "seconds": round(time.time() - started)},
                                        "results": results}, indent=2))
    print(f"\nwrote {a.json}")
