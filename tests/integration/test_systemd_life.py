"""hsmd's whole life under a real systemd 252: no zeros, no EIO, no hang, nothing lost.

One container (systemd booted in systemd-nspawn from a cached Debian root tree) runs the
repository's own systemd/hsmd.service for the whole module; each test has its own files
on the shared managed filesystem. Programs reading released files run on the HOST, as
separate processes (stream_reader.py), while hsmd is killed, restarted, aborted by the
watchdog, or left idle inside the container. Each reader must end with exactly the file's
bytes (sha256), no errno and no all-zero page, and never wait longer than recall_timeout
once hsmd is back.

Needs root, systemd-nspawn and debootstrap (scripts/setup.sh); the first run builds the
root tree (about a minute, from the Debian mirror apt uses).
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nspawn  # noqa: E402

MiB = 1 << 20
RECALL_TIMEOUT = 30
READER = Path(__file__).resolve().parent / "stream_reader.py"
STREAMERS = 8           # readers that stream through each disruption
STREAM_SIZE = 48 * MiB
LATE = 4                # readers started while hsmd is down or restarting
LATE_SIZE = 24 * MiB
PAUSE = 0.25            # seconds between a streamer's 1 MiB reads: ~12 s per file
LATE_PAUSE = 0.05       # late readers read almost back to back, through any gap in service
# A stall file the successor of a stalled hsmd cannot see: systemd removes the unit's
# RuntimeDirectory (/run/hsmd) whenever the service stops, an abort and automatic restart
# included (measured with systemd 252).
STALL_FILE = "/run/hsmd/stall"


@pytest.fixture(scope="module")
def sd():
    """hsmd.service running in a booted container; always torn down."""
    h = nspawn.SystemdHSM(
        image_size="4G",
        # readahead_max 1M: every 1 MiB read of a reader is its own recall, so hsmd is busy
        # with each reader for the whole of its stream.
        config_extra=f'recall_timeout = "{RECALL_TIMEOUT}s"\nreadahead_max = "1M"\n',
        test_env={"HSMD_TEST_STALL_FILE": STALL_FILE})
    try:
        h.boot()
        h.start()
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def hsmd(sd):
    """The module's hsmd, running and with only the base drop-in before and after a test."""
    recover(sd)
    yield sd
    recover(sd)


def recover(sd):
    changed = False
    for p in sd.dropins.iterdir():
        if p.name != "test.conf":
            p.unlink()
            changed = True
    if changed:
        sd.systemctl("daemon-reload")
    sd.container.run(["rm", "-f", STALL_FILE])
    if sd.show("ActiveState")["ActiveState"] != "active" or changed:
        sd.systemctl("reset-failed", "hsmd.service", check=False)
        sd.systemctl("restart", "hsmd.service", check=False, timeout=120)
    sd.wait_running()


# --- files ---------------------------------------------------------------------------------

def make_file(path, size):
    """Random data (never an all-zero page), written in pieces; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 64 * MiB))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def released_set(sd, name):
    """STREAMERS + LATE archived and released files in their own directory."""
    d = sd.mnt / name
    files = {}
    for i in range(STREAMERS):
        p = d / f"stream{i}.bin"
        files[p] = (make_file(p, STREAM_SIZE), STREAM_SIZE)
    for i in range(LATE):
        p = d / f"late{i}.bin"
        files[p] = (make_file(p, LATE_SIZE), LATE_SIZE)
    paths = sorted(files)
    sd.ctl("archive", *paths)
    sd.ctl("release", *paths)
    for p in paths:
        st = sd.status(p)
        assert st["state"] == "released", st
    return files


# --- readers on the host -------------------------------------------------------------------

class Readers:
    """stream_reader.py processes on the host, in the container's pid namespace; every one
    is killed at teardown."""

    def __init__(self, directory, container):
        self.dir = directory
        self.container = container
        self.readers = []   # dicts: path, sha256, size, proc, progress

    def start(self, path, digest, size, pause=PAUSE):
        progress = self.dir / f"{len(self.readers)}-{path.name}.jsonl"
        # In the container's pid namespace (not its mounts): hsmd sees the reader's pid.
        proc = subprocess.Popen([sys.executable, str(READER), str(path), str(progress), str(pause),
                                 str(self.container.init_pid)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.readers.append(dict(path=path, sha256=digest, size=size, proc=proc, progress=progress))

    @staticmethod
    def lines(r):
        try:
            return [json.loads(l) for l in r["progress"].read_text().splitlines() if l.endswith("}")]
        except OSError:
            return []

    def ended(self):
        """The paths of readers that have already finished (or died)."""
        return [str(r["path"]) for r in self.readers
                if r["proc"].poll() is not None or any("end" in l for l in self.lines(r))]

    def wait_until_reading(self, at_least=4 * MiB, timeout=60):
        """Waits until every started reader has read `at_least` bytes (or ended)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(any(l.get("done", 0) >= at_least or "end" in l for l in self.lines(r)) for r in self.readers):
                return
            time.sleep(0.05)
        raise AssertionError(f"readers did not get going: {[(str(r['path']), self.lines(r)[-1:]) for r in self.readers]}")

    def finish(self, back_at, timeout=300):
        """Waits for every reader. One that has made no progress for recall_timeout (plus
        slack for its own pause) since max(its last read, hsmd back) is hung: it is killed
        and reported. Returns a list of failure descriptions (empty: all whole)."""
        hung = {}
        deadline = time.time() + timeout
        while any(r["proc"].poll() is None for r in self.readers):
            now = time.time()
            for i, r in enumerate(self.readers):
                if r["proc"].poll() is not None:
                    continue
                ls = self.lines(r)
                last = max([back_at] + [l["t"] for l in ls if "t" in l])
                if now - last > RECALL_TIMEOUT + 10 or now > deadline:
                    hung[i] = (f"hung: no progress for {now - last:.0f} s after hsmd was back "
                               f"(recall_timeout {RECALL_TIMEOUT} s), {ls[-1].get('done', 0) if ls else 0} bytes read")
                    r["proc"].kill()
                    r["proc"].wait()
            time.sleep(0.2)
        failures = []
        for i, r in enumerate(self.readers):
            name = f"reader of {r['path'].relative_to(r['path'].parents[1])}"
            if i in hung:
                failures.append(f"{name}: {hung[i]}")
                continue
            ends = [l for l in self.lines(r) if "end" in l]
            if not ends:
                failures.append(f"{name}: exited {r['proc'].returncode} without a verdict: {r['proc'].stderr.read().decode()[-500:]}")
                continue
            v = ends[-1]
            problems = []
            if v["error"]:
                problems.append(v["error"])
            if v["zero_pages"]:
                problems.append(f"all-zero pages at offsets {v['zero_pages'][:6]} (released data allowed without recall)")
            if v["done"] != r["size"]:
                problems.append(f"read {v['done']} of {r['size']} bytes")
            if v["sha256"] != r["sha256"] and not problems:
                problems.append("different bytes (sha256 mismatch)")
            if problems:
                failures.append(f"{name}: " + "; ".join(problems))
        return failures

    def kill_all(self):
        for r in self.readers:
            if r["proc"].poll() is None:
                r["proc"].kill()
                r["proc"].wait()
            r["proc"].stderr.close()


@pytest.fixture
def readers(sd):
    d = sd.readers_dir / f"{time.time_ns()}"
    d.mkdir()
    rs = Readers(d, sd.container)
    try:
        yield rs
    finally:
        rs.kill_all()


def start_streamers(readers, files):
    for p in sorted(files):
        if p.name.startswith("stream"):
            readers.start(p, *files[p])


def start_late(readers, files):
    for p in sorted(files):
        if p.name.startswith("late"):
            readers.start(p, *files[p], pause=LATE_PAUSE)


def assert_streaming(readers, what):
    """The disruption must come while every streamer is mid-file, or it proves nothing."""
    done = readers.ended()
    assert not done, f"readers finished before {what}; the test proves nothing: {done}"


def assert_whole(sd, failures, what, since):
    assert not failures, (f"after {what}, {len(failures)} reader(s) did not get their data whole:\n  "
                          + "\n  ".join(failures) + f"\nhsmd's journal since then:\n{sd.journal(since=since)}")


# --- tests ---------------------------------------------------------------------------------

def test_sigkill_while_streaming_keeps_every_reader_whole(hsmd, readers):
    """systemctl kill -s KILL: systemd restarts hsmd (Restart=on-failure); the fanotify
    groups must survive in the fd store and the successor must finish what the killed
    process had read but not answered."""
    files = released_set(hsmd, "kill")
    pid0, n0 = hsmd.main_pid(), hsmd.restarts()
    start_streamers(readers, files)
    readers.wait_until_reading()
    assert_streaming(readers, "the kill")
    disrupted = time.time()
    hsmd.systemctl("kill", "--signal=KILL", "hsmd.service")
    start_late(readers, files)
    pid1, back = hsmd.wait_running(not_pid=pid0)
    assert hsmd.restarts() == n0 + 1
    assert_whole(hsmd, readers.finish(back), "SIGKILL and automatic restart", disrupted)


def test_restart_while_streaming_keeps_every_reader_whole(hsmd, readers):
    """systemctl restart (what a package upgrade does) while readers stream."""
    files = released_set(hsmd, "restart")
    pid0 = hsmd.main_pid()
    start_streamers(readers, files)
    readers.wait_until_reading()
    assert_streaming(readers, "the restart")
    disrupted = time.time()
    restart = hsmd.container.popen(["systemctl", "restart", "hsmd.service"])
    try:
        start_late(readers, files)
        out, _ = restart.communicate(timeout=120)
    finally:
        if restart.poll() is None:
            restart.kill()
            restart.wait()
    assert restart.returncode == 0, out
    pid1, back = hsmd.wait_running(not_pid=pid0)
    assert_whole(hsmd, readers.finish(back), "systemctl restart", disrupted)


def test_watchdog_abort_of_a_stalled_hsmd_keeps_every_reader_whole(hsmd, readers):
    """A hung event loop (HSMD_TEST_STALL_FILE: it stops mid-batch, events read but not
    answered): the watchdog aborts hsmd, systemd restarts it, readers end whole."""
    # Test-only timing: a short watchdog so the abort comes soon.
    hsmd.set_dropin("watchdog.conf", "[Service]\nWatchdogSec=10s\n")
    hsmd.systemctl("restart", "hsmd.service")
    pid0, _ = hsmd.wait_running()
    assert hsmd.show("WatchdogUSec")["WatchdogUSec"] == "10s"
    n0 = hsmd.restarts()
    files = released_set(hsmd, "watchdog")
    start_streamers(readers, files)
    readers.wait_until_reading()
    assert_streaming(readers, "the stall")
    stalled_at = time.time()
    hsmd.container.run(["touch", STALL_FILE])
    start_late(readers, files)
    # The abort comes after 10 s without a ping; wait for it well past that. The main pid
    # changes (to 0) the moment the process is gone.
    deadline = time.time() + 60
    while hsmd.main_pid() == pid0 and time.time() < deadline:
        time.sleep(0.1)
    # A stalled loop answers nothing, so no reader can have finished before the abort; one
    # that did means the abort had another cause (or the loop never stalled).
    finished_first = readers.ended()
    aborted = hsmd.main_pid() != pid0
    deadline = time.time() + 60
    while aborted and hsmd.restarts() == n0 and time.time() < deadline:
        time.sleep(0.1)
    # Whatever happened, the successor must not stall again (it cannot see the file: its
    # RuntimeDirectory is new), and the next tests need a healthy hsmd.
    hsmd.container.run(["rm", "-f", STALL_FILE])
    assert aborted, ("systemd did not abort hsmd within 60 s of the stall file appearing "
                     f"(is HSMD_TEST_STALL_FILE implemented?): {hsmd.show('NRestarts', 'MainPID', 'Result')}\n"
                     f"{hsmd.journal(30)}")
    journal = hsmd.journal(since=stalled_at)
    assert "Watchdog timeout" in journal, f"hsmd went away, but not by a watchdog abort:\n{journal}"
    assert not finished_first, ("readers finished while hsmd was supposed to be stalled: the watchdog abort "
                                f"was not caused by the stall (HSMD_TEST_STALL_FILE ignored?): {finished_first}\n"
                                f"{hsmd.journal(30)}")
    assert hsmd.restarts() == n0 + 1, f"systemd did not restart hsmd after the watchdog abort: {hsmd.show('NRestarts', 'Result')}"
    pid1, back = hsmd.wait_running(not_pid=pid0)
    assert_whole(hsmd, readers.finish(back), "a watchdog abort and automatic restart", stalled_at)


def test_idle_under_the_shipped_watchdog_is_never_restarted(hsmd, readers):
    """3 minutes idle under the unit's own WatchdogSec=30s: no abort, same main pid, and
    released files read back whole afterwards."""
    assert hsmd.show("WatchdogUSec")["WatchdogUSec"] == "30s"
    files = released_set(hsmd, "idle")
    pid0, n0 = hsmd.main_pid(), hsmd.restarts()
    idle_until = time.time() + 180
    while time.time() < idle_until:
        now = hsmd.show("NRestarts", "MainPID")
        assert (int(now["NRestarts"]), int(now["MainPID"])) == (n0, pid0), (
            f"idle hsmd was restarted after {180 - (idle_until - time.time()):.0f} s of idleness: "
            f"{now} (before: NRestarts={n0}, MainPID={pid0})\n{hsmd.journal(30)}")
        time.sleep(2)
    for p in sorted(files):
        readers.start(p, *files[p], pause=0)
    assert_whole(hsmd, readers.finish(time.time()), "3 minutes idle", idle_until - 180)
    assert (hsmd.restarts(), hsmd.main_pid()) == (n0, pid0)


def test_sigkill_in_the_middle_of_a_release_leaves_a_true_state(hsmd, readers):
    """kill -9 between punch chunks (HSMD_TEST_PUNCH_PAUSE_MS): the file reads back whole
    after the automatic restart, and its status is true: an unmodified file is never
    `dirty`, and once read back it is `archived` (all local, identical copy stored)."""
    hsmd.set_dropin("punch-pause.conf", "[Service]\nEnvironment=HSMD_TEST_PUNCH_PAUSE_MS=3000\n")
    hsmd.systemctl("restart", "hsmd.service")
    pid0, _ = hsmd.wait_running()
    p = hsmd.mnt / "release-kill" / "big.bin"
    size = 256 * MiB
    digest = make_file(p, size)
    hsmd.ctl("archive", p)
    assert hsmd.status(p)["state"] == "archived"
    release = subprocess.Popen([str(hsmd.hsmctl), "release", str(p)], env=dict(os.environ, HSMD_SOCKET=str(hsmd.socket)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The first 64 MiB chunk is punched, then hsmd pauses 3 s: kill it there.
        deadline = time.time() + 60
        while os.stat(p).st_blocks * 512 > size - 32 * MiB and time.time() < deadline:
            time.sleep(0.01)
        allocated = os.stat(p).st_blocks * 512
        assert allocated <= size - 32 * MiB, "release did not start punching within 60 s"
        disrupted = time.time()
        hsmd.systemctl("kill", "--signal=KILL", "hsmd.service")
        out, _ = release.communicate(timeout=60)
    finally:
        if release.poll() is None:
            release.kill()
            release.wait()
    assert release.returncode != 0, f"release finished before the kill: {out}"
    assert allocated > 32 * MiB, f"the whole file was punched before the kill ({allocated} bytes left)"
    _, back = hsmd.wait_running(not_pid=pid0)
    before = hsmd.status(p)
    # The data first: it is the promise that matters most.
    readers.start(p, digest, size, pause=0)
    assert_whole(hsmd, readers.finish(back), "a kill -9 in the middle of a release", disrupted)
    after = hsmd.status(p)
    assert before["state"] != "dirty", (
        f"an unmodified file is reported dirty after a kill mid-release (punching changes the mtime; "
        f"was it restored before the kill?): {before}")
    assert before["state"] in ("released", "partial"), f"after a kill mid-release, punched blocks must be offline: {before}"
    assert before["offline_bytes"] >= size - allocated, f"status claims less offline than was punched: {before}"
    assert after["state"] == "archived" and after["offline_bytes"] == 0, f"read back whole and unmodified, yet: {after}"
    # And it can be released again, and read back again.
    again = time.time()
    hsmd.ctl("release", p)
    assert hsmd.status(p)["state"] == "released"
    readers.start(p, digest, size, pause=0)
    assert_whole(hsmd, readers.finish(time.time()), "a second release", again)


def test_sigkill_in_the_middle_of_an_archive_leaves_a_true_state(hsmd, readers):
    """kill -9 while the object of a big file is being written to the store: the file is
    untouched (resident), and a new archive and release of it work and read back whole."""
    pid0 = hsmd.main_pid()
    p = hsmd.mnt / "archive-kill" / "big.bin"
    size = 1024 * MiB
    digest = make_file(p, size)
    archive = subprocess.Popen([str(hsmd.hsmctl), "archive", str(p)], env=dict(os.environ, HSMD_SOCKET=str(hsmd.socket)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        partial = []
        while time.time() < deadline and archive.poll() is None:
            partial = [q for q in hsmd.store.glob("objects/*/*.data.partial") if q.stat().st_size > 0] \
                if (hsmd.store / "objects").exists() else []
            if partial:
                break
            time.sleep(0.005)
        assert partial, f"no partial object appeared in the store while archiving: {archive.poll()}"
        disrupted = time.time()
        hsmd.systemctl("kill", "--signal=KILL", "hsmd.service")
        out, _ = archive.communicate(timeout=60)
    finally:
        if archive.poll() is None:
            archive.kill()
            archive.wait()
    assert archive.returncode != 0, f"archive finished before the kill: {out}"
    _, back = hsmd.wait_running(not_pid=pid0)
    st = hsmd.status(p)
    assert st["state"] == "resident" and st["offline_bytes"] == 0, f"a killed archive must leave the file as it was: {st}"
    readers.start(p, digest, size, pause=0)
    assert_whole(hsmd, readers.finish(back), "a kill -9 in the middle of an archive", disrupted)
    again = time.time()
    hsmd.ctl("archive", p)
    hsmd.ctl("release", p)
    assert hsmd.status(p)["state"] == "released"
    readers.start(p, digest, size, pause=0)
    assert_whole(hsmd, readers.finish(time.time()), "archiving and releasing it again", again)
    assert hsmd.status(p)["state"] == "archived"
