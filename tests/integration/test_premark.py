"""The resident-file walk at start (premark_files): resident files get hsmd's ignore mark
before their first access; files with offline data never do."""
import re
import subprocess
import threading
import time

from conftest import drop_caches, sha256

MiB = 1 << 20


def events(hsm):
    out = hsm.ctl("doctor").stdout
    return int(re.search(r"(\d+) events\)", out).group(1))


def wait_for_walk(hsm, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = hsm.ctl("doctor").stdout
        if "resident-file walk at start: done" in out:
            return out
        time.sleep(0.05)
    raise AssertionError("the resident-file walk did not finish:\n" + hsm.log_text()[-3000:])


def make_files(hsm, count, per_dir=50):
    paths = []
    for i in range(count):
        d = hsm.mnt / "tree" / f"d{i // per_dir:03}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:05}"
        p.write_bytes(b"x" * (100 + i))
        paths.append(p)
    return paths


def read_all(paths):
    subprocess.run(["cat", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


def test_walk_spares_resident_files_their_first_round_trip_and_skips_released_ones(hsm):
    paths = make_files(hsm, 300)
    released, digest = hsm.write("released.bin", size=3 * MiB)
    hsm.migrate(released)
    hsm.stop()
    hsm.start()
    assert "done, 300 resident files marked" in wait_for_walk(hsm)
    before = events(hsm)
    read_all(paths)
    # Without the walk each file's first open is an event (see the next test); a few may
    # come from hsmctl's own activity.
    assert events(hsm) - before < 10
    # The released file was left to events: it reads back whole, not as zeros.
    drop_caches()
    assert sha256(released) == digest
    assert events(hsm) > before
    assert hsm.wait_for_log("1 with offline data left to events")


def test_without_the_walk_every_first_open_is_an_event(hsm_stopped):
    hsm = hsm_stopped
    hsm.write_config(extra="premark_files = 0")
    paths = make_files(hsm, 300)
    hsm.start()
    assert "resident-file walk at start: off" in hsm.ctl("doctor").stdout
    before = events(hsm)
    read_all(paths)
    assert events(hsm) - before >= 300


def test_walk_stops_at_the_limit(hsm_stopped):
    hsm = hsm_stopped
    hsm.write_config(extra="premark_files = 120")
    make_files(hsm, 300)
    hsm.start()
    out = wait_for_walk(hsm)
    marked = int(re.search(r"done, (\d+) resident files marked", out).group(1))
    assert marked == 120
    assert hsm.wait_for_log("(120 files looked at, the premark_files limit")


def test_releases_racing_the_walk_never_leave_a_released_file_ignored(hsm_stopped):
    # Release takes the inode lock the walk checks and marks under: whichever comes
    # first, a released file must end up seen by hsmd (and read back whole).
    hsm = hsm_stopped
    paths = make_files(hsm, 3000, per_dir=300)
    big = []
    for i in range(40):
        p, d = hsm.write(f"tree/d{i % 10:03}/big{i:02}.bin", size=2 * MiB)
        big.append((p, d))
    hsm.start()
    hsm.ctl("archive", *[p for p, _ in big])
    hsm.stop()
    hsm.start()
    results = []
    t = threading.Thread(target=lambda: results.append(hsm.ctl("release", *[p for p, _ in big], check=False)))
    t.start()
    read_all(paths[:1500])
    t.join()
    assert results[0].returncode == 0, results[0].stdout + results[0].stderr
    wait_for_walk(hsm)
    drop_caches()
    for p, d in big:
        assert hsm.state(p) == "released"
        assert sha256(p) == d, p
