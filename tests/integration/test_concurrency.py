"""Release racing with readers, and many readers at once: the lease-break path."""
import hashlib
import json
import os
import random
import subprocess
import threading
import time

from conftest import HSMCTL, drop_caches, sha256

MiB = 1 << 20


def _reader(path, original, stop, errors, opened):
    rng = random.Random(os.getpid() ^ threading.get_ident())
    size = len(original)
    while not stop.is_set():
        try:
            with open(path, "rb") as f:
                opened.append(1)
                for _ in range(8):
                    off = rng.randrange(0, size - 4096)
                    f.seek(off)
                    got = f.read(4096)
                    if got != original[off:off + 4096]:
                        errors.append(f"wrong bytes at {off}")
                        return
        except OSError as e:
            errors.append(f"read failed: {e}")
            return
        time.sleep(0.001)


def test_readers_opening_during_release_always_see_the_original_bytes(hsm):
    data = os.urandom(192 * MiB)
    p, digest = hsm.write("big.bin", data=data)
    hsm.ctl("archive", p)
    for attempt in range(3):
        stop, errors, opened = threading.Event(), [], []
        env = dict(os.environ, HSMD_SOCKET=str(hsm.socket))
        release = subprocess.Popen([str(HSMCTL), "release", "--json", str(p)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.02 * attempt)
        threads = [threading.Thread(target=_reader, args=(p, data, stop, errors, opened)) for _ in range(3)]
        for t in threads:
            t.start()
        out, err = release.communicate(timeout=120)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert opened, "readers never opened the file"
        # Whatever the release managed, the state is consistent and the bytes are right.
        assert release.returncode in (0, 1), err
        result = json.loads(out)["files"][0]
        if release.returncode == 1:
            assert result["outcome"] == "failed" and result["reason"].startswith("busy"), result
        else:
            assert result["outcome"] == "done", result
        assert hsm.state(p) in ("archived", "released", "partial")
        drop_caches()
        assert sha256(p) == digest
        assert hsm.state(p) == "archived"


def test_many_readers_of_many_released_files(hsm_store):
    hsm = hsm_store
    files = []
    for i in range(6):
        p, d = hsm.write(f"f{i}.bin", size=9 * MiB + i * 4097)
        hsm.migrate(p)
        files.append((p, d))
    drop_caches()
    results = {}

    def read_all(idx, p):
        results[(idx, str(p))] = hashlib.sha256(p.read_bytes()).hexdigest()

    threads = [threading.Thread(target=read_all, args=(k, p)) for k in range(4) for p, _ in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p, d in files:
        got = {v for (k, path), v in results.items() if path == str(p)}
        assert got == {d}, (p, got)


def test_open_between_punch_chunks_stops_release_and_keeps_the_marker_true(hsm_stopped):
    """An opener arriving after some chunks were punched breaks the lease: hsmd stops,
    marks only the punched blocks offline, and the opener reads the original bytes."""
    hsm = hsm_stopped
    hsm.start(env={"HSMD_TEST_PUNCH_PAUSE_MS": "400"})
    data = os.urandom(256 * MiB)
    p, digest = hsm.write("big.bin", data=data)
    hsm.ctl("archive", p)
    env = dict(os.environ, HSMD_SOCKET=str(hsm.socket))
    release = subprocess.Popen([str(HSMCTL), "release", "--json", str(p)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until the first chunk is punched (allocation drops), then open and read.
    deadline = time.time() + 60
    while os.stat(p).st_blocks * 512 > 250 * MiB and time.time() < deadline:
        time.sleep(0.01)
    with open(p, "rb") as f:
        head = f.read(4 * MiB)
        f.seek(200 * MiB)
        tail = f.read(MiB)
    out, err = release.communicate(timeout=120)
    assert head == data[:4 * MiB]
    assert tail == data[200 * MiB:201 * MiB]
    result = json.loads(out)["files"][0]
    assert release.returncode == 1, (out, err)
    assert "during release" in result["reason"] and "of 256 blocks released" in result["reason"], result
    status = hsm.status(p)
    assert status["state"] == "partial", status
    # Blocks not punched are not claimed offline; the first chunk (64 MiB) was.
    assert 0 < status["offline_bytes"] <= 192 * MiB, status
    drop_caches()
    assert sha256(p) == digest


# Holds a read lease on argv[1] (an O_RDWR open, as hsmctl's operations make, breaks it),
# then closes the file argv[2] seconds after the kernel asks for the lease back.
_LEASE_HOLDER = r"""
import fcntl, os, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGIO])
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print("leased", flush=True)
signal.sigwait([signal.SIGIO])
time.sleep(float(sys.argv[2]))
os.close(fd)
"""


def _lease_holder(path, hold_after_break):
    holder = subprocess.Popen(["python3", "-c", _LEASE_HOLDER, str(path), str(hold_after_break)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "leased"
    return holder


def test_release_rides_out_a_lease_that_is_just_ending(hsm):
    # hsmd's own settle holds a write lease for a moment while it writes a marker; an
    # administrator's release arriving then used to fail at once with "busy".
    p, digest = hsm.write("leased.bin", size=2 * MiB)
    hsm.ctl("archive", p)
    holder = _lease_holder(p, 0)
    try:
        r = hsm.ctl("release", "--json", p, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["files"][0]["outcome"] == "done", r.stdout
    finally:
        holder.wait(10)
    assert hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest


def test_release_of_a_file_whose_lease_is_kept_is_busy_and_changes_nothing(hsm):
    p, digest = hsm.write("kept.bin", size=2 * MiB)
    hsm.ctl("archive", p)
    holder = _lease_holder(p, 3)
    try:
        r = hsm.ctl("release", "--json", p, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        result = json.loads(r.stdout)["files"][0]
        assert result["outcome"] == "failed" and result["reason"].startswith("busy"), result
    finally:
        holder.wait(10)
    assert hsm.state(p) == "archived"
    assert sha256(p) == digest
