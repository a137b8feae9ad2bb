"""The store must be the store, and release trusts only what the store itself holds:
an identity file checked at start and before archive and release, the record and the
data re-read from the store before punching, and the old object of a re-archived file
deleted only after the new marker is durable."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import allocated_bytes, drop_caches, sha256, strace_hsmd

MiB = 1 << 20
IDENTITY = "hsmd-store.json"


@contextlib.contextmanager
def mounted_over(target: Path, kind: str, source: Path = None):
    """Mounts a tmpfs (kind "tmpfs") or a bind mount of `source` (kind "bind") over
    `target`, and always unmounts it."""
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "hsmd-test-tmpfs", str(target)]
    else:
        cmd = ["mount", "--bind", str(source), str(target)]
    subprocess.run(cmd, check=True)
    try:
        yield target
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(target)])


def has_marker(path):
    try:
        os.getxattr(path, "trusted.hsm")
        return True
    except OSError:
        return False


# --- identity ---------------------------------------------------------------------


def test_first_start_writes_a_private_identity_file_and_remembers_it(hsm):
    ident = hsm.store / IDENTITY
    content = json.loads(ident.read_text())
    assert content["store"] == "tier1"
    assert re.fullmatch(r"[0-9a-f]{32}", content["id"]), content
    assert ident.stat().st_mode & 0o777 == 0o600
    remembered = json.loads((hsm.state_dir / "stores.json").read_text())
    assert remembered["tier1"]["id"] == content["id"]
    # A restart keeps the same identity.
    hsm.stop()
    hsm.start()
    assert json.loads(ident.read_text())["id"] == content["id"]


def test_migrate_refuses_a_tmpfs_mounted_over_the_store(hsm):
    files = [hsm.write(f"t/f{i}.bin", size=300_000) for i in range(3)]
    before = {p: allocated_bytes(p) for p, _ in files}
    with mounted_over(hsm.store, "tmpfs"):
        r = hsm.ctl("migrate", hsm.mnt / "t", check=False)
        assert r.returncode == 1, r
        assert "identity" in r.stderr, r.stderr
        # Nothing went to the tmpfs, nothing was marked or released.
        assert list(hsm.store.iterdir()) == []
        for p, _ in files:
            assert not has_marker(p)
            assert allocated_bytes(p) == before[p]
        r = hsm.ctl("release", files[0][0], check=False)
        assert r.returncode == 1, r
    # The real store is back: the same run works.
    hsm.ctl("migrate", hsm.mnt / "t")
    drop_caches()
    for p, digest in files:
        assert hsm.state(p) == "released"
        assert sha256(p) == digest


def test_release_refuses_a_copy_of_the_store_mounted_over_it(hsm, tmp_path):
    # Same identity file, same objects, but not the directory hsmd verified: a copy
    # (or a snapshot, or a half-finished rsync) is not the store.
    p, digest = hsm.write("c.bin", size=3 * MiB)
    hsm.ctl("archive", p)
    copy = tmp_path / "copy"
    shutil.copytree(hsm.store, copy)
    with mounted_over(hsm.store, "bind", copy):
        r = hsm.ctl("release", p, check=False)
        assert r.returncode == 1, r
        assert "not the directory" in r.stderr, r.stderr
        assert hsm.state(p) == "archived"
    hsm.ctl("release", p)
    drop_caches()
    assert sha256(p) == digest


def test_a_store_with_another_identity_is_refused(hsm):
    p, _ = hsm.write("x.bin", size=300_000)
    ident = hsm.store / IDENTITY
    content = json.loads(ident.read_text())
    content["id"] = "0" * 32
    ident.write_text(json.dumps(content))
    r = hsm.ctl("archive", p, check=False)
    assert r.returncode == 1, r
    assert "identity" in r.stderr, r.stderr
    assert not has_marker(p)


def test_hsmd_does_not_initialise_an_empty_directory_over_a_store_it_used(hsm, tmp_path):
    """An empty bind mount (or an NFS store not mounted) at start: hsmd remembers the
    store's id in state_dir, so it starts (recalls still answer, no zeros) but refuses
    archive and release, and writes nothing into the empty directory. Once the real
    store is visible again, archive and release work without a restart."""
    p, digest = hsm.write("e.bin", size=3 * MiB)
    q, _ = hsm.write("e2.bin", size=300_000)
    hsm.migrate(p)
    hsm.stop()
    empty = tmp_path / "empty"
    empty.mkdir()
    with mounted_over(hsm.store, "bind", empty):
        hsm.start()
        assert hsm.wait_for_log("store tier1", "no identity file")
        r = hsm.ctl("archive", q, check=False)
        assert r.returncode == 1 and "identity" in r.stderr, r
        assert list(empty.iterdir()) == []
        # A released file reads as an error, never as zeros, and its marker is not
        # flagged damaged: the object is not lost, the store is away.
        drop_caches()
        with pytest.raises(OSError):
            with open(p, "rb") as f:
                f.read()
        flags = int.from_bytes(os.getxattr(p, "trusted.hsm")[6:8], "little")
        assert flags == 0, flags
    hsm.ctl("archive", q)
    drop_caches()
    assert sha256(p) == digest
    assert hsm.state(p) == "archived"


def test_a_non_empty_directory_without_identity_is_not_taken_for_a_store(hsm_stopped):
    hsm = hsm_stopped
    (hsm.store / "something-else").write_text("not a store\n")
    hsm.start()
    p, _ = hsm.write("n.bin", size=300_000)
    r = hsm.ctl("archive", p, check=False)
    assert r.returncode == 1 and "identity" in r.stderr, r
    assert not (hsm.store / IDENTITY).exists()


def test_a_store_on_tmpfs_is_warned_about_at_start(hsm_stopped):
    """The store's filesystem is looked at through the metering wrapper every store wears."""
    hsm = hsm_stopped
    with mounted_over(hsm.store, "tmpfs"):
        hsm.start()
        assert hsm.wait_for_log("is on tmpfs: its objects vanish at unmount or reboot"), hsm.log_text()[-3000:]
        hsm.stop()


# --- release verifies the store, not a cache ----------------------------------------


@pytest.mark.parametrize("damage", ["delete-record", "garble-record"])
def test_release_refuses_when_the_record_is_gone_after_archive(hsm_store, damage):
    hsm = hsm_store
    p, digest = hsm.write("r.bin", size=3 * MiB)
    hsm.ctl("archive", p)
    hsm.damage_object(hsm.status(p)["object"], damage)
    r = hsm.ctl("release", p, check=False)
    assert r.returncode == 1, r
    assert allocated_bytes(p) >= 3 * MiB
    assert hsm.status(p)["offline_bytes"] == 0
    assert sha256(p) == digest


def test_release_refuses_when_the_stored_data_is_corrupt(hsm_store):
    hsm = hsm_store
    p, digest = hsm.write("d.bin", size=3 * MiB)
    hsm.ctl("archive", p)
    hsm.damage_object(hsm.status(p)["object"], "corrupt-data")
    r = hsm.ctl("release", p, check=False)
    assert r.returncode == 1, r
    assert "store" in r.stderr, r.stderr
    assert hsm.status(p)["offline_bytes"] == 0
    assert sha256(p) == digest


# --- re-archive deletes the old object only after the new marker is durable -----------


def test_rearchive_deletes_the_old_object_only_after_the_new_marker_is_fsynced(hsm, tmp_path):
    """On ext4 an xattr change is durable once the file is fsynced: between writing the
    new marker and unlinking the old object, hsmd's thread must fsync the file."""
    p, _ = hsm.write("re.bin", size=300_000)
    hsm.ctl("archive", p)
    old = hsm.status(p)["object"]
    with open(p, "r+b") as f:
        f.write(b"changed")
    assert hsm.state(p) == "dirty"
    trace = tmp_path / "trace.txt"
    with strace_hsmd(hsm, "fsetxattr,fsync,fdatasync,unlink,unlinkat", trace):
        hsm.ctl("archive", p)
        time.sleep(0.5)
    new = hsm.status(p)["object"]
    assert new != old
    assert not any(old in f.name for f in (hsm.store / "objects").glob("*/*"))
    lines = trace.read_text().splitlines()
    marker_at = [(i, m.group(1), m.group(2)) for i, l in enumerate(lines)
                 if (m := re.match(r'(\d+)\s+fsetxattr\((\d+), "trusted.hsm"', l))]
    unlink_at = [i for i, l in enumerate(lines) if "unlink" in l and old in l]
    assert marker_at and unlink_at, lines
    first_unlink = min(unlink_at)
    tid = lines[first_unlink].split()[0]
    writes = [(i, fd) for i, t, fd in marker_at if t == tid and i < first_unlink]
    assert writes, lines
    i, fd = writes[-1]
    between = lines[i + 1:first_unlink]
    assert any(re.match(rf"{tid}\s+f(data)?sync\({fd}\)\s+= 0", l) for l in between), lines
