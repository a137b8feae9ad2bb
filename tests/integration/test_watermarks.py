"""Space watermarks and named policies (issue 13, item 6), on real loop filesystems.

hsmd watches each managed filesystem's usage; at its high mark it releases archived
files and migrates cold ones (least recently used first, by the filesystem's policy)
until usage is below the low mark, never touching a file used within min_age or
excluded. `hsmctl migrate --policy NAME` uses the same [[policy]] tables.

No timing is asserted: the tests poll for the outcome with generous deadlines.
"""
import json
import os
import subprocess
import time

import pytest

from conftest import HSMD, managed_filesystem, sha256

DAY = 86400
MIB = 1 << 20


def small_managed_filesystem(image_size="256M", fstype="ext4"):
    """A fresh ext4 (or `fstype`) of `image_size` with its store; hsmd not started; always torn down."""
    return managed_filesystem(start=False, fstype=fstype, image_size=image_size)


def write_config(h, policies="", fs_keys="", top=""):
    h.config.write_text(
        f'socket = "{h.socket}"\n'
        f'state_dir = "{h.state_dir}"\n'
        'log_level = "debug"\n'
        'premark_files = 0\n'
        f"{top}\n"
        f"{policies}\n"
        "[[store]]\n"
        'name = "tier1"\n'
        'type = "posix"\n'
        f'path = "{h.store}"\n'
        "[[filesystem]]\n"
        f'path = "{h.mnt}"\n'
        'store = "tier1"\n'
        f"{fs_keys}\n"
    )


def percent_used(path):
    """Usage as hsmd (and df) counts it: used / (used + available to users)."""
    s = os.statvfs(path)
    used = (s.f_blocks - s.f_bfree) * s.f_frsize
    avail = s.f_bavail * s.f_frsize
    return 100.0 * used / (used + avail)


def make_file(h, name, size, age_days=0):
    """Random data; times `age_days` in the past (0: now). Returns (path, sha256)."""
    p, digest = h.write(name, size=size)
    if age_days:
        t = time.time() - age_days * DAY
        os.utime(p, (t, t))
    return p, digest


def wait_for(predicate, timeout, what, h):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s; hsmd log tail:\n{h.log_text()[-4000:]}")


def doctor_watermarks(h):
    """The `watermarks` lines of hsmctl doctor."""
    out = h.ctl("doctor").stdout
    return [l for l in out.splitlines() if " watermarks " in l]


def checks_so_far(h):
    lines = doctor_watermarks(h)
    assert len(lines) == 1, lines
    # "... min_age 1h; 7 checks, 0 passes ..."
    part = lines[0].split("; ")[1]
    return int(part.split(" checks")[0]), int(part.split(", ")[1].split(" passes")[0])


# btrfs gives punched space back to statvfs only at its next commit (measured: not at
# fsync, at sync), so a pass there counts what it freed itself.
@pytest.mark.parametrize("fstype", ["ext4", "btrfs"])
def test_fills_past_high_mark_and_hsmd_brings_it_under_the_low_mark(fstype):
    with small_managed_filesystem(fstype=fstype) as h:
        policy = ('[[policy]]\nname = "space"\nmin_size = "64k"\nexclude = ["*.keep"]\n')
        write_config(h, policies=policy)
        h.start()
        cold, hot, kept = {}, {}, {}
        # Cold files: last used 30 to 60 days ago. Five are archived already (the first
        # phase releases those).
        for i in range(24):
            p, d = make_file(h, f"cold/c{i:02d}.bin", 6 * MIB, age_days=30 + i)
            cold[p] = d
        for p in sorted(cold)[:5]:
            h.ctl("archive", p)
            assert h.state(p) == "archived"
        # Hot files: just written. Excluded and too-small cold files: never touched.
        for i in range(5):
            p, d = make_file(h, f"hot/h{i}.bin", 4 * MIB)
            hot[p] = d
        for name, size in (("cold/old.keep", 2 * MIB), ("cold/tiny.bin", 16 << 10)):
            p, d = make_file(h, name, size, age_days=90)
            kept[p] = d
        assert h.stop() == 0
        subprocess.run(["sync"], check=True)
        start = percent_used(h.mnt)
        assert start >= 60, f"setup did not fill the filesystem past the high mark: {start:.1f}%"

        write_config(h, policies=policy, top='watermark_interval = "1s"',
                     fs_keys='high_watermark = 60\nlow_watermark = 40\nwatermark_policy = "space"\nmin_age = "1h"\n')
        h.start()
        wait_for(lambda: percent_used(h.mnt) < 40, 180, "usage did not fall below the low mark", h)
        # The pass that got there says so when it ends (one line per pass).
        def pass_lines():
            return [l for l in h.log_text().splitlines() if f"watermarks: {h.mnt}: " in l]
        wait_for(lambda: any("still above" not in l for l in pass_lines()), 60, "no pass line saying usage is under the low mark", h)
        assert all(" freed, " in l and "released " in l for l in pass_lines()), pass_lines()

        # Hot, excluded and small files: still resident, never archived.
        for p in [*hot, *kept]:
            assert h.state(p) == "resident", (p, h.status(p))
        states = {p: h.state(p) for p in cold}
        released = [p for p, s in states.items() if s in ("released", "partial")]
        assert released, states
        # The archived ones (the most recently used of the cold files) went first; then the
        # migrations, least recently used first: every cold file migrated is older than
        # every cold file left resident.
        archived = set(sorted(cold)[:5])
        assert archived <= set(released), states
        rest = [p for p in cold if p not in archived]
        age = {p: int(p.name[1:3]) for p in rest}  # c{i}: 30 + i days old
        migrated = [p for p in rest if p in released]
        left = [p for p in rest if p not in released]
        assert migrated, states
        # It stopped at the low mark rather than freeing everything it could.
        assert left, states
        assert min(age[p] for p in migrated) > max(age[p] for p in left), states
        for p in [*hot, *kept]:
            assert sha256(p) == {**hot, **kept}[p]
        # Every released file reads back byte-identical.
        for p in released:
            assert sha256(p) == cold[p], p


def test_large_recalls_bring_the_next_look_forward():
    """With an interval of an hour, only the recalls themselves can make hsmd look again:
    reading released files back past the high mark starts a pass."""
    with small_managed_filesystem() as h:
        write_config(h)
        h.start()
        files = {}
        for i in range(20):
            p, d = make_file(h, f"c{i:02d}.bin", 6 * MIB, age_days=30)
            files[p] = d
        h.ctl("migrate", "--older-than", "1d", h.mnt)
        assert all(h.state(p) == "released" for p in files)
        assert h.stop() == 0
        write_config(h, top='watermark_interval = "1h"', fs_keys="high_watermark = 35\nlow_watermark = 25\nmin_age = 0\n")
        h.start()
        wait_for(lambda: checks_so_far(h)[0] >= 1, 30, "no first look at start", h)
        assert percent_used(h.mnt) < 35
        for p, d in files.items():
            assert sha256(p) == d
        assert percent_used(h.mnt) >= 35 or checks_so_far(h)[1] >= 1
        wait_for(lambda: checks_so_far(h)[1] >= 1, 120, "recalls past the high mark started no pass", h)
        assert "recalled since the last look; looking now" in h.log_text()
        wait_for(lambda: h.wait_for_log(f"watermarks: {h.mnt}: ", timeout=0.1), 120, "no pass line", h)
        for p, d in files.items():
            assert sha256(p) == d


def test_nothing_eligible_warns_once():
    """Above the high mark with only files used within min_age: one warning, not one per
    look, and nothing is touched."""
    with small_managed_filesystem(image_size="128M") as h:
        write_config(h, top='watermark_interval = "1s"', fs_keys="high_watermark = 30\nlow_watermark = 20\n")
        h.start()
        hot = {}
        for i in range(12):
            p, d = make_file(h, f"h{i}.bin", 4 * MIB)
            hot[p] = d
        subprocess.run(["sync"], check=True)
        assert percent_used(h.mnt) >= 30
        wait_for(lambda: h.wait_for_log("nothing eligible is left", timeout=0.1), 60, "no warning that nothing is eligible", h)
        # Well past the back-off (10 looks), so at least one more pass found nothing again.
        wait_for(lambda: checks_so_far(h)[1] >= 2, 120, "no second pass", h)
        assert h.log_text().count("nothing eligible is left") == 1, h.log_text()[-3000:]
        for p, d in hot.items():
            assert h.state(p) == "resident"
            assert sha256(p) == d


def test_filesystem_under_the_mark_is_left_alone():
    with small_managed_filesystem(image_size="128M") as h:
        write_config(h, top='watermark_interval = "1s"', fs_keys="high_watermark = 90\nlow_watermark = 80\nmin_age = 0\n")
        h.start()
        files = {}
        for i in range(4):
            p, d = make_file(h, f"c{i}.bin", 2 * MIB, age_days=100)
            files[p] = d
        subprocess.run(["sync"], check=True)
        assert percent_used(h.mnt) < 80
        first, _ = checks_so_far(h)
        wait_for(lambda: checks_so_far(h)[0] >= first + 3, 60, "hsmd did not look at usage three more times", h)
        checks, passes = checks_so_far(h)
        assert passes == 0, doctor_watermarks(h)
        assert f"watermarks: {h.mnt}:" not in h.log_text()
        for p, d in files.items():
            assert h.state(p) == "resident"
            assert sha256(p) == d
        assert h.object_files() == []


def test_migrate_by_named_policy():
    with small_managed_filesystem(image_size="128M") as h:
        write_config(h, policies='[[policy]]\nname = "nightly"\nolder_than = "1d"\nmin_size = "64k"\nexclude = ["*.keep", "*/scratch/*"]\n'
                                 '[[policy]]\nname = "everything"\n')
        h.start()
        old, d_old = make_file(h, "data/old.bin", 1 * MIB, age_days=10)
        small, _ = make_file(h, "data/small.bin", 4096, age_days=10)
        keep, _ = make_file(h, "data/old.keep", 1 * MIB, age_days=10)
        scratch, _ = make_file(h, "data/scratch/s.bin", 1 * MIB, age_days=10)
        recent, _ = make_file(h, "data/recent.bin", 1 * MIB)

        # Unknown name: a clear error listing the known ones, nothing done.
        r = h.ctl("migrate", "--policy", "nighty", check=False)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        assert "nighty" in r.stderr and "known: nightly, everything" in r.stderr, r.stderr
        # The policy gives age, size and excludes: the flags for them do not combine.
        r = h.ctl("migrate", "--policy", "nightly", "--older-than", "2d", h.mnt, check=False)
        assert r.returncode == 2 and "--policy" in r.stderr, r.stderr
        assert h.object_files() == []

        # Without a path: every managed filesystem.
        r = h.ctl("migrate", "--policy", "nightly")
        assert "policy nightly: older than 1d, at least 64.0 KiB, 2 excludes" in r.stdout, r.stdout
        assert "migrated 1 file(s)" in r.stdout, r.stdout
        assert h.state(old) == "released"
        for p in (small, keep, scratch, recent):
            assert h.state(p) == "resident", p
        assert sha256(old) == d_old

        # With a path, and a policy that takes everything.
        r = h.ctl("migrate", "--policy", "everything", h.mnt / "data" / "scratch")
        assert h.state(scratch) == "released" and h.state(keep) == "resident"
        assert "(policy nightly)" in h.log_text()


@pytest.mark.parametrize("keys,needle", [
    ("high_watermark = 70\nlow_watermark = 80\n", "low_watermark 80 must be below high_watermark 70"),
    ("high_watermark = 70\nlow_watermark = 70\n", "low_watermark 70 must be below high_watermark 70"),
    ("high_watermark = 120\nlow_watermark = 80\n", "high_watermark 120 is over 100"),
    ("high_watermark = 50\nlow_watermark = 0\n", "low_watermark 0 must be greater than 0"),
    ("high_watermark = 90\n", "without low_watermark"),
    ("high_watermark = 90\nlow_watermark = 80\nwatermark_policy = \"nope\"\n", "filesystem[0].watermark_policy: no [[policy]] named \"nope\""),
    ("high_watermark = 90\nlow_watermark = 80\nmin_age = \"later\"\n", "filesystem[0].min_age"),
])
def test_config_validation(keys, needle):
    with small_managed_filesystem(image_size="64M") as h:
        write_config(h, fs_keys=keys)
        for args in (["--check-config"], []):
            r = subprocess.run([str(HSMD), "--config", str(h.config), *args], capture_output=True, text=True, timeout=30)
            assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
            assert needle in r.stderr, r.stderr


def test_hsmds_own_reads_do_not_make_a_file_look_used():
    """Archive and release read the file (release verifies every block); neither may move
    its atime, or a release refused half-way (busy) would leave a cold file looking hot to
    the watermarks and policies."""
    with small_managed_filesystem(image_size="64M") as h:
        write_config(h)
        h.start()
        p, d = make_file(h, "old.bin", 3 * MIB, age_days=40)
        before = os.stat(p)
        h.ctl("archive", p)
        h.ctl("release", p)
        assert h.state(p) == "released"
        after = os.stat(p)
        assert after.st_atime_ns == before.st_atime_ns, (before.st_atime, after.st_atime)
        assert after.st_mtime_ns == before.st_mtime_ns
        assert sha256(p) == d


def test_a_file_in_use_is_skipped_by_the_pass():
    """The pass goes through release's write lease: the least recently used file, held
    open by a program, is left as it is (busy); the others free the space."""
    with small_managed_filesystem(image_size="128M") as h:
        write_config(h)
        h.start()
        files = {}
        for i in range(10):
            p, d = make_file(h, f"c{i}.bin", 6 * MIB, age_days=30 + i)
            files[p] = d
        oldest = h.mnt / "c9.bin"
        h.ctl("archive", *files)
        assert h.stop() == 0
        subprocess.run(["sync"], check=True)
        assert percent_used(h.mnt) >= 40
        write_config(h, top='watermark_interval = "1s"', fs_keys="high_watermark = 40\nlow_watermark = 30\n")
        # Opened before hsmd starts: hsmd's lease is refused while this fd is open.
        with open(oldest, "rb") as held:
            h.start()
            wait_for(lambda: percent_used(h.mnt) < 30, 120, "usage did not fall below the low mark", h)
            wait_for(lambda: h.wait_for_log(f"watermarks: {h.mnt}: ", timeout=0.1), 60, "no pass line", h)
            assert h.state(oldest) == "archived", h.status(oldest)
            line = [l for l in h.log_text().splitlines() if f"watermarks: {h.mnt}: " in l][0]
            assert "1 not done" in line, line
            assert held.read(1 << 20)
        for p, d in files.items():
            assert sha256(p) == d


def test_stop_during_a_pass_is_clean():
    """SIGTERM while a pass is under way: hsmd stops (exit 0) after the file in hand,
    and every file reads back byte-identical after the next start."""
    with small_managed_filesystem() as h:
        write_config(h)
        h.start()
        files = {}
        for i in range(240):
            p, d = make_file(h, f"d{i // 40}/f{i:03d}.bin", 512 << 10, age_days=30 + i % 7)
            files[p] = d
        assert h.stop() == 0
        subprocess.run(["sync"], check=True)
        write_config(h, top='watermark_interval = "1s"', fs_keys="high_watermark = 20\nlow_watermark = 5\nmin_age = 0\n")
        h.start()
        wait_for(lambda: h.wait_for_log("released ", timeout=0.1), 60, "the pass released nothing", h)
        assert h.stop() == 0, h.log_text()[-3000:]
        assert "hsmd stopped" in h.log_text()
        write_config(h)
        h.start()
        rows = json.loads(h.ctl("status", "--json", h.mnt).stdout)
        assert any(r["state"] == "released" for r in rows), rows
        for p, d in files.items():
            assert sha256(p) == d, p
