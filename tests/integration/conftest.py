"""Fixtures for hsmd's integration tests.

Each test gets its own loop-mounted ext4 image and posix store under a temporary folder,
and its own hsmd process. Everything is torn down (hsmd stopped by pid, filesystem
unmounted, folder removed) even when the test fails. Only filesystems created here are
ever marked by hsmd.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("HSMD_BIN_DIR", ROOT / ".build" / "debug"))
HSMD = BIN / "hsmd"
HSMCTL = BIN / "hsmctl"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def drop_caches():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class HSM:
    """One managed filesystem, one store, one hsmd."""

    MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}

    def __init__(self, base: Path, image_size="1G", fstype="ext4"):
        self.base = base
        self.image = base / "fs.img"
        self.mnt = base / "mnt"
        self.store = base / "store"
        self.state_dir = base / "state"
        self.socket = base / "hsmd.sock"
        self.config = base / "hsmd.toml"
        self.log = base / "hsmd.log"
        self.proc = None
        self.mounted = False
        self.fstype = fstype
        self.s3 = None  # an S3Bucket when the store is s3 (use_s3)
        self.mnt.mkdir()
        self.store.mkdir()
        subprocess.run(["truncate", "-s", image_size, str(self.image)], check=True)
        subprocess.run([*self.MKFS[fstype], str(self.image)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)], check=True)
        self.mounted = True
        self.write_config()

    @property
    def store_kind(self):
        return "s3" if self.s3 is not None else "posix"

    def use_s3(self, bucket, endpoint=None, store_extra=""):
        """From now on the store is `bucket` (an S3Bucket), reached at `endpoint` (default
        the gateway's own); rewrites the config."""
        self.s3 = bucket
        self.s3_endpoint = endpoint or bucket.rgw.endpoint
        self.s3_extra = store_extra
        self.write_config()

    def write_config(self, extra="", store_path=None):
        if self.s3 is not None:
            assert store_path is None, "store_path is for a posix store"
            store = self.s3.store_toml(self.s3_endpoint, self.s3_extra)
        else:
            store = f'type = "posix"\npath = "{store_path or self.store}"\n'
        self.config.write_text(
            f'socket = "{self.socket}"\n'
            f'state_dir = "{self.state_dir}"\n'
            'log_level = "debug"\n'
            f"{extra}\n"
            "[[store]]\n"
            'name = "tier1"\n'
            f"{store}"
            "[[filesystem]]\n"
            f'path = "{self.mnt}"\n'
            'store = "tier1"\n'
        )

    # --- hsmd process -------------------------------------------------------------

    def start(self, timeout=20, env=None, fdstore=None, wrapper=()):
        """Starts hsmd; with `fdstore` (fdstore.FDStore) as systemd would, fds and all;
        `wrapper`: a command that execs hsmd, e.g. setpriv with a smaller bounding set."""
        assert self.proc is None
        self.logfile = open(self.log, "ab")
        argv = [*wrapper, str(HSMD), "--config", str(self.config)]
        full_env = dict(os.environ, **(env or {}))
        preexec, pass_fds = None, ()
        if fdstore is not None:
            argv, full_env, preexec, pass_fds = fdstore.launch_args(argv, full_env)
        self.proc = subprocess.Popen(argv, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=full_env, preexec_fn=preexec, pass_fds=pass_fds)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hsmd exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.socket.exists() and self.ctl("doctor", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"hsmd did not become ready:\n{self.log_text()}")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self.logfile.close()
        return code

    def wait_for_log(self, *needles, timeout=10):
        """True once every needle appears in hsmd's log (it is written just after events)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log_text()
            if all(n in text for n in needles):
                return True
            time.sleep(0.05)
        return False

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- hsmctl ---------------------------------------------------------------------

    def ctl(self, *args, check=True, user=None, timeout=300):
        cmd = [str(HSMCTL), *map(str, args)]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        env = dict(os.environ, HSMD_SOCKET=str(self.socket))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}\nhsmd log tail:\n{self.log_text()[-3000:]}")
        return r

    def status(self, path):
        """The --json status row of one file."""
        rows = json.loads(self.ctl("status", "--json", path).stdout)
        assert len(rows) == 1, rows
        return rows[0]

    def state(self, path):
        return self.status(path)["state"]

    def wait_for_state(self, path, want, timeout=10):
        """After a whole-file recall at open (cp, tar…), the marker is written once no
        other process has the file open: a moment after the program is done with it."""
        deadline = time.time() + timeout
        while (got := self.state(path)) != want:
            assert time.time() < deadline, f"{path} never became {want}: {got}"
            time.sleep(0.02)

    def migrate(self, path):
        """archive + release one file, asserting it ends up released."""
        self.ctl("archive", path)
        self.ctl("release", path)
        assert self.state(path) == "released"

    # --- files ------------------------------------------------------------------------

    def write(self, name, size=None, data=None):
        """Creates mnt/name with `data` or `size` random bytes; returns (path, sha256)."""
        p = self.mnt / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = os.urandom(size)
        p.write_bytes(data)
        return p, hashlib.sha256(data).hexdigest()

    def object_files(self):
        """The posix store's data files (see object_count, stored_bytes, damage_object for
        tests that run against either store)."""
        assert self.s3 is None, "object_files is for a posix store"
        return sorted((self.store / "objects").glob("*/*.data"))

    # --- the store, whichever it is ------------------------------------------------

    def object_count(self):
        """How many data objects the store holds."""
        if self.s3 is not None:
            return sum(1 for k in self.s3.keys() if k.endswith(".data"))
        return len(self.object_files())

    def stored_bytes(self, obj):
        """Bytes object `obj`'s data takes in the store: the posix file's allocation, the
        s3 object's length (it holds only the data blocks)."""
        if self.s3 is not None:
            return self.s3.size(self.s3.data_key(obj))
        return allocated_bytes(self.store / "objects" / obj[:2] / f"{obj}.data")

    def damage_object(self, obj, how):
        """Damages object `obj` behind hsmd's back: "corrupt-data" (64 bytes at offset 1000
        inverted), "garble-record" (not JSON), "delete-data", "delete-record", "delete"
        (both)."""
        if self.s3 is not None:
            self.s3.damage(obj, how)
            return
        d = self.store / "objects" / obj[:2]
        data, record = d / f"{obj}.data", d / f"{obj}.json"
        if how == "garble-record":
            record.write_text('{"object": "garbage"')
        elif how == "corrupt-data":
            with open(data, "r+b") as f:
                f.seek(1000)
                chunk = f.read(64)
                f.seek(1000)
                f.write(bytes(x ^ 0xFF for x in chunk))
        else:
            for q, what in ((data, "delete-data"), (record, "delete-record")):
                if how in (what, "delete"):
                    q.unlink()

    # --- teardown -----------------------------------------------------------------

    def cleanup(self):
        try:
            self.stop()
        finally:
            if self.mounted:
                for _ in range(50):
                    if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.2)
                else:
                    subprocess.run(["umount", "-l", str(self.mnt)])
                self.mounted = False
            shutil.rmtree(self.base, ignore_errors=True)


class S3Bucket:
    """A fresh bucket on the session's gateway (boto3 for what the tests do behind hsmd's
    back); `remove` empties and deletes it."""

    PREFIX = "hsm/"

    def __init__(self, rgw):
        import uuid
        self.rgw = rgw
        self.name = "hsmd-" + uuid.uuid4().hex[:16]
        self.client = s3_client(rgw)
        self.client.create_bucket(Bucket=self.name)

    def store_toml(self, endpoint, extra=""):
        return (f'type = "s3"\nendpoint = "{endpoint}"\nbucket = "{self.name}"\nprefix = "{self.PREFIX}"\n'
                f'access_key_id = "{self.rgw.access_key}"\nsecret_access_key = "{self.rgw.secret_key}"\n{extra}')

    def data_key(self, obj):
        return f"{self.PREFIX}objects/{obj[:2]}/{obj}.data"

    def record_key(self, obj):
        return f"{self.PREFIX}objects/{obj[:2]}/{obj}.json"

    def keys(self):
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.PREFIX + "objects/"):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def size(self, key):
        return self.client.head_object(Bucket=self.name, Key=key)["ContentLength"]

    def damage(self, obj, how):
        if how == "garble-record":
            self.client.put_object(Bucket=self.name, Key=self.record_key(obj), Body=b'{"object": "garbage"')
        elif how == "corrupt-data":
            key = self.data_key(obj)
            data = bytearray(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())
            for i in range(1000, 1064):
                data[i] ^= 0xFF
            self.client.put_object(Bucket=self.name, Key=key, Body=bytes(data))
        else:
            for key, what in ((self.data_key(obj), "delete-data"), (self.record_key(obj), "delete-record")):
                if how in (what, "delete"):
                    self.client.delete_object(Bucket=self.name, Key=key)

    def remove(self):
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for o in page.get("Contents", []):
                self.client.delete_object(Bucket=self.name, Key=o["Key"])
        for u in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.name, Key=u["Key"], UploadId=u["UploadId"])
        self.client.delete_bucket(Bucket=self.name)


def s3_client(rgw):
    import boto3
    from botocore.config import Config as BotoConfig
    return boto3.client("s3", endpoint_url=rgw.endpoint, aws_access_key_id=rgw.access_key,
                        aws_secret_access_key=rgw.secret_key, region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


@pytest.fixture
def bucket(rgw):
    """The name of a fresh bucket on the session's gateway, emptied and deleted afterwards."""
    b = S3Bucket(rgw)
    try:
        yield b.name
    finally:
        b.remove()


def start_fails(h):
    """hsmd refuses to start with this config; its output."""
    p = subprocess.run([str(HSMD), "--config", str(h.config)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, f"hsmd started:\n{p.stdout}{p.stderr}"
    return p.stdout + p.stderr


@contextlib.contextmanager
def managed_filesystem(start, fstype="ext4", image_size="1G"):
    """A fresh 1 GiB (or `image_size`) ext4 (or `fstype`) with its store (and hsmd if
    `start`), always torn down."""
    base = Path(tempfile.mkdtemp(prefix="hsmd-test-"))
    h = None
    try:
        h = HSM(base, image_size=image_size, fstype=fstype)
        if start:
            h.start()
        yield h
    finally:
        if h is not None:
            h.cleanup()
        else:
            shutil.rmtree(base, ignore_errors=True)


def assert_eio(path):
    """A cold read of `path` fails with EIO and returns no bytes (never zeros)."""
    drop_caches()
    with pytest.raises(OSError) as info:
        with open(path, "rb") as f:
            data = f.read()
            pytest.fail(f"read of {path} returned {len(data)} bytes")
    assert info.value.errno == errno.EIO, info.value


@contextlib.contextmanager
def strace_hsmd(hsm, calls, out, paths=False):
    """Traces the syscalls `calls` (strace's trace= list) of every thread of the running
    hsmd into `out` until the block ends; starts the block only once every thread is
    traced. `paths`: each fd argument shows its path (`strace -y`). Yields nothing: read
    `out` afterwards."""
    pid = hsm.proc.pid
    tids = ",".join(os.listdir(f"/proc/{pid}/task"))
    strace = subprocess.Popen(["strace", "-f", "-qq", *(["-y"] if paths else []), "-o", str(out),
                               "-e", f"trace={calls}", "-p", tids],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            traced = [Path(f"/proc/{pid}/task/{t}/status").read_text() for t in os.listdir(f"/proc/{pid}/task")]
            if all(re.search(r"^TracerPid:\s+[1-9]", s, re.M) for s in traced):
                break
            time.sleep(0.05)
        yield
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=30)


@pytest.fixture
def hsm():
    """A running hsmd managing a fresh 1 GiB ext4 filesystem."""
    with managed_filesystem(start=True) as h:
        yield h


@pytest.fixture(params=["posix", "s3"])
def store_kind(request):
    """Which store a test of `hsm_store` runs against: each such test runs twice."""
    return request.param


@contextlib.contextmanager
def filesystem_on_store(request, kind, start):
    """A managed filesystem whose store is of `kind`: posix (its own directory) or s3 (a
    fresh bucket on the session's Ceph RADOS Gateway, which starts at the first s3 test)."""
    with managed_filesystem(start=False) as h:
        bucket = None
        try:
            if kind == "s3":
                bucket = S3Bucket(request.getfixturevalue("rgw"))
                h.use_s3(bucket)
            if start:
                h.start()
            yield h
        finally:
            h.stop()
            if bucket is not None:
                bucket.remove()


@pytest.fixture
def hsm_store(request, store_kind):
    """Like `hsm`, once with a posix store and once with an s3 store (`h.store_kind`);
    for tests of what every store must do. Reach the store through `object_count`,
    `stored_bytes` and `damage_object`."""
    with filesystem_on_store(request, store_kind, start=True) as h:
        yield h


@pytest.fixture
def hsm_store_stopped(request, store_kind):
    """Like `hsm_store`, but hsmd is not started."""
    with filesystem_on_store(request, store_kind, start=False) as h:
        yield h


@pytest.fixture
def hsm_btrfs():
    """Like `hsm`, on btrfs (which, unlike ext4, keeps any 64-bit time)."""
    with managed_filesystem(start=True, fstype="btrfs") as h:
        yield h


@pytest.fixture
def hsm_fs(request):
    """Like `hsm`, on the filesystem type given by indirect parametrization:
    `@pytest.mark.parametrize("hsm_fs", ["xfs", "btrfs"], indirect=True)`."""
    with managed_filesystem(start=True, fstype=getattr(request, "param", "ext4")) as h:
        yield h


@pytest.fixture
def hsm_stopped():
    """Like `hsm`, but hsmd is not started: for tests of startup and config."""
    with managed_filesystem(start=False) as h:
        yield h


@pytest.fixture(scope="session")
def rgw():
    """A real Ceph RADOS Gateway on 127.0.0.1 (tests/integration/rgw.py), started once per
    session (about 20 s) and always stopped, its folder removed."""
    from rgw import RGWCluster
    with RGWCluster.running() as cluster:
        yield cluster
