"""States stay true when hsmd dies in the middle of its work (kill -9):
an unmodified file never shows `dirty`, a modified one always does, and an interrupted
archive leaves nothing behind in the store."""
import os
import signal
import subprocess
import time

from conftest import HSMCTL, allocated_bytes, drop_caches, sha256

MiB = 1 << 20


def store_files(hsm):
    top = hsm.store / "objects"
    return sorted(str(p.relative_to(top)) for p in top.glob("*/*")) if top.exists() else []


def has_marker(path):
    try:
        os.getxattr(path, "trusted.hsm")
        return True
    except OSError:
        return False


def wait_until(cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def ctl_in_background(hsm, *args):
    env = dict(os.environ, HSMD_SOCKET=str(hsm.socket))
    return subprocess.Popen([str(HSMCTL), *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_during_release(hsm, size=256 * MiB):
    """Archives a file, starts its release with a pause between punch chunks, and kills
    hsmd with SIGKILL once the first chunk is punched. Returns (path, digest)."""
    hsm.start(env={"HSMD_TEST_PUNCH_PAUSE_MS": "3000"})
    p, digest = hsm.write("big.bin", size=size)
    hsm.ctl("archive", p)
    release = ctl_in_background(hsm, "release", p)
    try:
        assert wait_until(lambda: allocated_bytes(p) < size - 8 * MiB), "the first chunk was never punched"
        hsm.stop(sig=signal.SIGKILL)
    finally:
        release.wait(timeout=60)
    return p, digest


def test_kill_during_release_leaves_an_unmodified_file_clean(hsm_stopped):
    hsm = hsm_stopped
    p, digest = kill_during_release(hsm)
    hsm.start()
    status = hsm.status(p)
    # The punched chunk is offline, the rest is local and known to be.
    assert status["state"] == "released", status
    assert 0 < status["offline_bytes"] < 256 * MiB, status
    assert hsm.wait_for_log("interrupted release")
    drop_caches()
    assert sha256(p) == digest
    # And the next release finishes the job.
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest


def test_kill_during_release_then_a_change_while_hsmd_is_down_shows_dirty(hsm_stopped):
    hsm = hsm_stopped
    p, _ = kill_during_release(hsm)
    # With no hsmd, the write lands in a punched hole unnoticed.
    with open(p, "r+b") as f:
        f.seek(4096)
        f.write(b"new data")
    hsm.start()
    assert hsm.state(p) == "dirty"
    r = hsm.ctl("release", p, check=False)
    assert r.returncode == 1 and "dirty" in r.stderr, r


def test_kill_during_the_copy_of_an_archive_leaves_nothing_in_the_store(hsm_stopped):
    hsm = hsm_stopped
    hsm.start(env={"HSMD_TEST_ARCHIVE_PAUSE_MS": "3000"})
    p, digest = hsm.write("a.bin", size=100 * MiB)
    archive = ctl_in_background(hsm, "archive", p)
    try:
        assert wait_until(lambda: any(f.endswith(".partial") for f in store_files(hsm)))
        hsm.stop(sig=signal.SIGKILL)
    finally:
        archive.wait(timeout=60)
    assert store_files(hsm) != []
    hsm.start()
    assert store_files(hsm) == []
    assert not has_marker(p)
    assert hsm.state(p) == "resident"
    assert hsm.wait_for_log("interrupted archive")
    hsm.migrate(p)
    drop_caches()
    assert sha256(p) == digest


def test_kill_between_the_copy_and_the_marker_leaves_nothing_in_the_store(hsm_stopped):
    hsm = hsm_stopped
    hsm.start(env={"HSMD_TEST_ARCHIVE_PAUSE_MS": "3000"})
    # A name JSON must escape: the note that finds the file again keeps it whole.
    p, digest = hsm.write('b "quoted"\\\n\tname.bin', size=3 * MiB)
    archive = ctl_in_background(hsm, "archive", p)
    try:
        assert wait_until(lambda: any(f.endswith(".json") for f in store_files(hsm)))
        hsm.stop(sig=signal.SIGKILL)
    finally:
        archive.wait(timeout=60)
    assert not has_marker(p)
    hsm.start()
    assert store_files(hsm) == []
    assert hsm.state(p) == "resident"
    hsm.migrate(p)
    drop_caches()
    assert sha256(p) == digest


def test_kill_during_a_rearchive_keeps_the_object_the_marker_names(hsm_stopped):
    hsm = hsm_stopped
    hsm.start()
    p, _ = hsm.write("c.bin", size=3 * MiB)
    hsm.ctl("archive", p)
    old = hsm.status(p)["object"]
    with open(p, "r+b") as f:
        f.write(b"changed")
    digest = sha256(p)
    hsm.stop()
    hsm.start(env={"HSMD_TEST_ARCHIVE_PAUSE_MS": "3000"})
    archive = ctl_in_background(hsm, "archive", p)
    try:
        assert wait_until(lambda: len([f for f in store_files(hsm) if f.endswith(".json")]) == 2)
        hsm.stop(sig=signal.SIGKILL)
    finally:
        archive.wait(timeout=60)
    hsm.start()
    # The new, unfinished copy is gone; the old object, still named by the marker, stays.
    assert [f for f in store_files(hsm) if f.endswith(".json")] == [f"{old[:2]}/{old}.json"]
    assert hsm.state(p) == "dirty"
    hsm.migrate(p)
    drop_caches()
    assert sha256(p) == digest
