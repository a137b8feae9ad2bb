"""Restart without harm: with the fanotify groups and the event log kept in systemd's fd
store (here the test's stand-in, fdstore.FDStore), a restart, a stop for a restart, a
kill -9 or a hung event loop never lets a reader see zeros, and the next hsmd finishes
what the previous one had taken."""
import hashlib
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
    assert "will be finished, 0 open(s) allowed, 0 denied with EIO" in log, log[-3000:]
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


# A program that opens a file, says so, waits for a line on stdin, then makes one access
# and prints the sha256 of what it read (or of nothing, for a write).
ONE_ACCESS = r"""
import hashlib, mmap, os, sys
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR if mode == "pwrite" else os.O_RDONLY)
print("opened", flush=True)
sys.stdin.readline()
if mode == "read":
    os.lseek(fd, 12345, 0)
    got = os.read(fd, 1 << 20)
elif mode == "pread":
    got = os.pread(fd, 100000, 777777)
elif mode == "readv":
    os.lseek(fd, 2 << 20, 0)
    a, b = bytearray(5000), bytearray(70000)
    os.readv(fd, [a, b])
    got = bytes(a + b)
elif mode == "mmap":
    got = mmap.mmap(fd, 3 << 20, prot=mmap.PROT_READ, offset=1 << 20)[:]
elif mode == "pwrite":
    os.pwrite(fd, b"xyz", 300000)
    got = b""
print(hashlib.sha256(got).hexdigest(), flush=True)
"""

EXPECTED = {
    "read": lambda d: d[12345:12345 + MiB],
    "pread": lambda d: d[777777:777777 + 100000],
    "readv": lambda d: d[2 * MiB:2 * MiB + 75000],
    "mmap": lambda d: d[MiB:4 * MiB],
    "pwrite": lambda d: b"",
}


def wait_for_exit(hsm, timeout=10):
    try:
        hsm.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("hsmd did not kill itself at the test switch:\n" + hsm.log_text()[-3000:])
    assert hsm.proc.returncode == -signal.SIGKILL, hsm.proc.returncode
    hsm.stop()


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_a_kill_9_between_reading_an_access_and_recording_it_finds_the_file_from_the_stopped_thread(kept, mode):
    """The one window the event log cannot close: hsmd killed after read() returned an
    event and before it recorded the event's file. The next hsmd finds the file from what
    the stopped thread is doing, recalls and answers; the program gets its bytes."""
    hsm, store = kept
    die = hsm.base / "die"
    hsm.start(fdstore=store, env={"HSMD_TEST_DIE_AFTER_READ_FILE": str(die)})
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    data = os.urandom(8 * MiB)
    p, _ = hsm.write("f.bin", data=data)
    hsm.migrate(p)
    prog = subprocess.Popen([sys.executable, "-c", ONE_ACCESS, str(p), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert prog.stdout.readline().strip() == "opened", prog.stderr.read()
        die.touch()
        prog.stdin.write("go\n")
        prog.stdin.flush()
        wait_for_exit(hsm)
        assert_waits(prog, 0.5)          # no hsmd: the access waits in the kept group
        die.unlink()
        hsm.start(fdstore=store)
        out, err = prog.communicate(timeout=60)
        assert prog.returncode == 0, (err, hsm.log_text()[-3000:])
        assert out.strip() == hashlib.sha256(EXPECTED[mode](data)).hexdigest(), "the program got other bytes than the file's"
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait()
    log = hsm.log_text()
    assert "its file is known from the stopped thread" in log, log[-3000:]
    assert "1 will be finished, 0 open(s) allowed, 0 denied with EIO" in log, log[-3000:]
    if mode == "pwrite":
        data = data[:300000] + b"xyz" + data[300003:]
    assert sha256(p) == hashlib.sha256(data).hexdigest()


def test_a_kill_9_between_reading_an_open_and_recording_it_lets_the_open_go_unless_a_full_recall_program(kept):
    """An open the next hsmd cannot tie to a file: allowed for a program that gets only
    the blocks it reads (its reads raise their own events), denied with EIO for one of
    full_recall_programs (cp would copy holes as zeros); nothing is lost either way."""
    hsm, store = kept
    die = hsm.base / "die"
    hsm.start(fdstore=store, env={"HSMD_TEST_DIE_AFTER_READ_FILE": str(die)})
    wait_for_names(store, "hsmd-precontent", "hsmd-eventlog")
    p, digest = hsm.write("f.bin", size=6 * MiB)
    hsm.migrate(p)

    die.touch()
    reader = start_reader(p)
    wait_for_exit(hsm)
    die.unlink()
    hsm.start(fdstore=store, env={"HSMD_TEST_DIE_AFTER_READ_FILE": str(die)})
    assert_whole(reader, digest, hsm=hsm)
    assert hsm.wait_for_log("(python3) that the previous hsmd read but did not record is allowed")

    hsm.ctl("release", p)
    copy = hsm.base / "copy.bin"
    die.touch()
    cp = subprocess.Popen(["cp", str(p), str(copy)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_exit(hsm)
    die.unlink()
    hsm.start(fdstore=store)
    _, err = cp.communicate(timeout=60)
    assert cp.returncode != 0 and "Input/output error" in err, (cp.returncode, err)
    log = hsm.log_text()
    assert "cp is one of full_recall_programs and its file cannot be identified" in log, log[-3000:]
    assert hsm.state(p) == "released"
    assert sha256(p) == digest
