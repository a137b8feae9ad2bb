"""Restart without harm: with the fanotify groups and the event log kept in systemd's fd
store (here the test's stand-in, fdstore.FDStore), a restart, a stop for a restart, a
kill -9 or a hung event loop never lets a reader see zeros, and the next hsmd finishes
what the previous one had taken."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import HSMCTL, managed_filesystem, sha256
from fdstore import FDStore

MiB = 1 << 20

READER = r"""
import hashlib, sys
h = hashlib.sha256()
zeros = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b)
print(h.hexdigest())
"""


@pytest.fixture
def kept():
    """A managed filesystem (hsmd not started) and an fd store, both torn down."""
    with managed_filesystem(start=False) as h:
        store = FDStore(h.base)
        try:
            yield h, store
        finally:
            h.stop(signal.SIGKILL)
            store.close()


def start_reader(path):
    return subprocess.Popen([sys.executable, "-c", READER, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_names(store, *names, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(n in store.names() for n in names):
            return
        time.sleep(0.05)
    raise AssertionError(f"hsmd did not hand {names} to the fd store: {store.names()}")


def assert_waits(reader, seconds=1.0):
    time.sleep(seconds)
    assert reader.poll() is None, ("the reader finished while no hsmd served it", reader.communicate())


def assert_whole(reader, digest, timeout=60, hsm=None):
    out, err = reader.communicate(timeout=timeout)
    assert reader.returncode == 0, (err, hsm.log_text()[-4000:] if hsm else "")
    assert out.strip() == digest, "the reader got other bytes than the file's"


def test_hsmd_hands_its_groups_and_event_log_to_the_fd_store(kept):
    hsm, store = kept
    hsm.start(fdstore=store)
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    assert any(n.startswith("hsmd-journal-") for n in store.names()), store.names()
    assert "fresh start; groups handed" in hsm.ctl("doctor").stdout


def test_a_kill_9_during_a_recall_leaves_the_reader_waiting_and_the_next_hsmd_serves_it(kept):
    hsm, store = kept
    hsm.start(fdstore=store, env={"HSMD_TEST_STORE_DELAY_MS": "4000"})
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    p, digest = hsm.write("f.bin", size=8 * MiB)
    hsm.migrate(p)
    reader = start_reader(p)
    assert_waits(reader, 1.5)           # the recall sleeps in its store delay
    hsm.stop(signal.SIGKILL)
    assert_waits(reader, 1.0)           # no hsmd: the group lives on, the access waits
    hsm.start(fdstore=store)
    assert_whole(reader, digest)
    assert hsm.wait_for_log("finishing an access by pid"), hsm.log_text()[-3000:]
    assert "pre-content group kept" in hsm.ctl("doctor").stdout


def test_accesses_made_while_hsmd_is_stopped_for_a_restart_wait_for_the_next(kept):
    hsm, store = kept
    hsm.start(fdstore=store)
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    p, digest = hsm.write("f.bin", size=4 * MiB)
    hsm.migrate(p)
    assert hsm.stop() == 0
    assert "still have offline data" in hsm.log_text()
    reader = start_reader(p)
    assert_waits(reader, 1.5)
    hsm.start(fdstore=store)
    assert_whole(reader, digest)
    assert hsm.state(p) in ("partial", "archived")


def test_a_hung_event_loop_killed_mid_batch_loses_nothing(kept):
    """The events of a batch that was read and never dispatched are on record: the next
    hsmd recalls and answers them by their old numbers."""
    hsm, store = kept
    stall = hsm.base / "stall"
    hsm.start(fdstore=store, env={"HSMD_TEST_STALL_FILE": str(stall)})
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    files = []
    for i in range(3):
        files.append(hsm.write(f"f{i}.bin", size=3 * MiB))
        hsm.migrate(files[-1][0])
    stall.touch()
    readers = [start_reader(p) for p, _ in files]
    assert hsm.wait_for_log("the event loop stalls"), hsm.log_text()[-2000:]
    for r in readers:
        assert_waits(r, 0.3)
    hsm.stop(signal.SIGKILL)
    stall.unlink()
    hsm.start(fdstore=store)
    for r, (_, digest) in zip(readers, files):
        assert_whole(r, digest, hsm=hsm)
    log = hsm.log_text()
    assert "will be finished, 0 denied with EIO" in log, log[-3000:]
    assert "is denied with EIO" not in log


def test_a_stop_during_a_recall_finishes_it_before_exiting(kept):
    hsm, store = kept
    hsm.start(fdstore=store, env={"HSMD_TEST_STORE_DELAY_MS": "2000"})
    p, digest = hsm.write("f.bin", size=2 * MiB)
    hsm.migrate(p)
    reader = start_reader(p)
    time.sleep(0.5)
    assert hsm.stop() == 0
    log = hsm.log_text()
    assert f"for pid {reader.pid} in" in log, log[-2000:]       # "recalled ... for pid N in ... ms"
    assert "still unanswered at stop" not in log
    # The reader's later reads wait for the next hsmd (the group is kept).
    hsm.start(fdstore=store)
    assert_whole(reader, digest)


def test_a_kill_9_in_the_middle_of_a_release_leaves_no_ignore_mark_over_the_holes(kept):
    """Release ignore-marks the file while it punches. With the group kept, that mark
    would outlive a killed hsmd and let reads of the punched holes through as zeros."""
    hsm, store = kept
    hsm.start(fdstore=store, env={"HSMD_TEST_PUNCH_PAUSE_MS": "3000"})
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    p, digest = hsm.write("big.bin", size=192 * MiB)
    hsm.ctl("archive", p)
    env = dict(os.environ, HSMD_SOCKET=str(hsm.socket))
    release = subprocess.Popen([str(HSMCTL), "release", str(p)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while os.stat(p).st_blocks * 512 > 150 * MiB and time.time() < deadline:
        time.sleep(0.01)
    assert os.stat(p).st_blocks * 512 <= 150 * MiB, "the first chunk was not punched"
    hsm.stop(signal.SIGKILL)
    release.communicate(timeout=30)
    reader = start_reader(p)
    assert_waits(reader, 1.0)
    hsm.start(fdstore=store)
    assert_whole(reader, digest)


def test_a_btrfs_snapshot_of_released_files_recalls_instead_of_reading_zeros(hsm_btrfs):
    """A snapshot's files have an st_dev of their own: hsmd used to allow their accesses
    (not a managed device), and their released ranges read as zeros."""
    hsm = hsm_btrfs
    p, digest = hsm.write("f.bin", size=3 * MiB)
    hsm.migrate(p)
    # A snapshot of the top-level subvolume: the file's marker and holes come along.
    subprocess.run(["btrfs", "-q", "subvolume", "snapshot", str(hsm.mnt), str(hsm.mnt / "snap")], check=True)
    copy = hsm.mnt / "snap" / "f.bin"
    assert os.stat(copy).st_dev != os.stat(p).st_dev
    out = subprocess.run([sys.executable, "-c", READER, str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.stderr, hsm.log_text()[-3000:])
    assert out.stdout.strip() == digest, "the snapshot's released ranges read as other bytes (zeros?)"
    assert sha256(p) == digest
