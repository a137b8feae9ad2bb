"""Bad input and broken surroundings: every case must give a clear message and lose nothing.

Each test checks the message (exit status and words on stderr) and that the file's bytes,
its HSM state and the store are what they were.
"""
import errno
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import allocated_bytes, drop_caches, sha256

XATTR = "trusted.hsm"


# --- helpers -------------------------------------------------------------------------


def marker(path):
    """The raw trusted.hsm value, or None when the file has none."""
    try:
        return os.getxattr(path, XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def store_listing(hsm):
    """Every file under the store (relative names), to compare before and after; the
    store's identity file (written at hsmd's first start) aside."""
    if not hsm.store.exists():
        return []
    return sorted(str(p.relative_to(hsm.store)) for p in hsm.store.rglob("*") if p.is_file() and p.name != "hsmd-store.json")


def wait_for_log(hsm, predicate, timeout=5):
    """Waits until some line of hsmd's log satisfies `predicate`; returns that line or None."""
    deadline = time.time() + timeout
    while True:
        for line in hsm.log_text().splitlines():
            if predicate(line):
                return line
        if time.time() > deadline:
            return None
        time.sleep(0.1)


def assert_eio_on_read(path):
    """Both `cat` and Python's read must fail with EIO, never return bytes."""
    drop_caches()
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert r.returncode != 0, f"cat of {path} succeeded and returned {len(r.stdout)} bytes"
    assert b"Input/output error" in r.stderr, r.stderr
    with pytest.raises(OSError) as info:
        with open(path, "rb") as f:
            f.read()
    assert info.value.errno == errno.EIO, info.value


def assert_untouched_resident(hsm, path, digest):
    assert sha256(path) == digest
    assert marker(path) is None
    assert hsm.state(path) == "resident"


# --- missing and foreign paths -----------------------------------------------------------


def test_missing_path_is_reported_and_other_files_still_done(hsm):
    good, digest = hsm.write("good.bin", size=200_000)
    missing = hsm.mnt / "no-such-file"
    for verb in ("archive", "release", "recall", "migrate"):
        r = hsm.ctl(verb, missing, check=False)
        assert r.returncode == 1, (verb, r.returncode, r.stderr)
        assert f"hsmctl: {verb} {missing}:" in r.stderr, (verb, r.stderr)
        assert "no such file" in r.stderr.lower(), (verb, r.stderr)
        assert not missing.exists()
    r = hsm.ctl("status", missing, check=False)
    assert r.returncode == 1, r
    assert "no such file" in r.stderr.lower(), r.stderr
    # A missing path among good ones: the good one is still done, exit 1 for the rest.
    r = hsm.ctl("archive", good, missing, check=False)
    assert r.returncode == 1, r
    assert str(missing) in r.stderr and str(good) not in r.stderr, r.stderr
    assert hsm.state(good) == "archived"
    assert sha256(good) == digest
    assert len(hsm.object_files()) == 1


def test_path_outside_every_managed_filesystem(hsm):
    outside = hsm.base / "outside.bin"
    data = os.urandom(100_000)
    outside.write_bytes(data)
    digest = sha256(outside)
    for verb in ("archive", "release", "recall", "migrate"):
        r = hsm.ctl(verb, outside, check=False)
        assert r.returncode == 1, (verb, r.returncode, r.stdout, r.stderr)
        assert f"hsmctl: {verb} {outside}:" in r.stderr, (verb, r.stderr)
        assert "not on a managed filesystem" in r.stderr, (verb, r.stderr)
    r = hsm.ctl("status", outside, check=False)
    assert r.returncode == 1, r
    assert "not on a managed filesystem" in r.stderr, r.stderr
    assert sha256(outside) == digest
    assert marker(outside) is None
    assert store_listing(hsm) == []


# --- directories -----------------------------------------------------------------------


def test_directory_refused_by_archive_release_recall(hsm):
    files = [hsm.write(f"dir/f{i}.bin", size=150_000) for i in range(3)]
    d = hsm.mnt / "dir"
    for verb in ("archive", "release", "recall"):
        r = hsm.ctl(verb, d, check=False)
        assert r.returncode == 1, (verb, r.returncode, r.stdout, r.stderr)
        assert f"hsmctl: {verb} {d}:" in r.stderr, (verb, r.stderr)
        assert "is a directory" in r.stderr, (verb, r.stderr)
    for p, digest in files:
        assert_untouched_resident(hsm, p, digest)
    assert store_listing(hsm) == []


def test_directory_walked_by_migrate(hsm):
    files = [hsm.write(f"dir/f{i}.bin", size=150_000) for i in range(3)]
    files.append(hsm.write("dir/sub/deeper.bin", size=300_000))
    r = hsm.ctl("migrate", hsm.mnt / "dir", check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    for p, digest in files:
        assert hsm.state(p) == "released", p
    assert len(hsm.object_files()) == len(files)
    drop_caches()
    for p, digest in files:
        assert sha256(p) == digest, p


# --- FIFOs, sockets, devices ----------------------------------------------------------


def make_special_files(where: Path):
    where.mkdir(parents=True, exist_ok=True)
    fifo, sock, dev = where / "fifo", where / "sock", where / "null-dev"
    os.mkfifo(fifo)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
    return {fifo: stat.S_ISFIFO, sock: stat.S_ISSOCK, dev: stat.S_ISCHR}


@pytest.mark.parametrize("verb", ["archive", "release", "recall", "migrate"])
def test_special_files_named_explicitly_are_not_done(hsm, verb):
    special = make_special_files(hsm.mnt / "special")
    for p, is_kind in special.items():
        r = hsm.ctl(verb, p, check=False)
        assert r.returncode == 1, (verb, p.name, r.returncode, r.stdout, r.stderr)
        assert f"hsmctl: {verb} {p}:" in r.stderr, (verb, p.name, r.stderr)
        assert "not a regular file, skipped" in r.stderr, (verb, p.name, r.stderr)
        assert is_kind(os.lstat(p).st_mode), p
        assert marker(p) is None, p
    assert store_listing(hsm) == []


def test_special_files_named_explicitly_json_outcome(hsm):
    special = make_special_files(hsm.mnt / "special")
    r = hsm.ctl("archive", "--json", *special, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["summary"]["done"] == 0
    assert out["summary"]["not_done"] == 3, out
    for f in out["files"]:
        assert f["outcome"] == "failed", f
        assert "not a regular file" in f["reason"], f
    assert store_listing(hsm) == []


def test_special_files_in_a_migrate_walk_are_skipped(hsm):
    special = make_special_files(hsm.mnt / "tree")
    regular, digest = hsm.write("tree/data.bin", size=400_000)
    r = hsm.ctl("migrate", "--json", hsm.mnt / "tree", check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    by_path = {f["path"]: f for f in out["files"]}
    for p, is_kind in special.items():
        row = by_path[str(p)]
        assert row["outcome"] == "skipped", row
        assert "not a regular file" in row["reason"], row
        assert is_kind(os.lstat(p).st_mode), p
    assert by_path[str(regular)]["outcome"] == "done"
    assert out["summary"]["done"] == 1 and out["summary"]["skipped"] == 3, out["summary"]
    assert out["summary"]["not_done"] == 0, out["summary"]
    assert hsm.state(regular) == "released"
    drop_caches()
    assert sha256(regular) == digest
    # The same walk in text mode: exit 0, the skips counted on stdout, nothing on stderr.
    r = hsm.ctl("migrate", hsm.mnt / "tree", check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "not a regular file" in r.stdout, r.stdout
    assert "hsmctl: migrate" not in r.stderr, r.stderr


# --- busy and dirty files -------------------------------------------------------------


@pytest.mark.parametrize("holder", ["this-process", "sleep-child"])
def test_release_of_a_file_open_elsewhere_is_refused_busy(hsm, holder):
    p, digest = hsm.write("busy.bin", size=3_000_000)
    hsm.ctl("archive", p)
    objects = store_listing(hsm)
    allocated = allocated_bytes(p)
    before = marker(p)
    child = None
    f = open(p, "rb")
    try:
        if holder == "sleep-child":
            child = subprocess.Popen(["sleep", "60"], stdin=f)
            f.close()
        r = hsm.ctl("release", p, check=False)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"hsmctl: release {p}:" in r.stderr, r.stderr
        assert "busy" in r.stderr, r.stderr
        assert hsm.state(p) == "archived"
        assert allocated_bytes(p) == allocated
        assert marker(p) == before
        assert sha256(p) == digest
        assert store_listing(hsm) == objects
    finally:
        f.close()
        if child is not None:
            child.kill()
            child.wait()
    # Once nobody holds it, release works.
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    assert allocated_bytes(p) < allocated
    drop_caches()
    assert sha256(p) == digest


def test_release_of_a_file_changed_after_archive_is_refused_dirty(hsm):
    p, _ = hsm.write("changing.bin", size=2_000_000)
    hsm.ctl("archive", p)
    objects = store_listing(hsm)
    with open(p, "ab") as f:
        f.write(b"!")
    digest = sha256(p)
    allocated = allocated_bytes(p)
    r = hsm.ctl("release", p, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"hsmctl: release {p}:" in r.stderr, r.stderr
    assert "dirty" in r.stderr, r.stderr
    assert hsm.state(p) == "dirty"
    assert allocated_bytes(p) == allocated
    assert sha256(p) == digest
    assert store_listing(hsm) == objects
    # Archive again, then release works and the new bytes come back.
    hsm.ctl("archive", p)
    assert hsm.state(p) == "archived"
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest
    assert os.path.getsize(p) == 2_000_001


# --- store problems -------------------------------------------------------------------


def test_archive_with_the_store_directory_missing(hsm):
    p, digest = hsm.write("a.bin", size=1_000_000)
    moved = hsm.base / "store-moved-away"
    hsm.store.rename(moved)
    r = hsm.ctl("archive", p, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"hsmctl: archive {p}:" in r.stderr, r.stderr
    assert "store" in r.stderr, r.stderr
    assert_untouched_resident(hsm, p, digest)
    assert not hsm.store.exists(), "hsmd recreated the missing store directory"
    assert [q for q in moved.rglob("*") if q.is_file() and q.name != "hsmd-store.json"] == []
    assert hsm.proc.poll() is None, "hsmd died"
    # With the store back, the same archive works.
    moved.rename(hsm.store)
    hsm.ctl("archive", p)
    assert hsm.state(p) == "archived"
    assert sha256(p) == digest


def test_archive_to_a_full_store(hsm):
    small = hsm.base / "small-store"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(small)], check=True)
    try:
        hsm.stop()
        hsm.write_config(store_path=small)
        # A new, empty store replaces tier1 on purpose: hsmd must be told (README, "The
        # store must be the store"), or it refuses an empty directory for a store it used.
        (hsm.state_dir / "stores.json").unlink()
        hsm.start()
        p, digest = hsm.write("big.bin", size=4_000_000)
        r = hsm.ctl("archive", p, check=False)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"hsmctl: archive {p}:" in r.stderr, r.stderr
        assert "no space left" in r.stderr.lower(), r.stderr
        assert_untouched_resident(hsm, p, digest)
        leftovers = [str(q) for q in small.rglob("*") if q.is_file() and q.name != "hsmd-store.json"]
        assert leftovers == [], f"left in the store: {leftovers}"
        assert hsm.proc.poll() is None, "hsmd died"
        # A file that fits still archives: the failure left the store usable.
        q, qdigest = hsm.write("small.bin", size=100_000)
        hsm.ctl("archive", q)
        assert hsm.state(q) == "archived"
        assert sha256(q) == qdigest
    finally:
        hsm.stop()
        subprocess.run(["umount", str(small)], check=False)


def test_object_deleted_from_the_store_after_release(hsm_store):
    hsm = hsm_store
    a, _ = hsm.write("a.bin", size=3_000_000)
    b, b_digest = hsm.write("b.bin", size=3_000_000)
    hsm.migrate(a)
    hsm.migrate(b)
    hsm.damage_object(hsm.status(a)["object"], "delete")
    assert_eio_on_read(a)
    assert hsm.state(a) == "damaged"
    line = wait_for_log(hsm, lambda l: str(a) in l and ("missing" in l or "No such file" in l))
    assert line, f"hsmd logged no path and cause for {a}:\n{hsm.log_text()[-3000:]}"
    # Still EIO on a second try: never zeros.
    assert_eio_on_read(a)
    # Other released files are fine, and hsmd still runs.
    assert sha256(b) == b_digest
    assert hsm.state(b) == "archived"
    assert hsm.proc.poll() is None, "hsmd died"
    assert hsm.ctl("doctor", check=False).returncode == 0


def test_object_corrupted_in_the_store(hsm_store):
    hsm = hsm_store
    a, _ = hsm.write("a.bin", size=3_000_000)
    b, b_digest = hsm.write("b.bin", size=3_000_000)
    hsm.migrate(a)
    hsm.migrate(b)
    hsm.damage_object(hsm.status(a)["object"], "corrupt-data")
    assert_eio_on_read(a)
    assert hsm.state(a) == "damaged"
    line = wait_for_log(hsm, lambda l: str(a) in l and ("checksum" in l or "corrupt" in l))
    assert line, f"hsmd logged no path and cause for {a}:\n{hsm.log_text()[-3000:]}"
    assert_eio_on_read(a)
    assert sha256(b) == b_digest
    assert hsm.proc.poll() is None, "hsmd died"


@pytest.mark.parametrize("damage", ["deadbeef", "truncated", "flipped-bit"])
def test_damaged_marker_makes_reads_fail(hsm, damage):
    a, _ = hsm.write("a.bin", size=2_000_000)
    b, b_digest = hsm.write("b.bin", size=2_000_000)
    hsm.migrate(a)
    hsm.migrate(b)
    objects = store_listing(hsm)
    raw = marker(a)
    assert raw is not None
    if damage == "deadbeef":
        bad = bytes.fromhex("deadbeef")
    elif damage == "truncated":
        bad = raw[:-1]
    else:
        bad = bytearray(raw)
        bad[20] ^= 0x01  # inside the mtime: only the checksum can tell
        bad = bytes(bad)
    os.setxattr(a, XATTR, bad)
    assert_eio_on_read(a)
    assert hsm.state(a) == "damaged"
    line = wait_for_log(hsm, lambda l: str(a) in l and "marker" in l)
    assert line, f"hsmd logged nothing about the marker of {a}:\n{hsm.log_text()[-3000:]}"
    # Nothing was "repaired" behind our back: the bad marker and the store are as we left them.
    assert marker(a) == bad
    assert store_listing(hsm) == objects
    assert sha256(b) == b_digest
    assert hsm.proc.poll() is None, "hsmd died"


# --- hsmd down, caller not root ---------------------------------------------------------


def test_hsmd_not_running(hsm):
    p, digest = hsm.write("a.bin", size=500_000)
    assert hsm.stop() == 0
    for args in (("status", p), ("status", "--json", p), ("archive", p), ("release", p),
                 ("recall", p), ("migrate", hsm.mnt)):
        r = hsm.ctl(*args, check=False)
        assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
        assert "hsmd is not running" in r.stderr, (args, r.stderr)
    assert sha256(p) == digest
    assert marker(p) is None
    assert store_listing(hsm) == []


@pytest.mark.parametrize("verb", ["archive", "release", "migrate", "recall"])
def test_caller_not_root_is_refused(hsm, verb):
    p, digest = hsm.write("a.bin", size=2_000_000)
    if verb == "release":
        hsm.ctl("archive", p)
    elif verb == "recall":
        hsm.migrate(p)
    state = hsm.state(p)
    before = marker(p)
    objects = store_listing(hsm)
    allocated = allocated_bytes(p)
    r = hsm.ctl(verb, p, check=False, user=65534)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "root" in r.stderr, r.stderr
    assert hsm.state(p) == state
    assert marker(p) == before
    assert allocated_bytes(p) == allocated
    assert store_listing(hsm) == objects
    drop_caches()
    assert sha256(p) == digest


# --- file times outside what 64-bit nanoseconds hold ------------------------------------


def test_migrate_by_age_of_files_with_times_far_in_the_past(hsm_btrfs):
    """btrfs keeps any 64-bit second. A file last used in 283 BC (-9e18 ns, which still
    fits) made hsmd's age computation overflow during `migrate --older-than` and killed
    it; one from a million years BC does not fit in nanoseconds at all (the product
    overflowed in C). The first migrates and keeps its exact times; the second is
    refused with a reason, stays resident, and hsmd keeps running."""
    hsm = hsm_btrfs
    old, old_digest = hsm.write("old.bin", size=300_000)
    ancient, ancient_digest = hsm.write("ancient.bin", size=300_000)
    recent, _ = hsm.write("recent.bin", size=300_000)
    old_ns = -9_000_000_000 * 10**9 + 123
    os.utime(old, ns=(old_ns, old_ns))
    ancient_s = -31_557_600 * 1_000_000  # about a million years before 1970
    os.utime(ancient, (ancient_s, ancient_s))
    assert os.stat(ancient).st_mtime == ancient_s, "this filesystem clamps times; the test needs btrfs"
    r = hsm.ctl("migrate", "--json", "--older-than", "1d", hsm.mnt, check=False)
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    by_path = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    assert by_path[str(old)]["outcome"] == "done", by_path
    assert by_path[str(recent)]["outcome"] == "skipped", by_path
    assert by_path[str(ancient)]["outcome"] == "failed", by_path
    assert "modification time" in by_path[str(ancient)]["reason"], by_path
    assert hsm.state(old) == "released"
    assert os.stat(old).st_mtime_ns == old_ns, "release changed the file's mtime"
    assert hsm.state(ancient) == "resident"
    assert marker(ancient) is None
    drop_caches()
    assert sha256(old) == old_digest
    assert sha256(ancient) == ancient_digest
    assert hsm.proc.poll() is None
