"""hsmctl's command line (exit codes, JSON shapes, migrate's policy options) and hsmd's
startup: config refusal, --check-config, SIGTERM, doctor."""
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HSMCTL, HSMD, drop_caches, sha256

FILE_KEYS = {"path", "outcome", "reason", "state", "object", "bytes_archived", "bytes_freed", "bytes_recalled"}
SUMMARY_KEYS = {"files", "done", "skipped", "not_done", "bytes_archived", "bytes_freed", "bytes_recalled"}
STATUS_KEYS = {"path", "state", "size", "offline_bytes", "object", "pinned"}
COMMANDS = ("archive", "release", "recall", "status", "migrate", "pin", "unpin", "remove", "gc", "import", "doctor")
DAY = 86400
MiB = 1 << 20


def states(hsm, path):
    """path → state for every file status reports under `path`."""
    return {row["path"]: row["state"] for row in json.loads(hsm.ctl("status", "--json", path).stdout)}


def make_old(path, days=40):
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def has_marker(path):
    try:
        os.getxattr(path, "trusted.hsm")
        return True
    except OSError:
        return False


# --- exit codes and JSON ------------------------------------------------------------------


def test_help_lists_every_command():
    r = subprocess.run([str(HSMCTL), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    for c in COMMANDS:
        assert re.search(rf"^\s+{c}\b", r.stdout, re.M), (c, r.stdout)


def test_exit_codes(hsm):
    p, digest = hsm.write("a.bin", size=300_000)
    missing = hsm.mnt / "missing.bin"
    assert hsm.ctl("archive", p, check=False).returncode == 0
    assert hsm.ctl("archive", p, missing, check=False).returncode == 1
    assert hsm.ctl("status", missing, check=False).returncode == 1
    assert hsm.ctl("status", p, check=False).returncode == 0
    # Unreachable hsmd: exit 2, whether chosen by --socket or HSMD_SOCKET.
    r = hsm.ctl("status", "--socket", hsm.base / "nothing.sock", p, check=False)
    assert r.returncode == 2, r
    assert "not running" in r.stderr, r.stderr
    env = dict(os.environ, HSMD_SOCKET=str(hsm.base / "nothing.sock"))
    r = subprocess.run([str(HSMCTL), "status", str(p)], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2, r
    # --socket beats HSMD_SOCKET.
    r = subprocess.run([str(HSMCTL), "status", "--socket", str(hsm.socket), str(p)],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r
    assert sha256(p) == digest


def test_status_json_has_exactly_the_documented_keys(hsm):
    resident, _ = hsm.write("t/resident.bin", size=100_000)
    archived, _ = hsm.write("t/archived.bin", size=200_000)
    released, _ = hsm.write("t/sub/released.bin", size=3 << 20)
    hsm.ctl("archive", archived)
    hsm.migrate(released)
    rows = json.loads(hsm.ctl("status", "--json", hsm.mnt / "t").stdout)
    assert isinstance(rows, list) and len(rows) == 3, rows
    by_path = {}
    for row in rows:
        assert set(row) == STATUS_KEYS, row
        assert isinstance(row["size"], int) and isinstance(row["offline_bytes"], int), row
        by_path[row["path"]] = row
    assert set(by_path) == {str(resident), str(archived), str(released)}
    r = by_path[str(resident)]
    assert (r["state"], r["size"], r["offline_bytes"], r["object"]) == ("resident", 100_000, 0, None)
    a = by_path[str(archived)]
    assert (a["state"], a["size"], a["offline_bytes"]) == ("archived", 200_000, 0)
    assert isinstance(a["object"], str) and a["object"], a
    x = by_path[str(released)]
    assert (x["state"], x["size"], x["offline_bytes"]) == ("released", 3 << 20, 3 << 20)
    assert isinstance(x["object"], str) and x["object"] != a["object"]


def test_archive_release_recall_json(hsm):
    a, da = hsm.write("a.bin", size=1_000_000)
    b, db = hsm.write("b.bin", size=2_500_000)
    missing = hsm.mnt / "missing.bin"

    r = hsm.ctl("archive", "--json", a, b, missing, check=False)
    assert r.returncode == 1, r
    out = json.loads(r.stdout)
    assert set(out) == {"files", "summary"}
    assert set(out["summary"]) == SUMMARY_KEYS
    for f in out["files"]:
        assert set(f) == FILE_KEYS, f
    by_path = {f["path"]: f for f in out["files"]}
    assert by_path[str(a)]["outcome"] == "done" and by_path[str(a)]["state"] == "archived"
    assert by_path[str(a)]["bytes_archived"] == 1_000_000
    assert by_path[str(missing)]["outcome"] == "failed" and by_path[str(missing)]["reason"]
    assert by_path[str(a)]["object"] == hsm.status(a)["object"]
    s = out["summary"]
    assert (s["files"], s["done"], s["skipped"], s["not_done"]) == (3, 2, 0, 1), s
    assert s["bytes_archived"] == 3_500_000 and s["bytes_freed"] == 0 and s["bytes_recalled"] == 0, s

    out = json.loads(hsm.ctl("release", "--json", a, b).stdout)
    assert set(out["summary"]) == SUMMARY_KEYS
    assert out["summary"]["done"] == 2 and out["summary"]["not_done"] == 0
    assert all(f["state"] == "released" for f in out["files"]), out
    assert out["summary"]["bytes_freed"] >= 3_500_000 - 2 * 4096, out["summary"]

    out = json.loads(hsm.ctl("recall", "--json", a).stdout)
    assert out["files"][0]["bytes_recalled"] == 1_000_000, out
    assert out["summary"]["bytes_recalled"] == 1_000_000
    assert hsm.state(a) == "archived"

    out = json.loads(hsm.ctl("recall", "--json", "--range", "0:1M", b).stdout)
    assert out["files"][0]["state"] == "partial", out
    assert out["files"][0]["bytes_recalled"] == 1 << 20, out
    drop_caches()
    assert sha256(a) == da and sha256(b) == db


@pytest.mark.parametrize("args", [
    ("recall", "--range", "abc", "{p}"),
    ("recall", "--range", "4096", "{p}"),
    ("recall", "--range", "0:0", "{p}"),
    ("recall", "--range=-1:4k", "{p}"),
    ("migrate", "--older-than", "soon", "{p}"),
    ("migrate", "--older-than", "30x", "{p}"),
    ("migrate", "--min-size", "big", "{p}"),
    ("migrate", "--jobs", "0", "{p}"),
    ("archive",),
    ("release",),
    ("recall",),
    ("migrate",),
    ("status",),
], ids=lambda a: " ".join(a).replace(" {p}", ""))
def test_usage_errors_exit_2(hsm, args):
    p, digest = hsm.write("a.bin", size=300_000)
    hsm.migrate(p)
    objects = hsm.object_files()
    r = hsm.ctl(*[a.format(p=p) for a in args], check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip(), "no message"
    assert hsm.state(p) == "released"
    assert hsm.object_files() == objects
    drop_caches()
    assert sha256(p) == digest


@pytest.mark.parametrize("args", [("archive", "--bogus", "{p}"), ("frobnicate", "{p}"), ("status", "--json=2", "{p}")],
                         ids=["unknown option", "unknown command", "value for a flag"])
def test_unknown_option_or_command_exits_2(hsm, args):
    p, digest = hsm.write("a.bin", size=300_000)
    r = hsm.ctl(*[a.format(p=p) for a in args], check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip()
    assert hsm.state(p) == "resident"
    assert sha256(p) == digest


# --- migrate -----------------------------------------------------------------------------


def test_migrate_older_than(hsm):
    old, d_old = hsm.write("m/old.bin", size=300_000)
    new, d_new = hsm.write("m/new.bin", size=300_000)
    recent, d_recent = hsm.write("m/recent.bin", size=300_000)
    make_old(old, days=40)
    make_old(recent, days=10)
    r = hsm.ctl("migrate", "--older-than", "30d", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m") == {str(old): "released", str(new): "resident", str(recent): "resident"}
    # Units other than days work too.
    r = hsm.ctl("migrate", "--older-than", "240h", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m") == {str(old): "released", str(new): "resident", str(recent): "released"}
    drop_caches()
    assert (sha256(old), sha256(new), sha256(recent)) == (d_old, d_new, d_recent)


def test_migrate_min_size(hsm):
    small, d_small = hsm.write("m/small.bin", size=10_000)
    edge, d_edge = hsm.write("m/edge.bin", size=64 * 1024)
    big, d_big = hsm.write("m/big.bin", size=200_000)
    r = hsm.ctl("migrate", "--min-size", "64k", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m") == {str(small): "resident", str(edge): "released", str(big): "released"}
    drop_caches()
    assert (sha256(small), sha256(edge), sha256(big)) == (d_small, d_edge, d_big)


def test_migrate_exclude_by_name(hsm):
    a, _ = hsm.write("m/a.bin", size=100_000)
    log, _ = hsm.write("m/a.log", size=100_000)
    deep_log, _ = hsm.write("m/sub/b.log", size=100_000)
    deep_tmp, _ = hsm.write("m/sub/c.tmp", size=100_000)
    r = hsm.ctl("migrate", "--exclude", "*.log", "--exclude", "*.tmp", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m") == {str(a): "released", str(log): "resident",
                                           str(deep_log): "resident", str(deep_tmp): "resident"}


def test_migrate_exclude_by_path_glob(hsm):
    kept, _ = hsm.write("m/keep/x.bin", size=100_000)
    moved, _ = hsm.write("m/other/x.bin", size=100_000)
    also_moved, _ = hsm.write("m/keep.bin", size=100_000)
    r = hsm.ctl("migrate", "--exclude", f"{hsm.mnt}/m/keep/*", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m") == {str(kept): "resident", str(moved): "released", str(also_moved): "released"}
    # A name glob never matches against directories in the path.
    r = hsm.ctl("migrate", "--exclude", "keep", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert states(hsm, hsm.mnt / "m")[str(kept)] == "released"


def test_migrate_dry_run_changes_nothing(hsm):
    files = [hsm.write(f"m/f{i}.bin", size=150_000) for i in range(4)]
    r = hsm.ctl("migrate", "--dry-run", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    assert "would migrate" in r.stdout, r.stdout
    assert "4" in r.stdout
    out = json.loads(hsm.ctl("migrate", "--dry-run", "--json", hsm.mnt / "m").stdout)
    assert out["summary"]["done"] == 4 and out["summary"]["bytes_freed"] == 0, out["summary"]
    for p, digest in files:
        assert hsm.state(p) == "resident"
        assert not has_marker(p)
        assert sha256(p) == digest
    assert not (hsm.store / "objects").exists() or list((hsm.store / "objects").rglob("*.*")) == []


def test_migrate_jobs_4_over_a_tree(hsm_store):
    hsm = hsm_store
    rng = random.Random(4)
    files = []
    for i in range(50):
        name = f"tree/d{i % 5}/e{i % 3}/f{i}.bin"
        files.append(hsm.write(name, size=rng.randint(1024, 256 * 1024)))
    r = hsm.ctl("migrate", "--jobs", "4", "--json", hsm.mnt / "tree", check=False)
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    assert out["summary"]["done"] == 50 and out["summary"]["not_done"] == 0, out["summary"]
    assert out["summary"]["bytes_archived"] == sum(os.path.getsize(p) for p, _ in files)
    st = states(hsm, hsm.mnt / "tree")
    assert st == {str(p): "released" for p, _ in files}
    assert hsm.object_count() == 50
    drop_caches()
    for p, digest in files:
        assert sha256(p) == digest, p


def test_migrate_summary_mentions_bytes_freed(hsm):
    for i in range(3):
        hsm.write(f"m/f{i}.bin", size=2 << 20)
    r = hsm.ctl("migrate", hsm.mnt / "m", check=False)
    assert r.returncode == 0, r
    lines = [l for l in r.stdout.splitlines() if "freed" in l]
    assert lines, r.stdout
    m = re.search(r"([\d.]+)\s*(B|KiB|MiB|GiB|bytes)?\s*freed", lines[-1])
    assert m, lines
    scale = {"B": 1, "bytes": 1, None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]
    assert float(m.group(1)) * scale >= 5.5 * (1 << 20), lines[-1]
    assert re.search(r"\b3\b", lines[-1]), lines[-1]


# --- hard links ---------------------------------------------------------------------------


def test_migrate_archives_a_hard_linked_inode_once(hsm):
    a, digest = hsm.write("h/a.bin", size=3 * MiB)
    b = hsm.mnt / "h" / "b.bin"
    os.link(a, b)
    r = hsm.ctl("migrate", "--dry-run", "--json", hsm.mnt / "h", check=False)
    assert r.returncode == 0, r
    outcomes = sorted(f["outcome"] for f in json.loads(r.stdout)["files"])
    assert outcomes == ["done", "skipped"], r.stdout
    r = hsm.ctl("migrate", hsm.mnt / "h", check=False)
    assert r.returncode == 0, r
    assert "skipped 1: hard link" in r.stdout, r.stdout
    assert hsm.state(a) == "released" and hsm.state(b) == "released"
    assert len(list((hsm.store / "objects").glob("*/*.json"))) == 1
    drop_caches()
    assert sha256(b) == digest


def test_archive_of_two_names_of_one_file_makes_one_object(hsm):
    a, _ = hsm.write("a.bin", size=300_000)
    b = hsm.mnt / "b.bin"
    os.link(a, b)
    r = hsm.ctl("archive", "--json", a, b, check=False)
    assert r.returncode == 0, r
    files = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    assert files[str(a)]["outcome"] == "done"
    assert files[str(b)]["outcome"] == "skipped" and str(a) in files[str(b)]["reason"], files
    assert len(list((hsm.store / "objects").glob("*/*.json"))) == 1


def test_migrate_is_idempotent(hsm):
    files = [hsm.write(f"m/f{i}.bin", size=300_000) for i in range(5)]
    hsm.write("m/small.bin", size=100)
    first = hsm.ctl("migrate", "--min-size", "1k", hsm.mnt / "m", check=False)
    assert first.returncode == 0, first
    objects = hsm.object_files()
    assert len(objects) == 5
    again = hsm.ctl("migrate", "--json", "--min-size", "1k", hsm.mnt / "m", check=False)
    assert again.returncode == 0, again
    s = json.loads(again.stdout)["summary"]
    assert s["done"] == 0 and s["not_done"] == 0 and s["bytes_archived"] == 0 and s["bytes_freed"] == 0, s
    text = hsm.ctl("migrate", "--min-size", "1k", hsm.mnt / "m", check=False)
    assert text.returncode == 0, text
    assert re.search(r"migrated 0 file", text.stdout), text.stdout
    assert hsm.object_files() == objects
    for p, digest in files:
        assert hsm.state(p) == "released"
    drop_caches()
    for p, digest in files:
        assert sha256(p) == digest


# --- hsmd startup and config ---------------------------------------------------------------


def run_hsmd(config, *extra, timeout=15):
    """Runs hsmd expecting it to exit by itself; a hsmd that keeps running is killed and fails."""
    started = time.time()
    proc = subprocess.Popen([str(HSMD), "--config", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"hsmd did not exit within {timeout} s (it accepted the config):\n{err}")
    return proc.returncode, out, err, time.time() - started


def base_config(hsm, *, top="", store_path=None, fs_path=None, fs_extra="", store_extra=""):
    return (
        f'socket = "{hsm.socket}"\n'
        f'state_dir = "{hsm.state_dir}"\n'
        f"{top}\n"
        "[[store]]\n"
        'name = "tier1"\n'
        'type = "posix"\n'
        f'path = "{store_path or hsm.store}"\n'
        f"{store_extra}\n"
        "[[filesystem]]\n"
        f'path = "{fs_path or hsm.mnt}"\n'
        'store = "tier1"\n'
        f"{fs_extra}\n"
    )


@pytest.mark.parametrize("case,top,fs_extra,store_extra,needle", [pytest.param(*c, id=c[0]) for c in [
    ("unknown top-level key", "bogus_key = 1", "", "", "bogus_key"),
    ("unknown key in [[filesystem]]", "", 'colour = "red"', "", "colour"),
    ("unknown key in [[store]]", "", "", "compress = true", "compress"),
    ("string for an integer", 'recall_threads = "four"', "", "", "recall_threads"),
    ("integer for a size string", "readahead_max = 12", "", "", "readahead_max"),
    ("bad duration", 'recall_timeout = "soon"', "", "", "recall_timeout"),
    ("bad log level", 'log_level = "loud"', "", "", "log_level"),
    ("out of range", "recall_threads = 0", "", "", "recall_threads"),
]])
def test_hsmd_refuses_a_bad_config(hsm_stopped, case, top, fs_extra, store_extra, needle):
    hsm = hsm_stopped
    hsm.config.write_text(base_config(hsm, top=top, fs_extra=fs_extra, store_extra=store_extra))
    code, out, err, took = run_hsmd(hsm.config)
    assert code != 0, (case, out, err)
    assert needle in err, (case, err)
    assert took < 10, took
    assert not hsm.socket.exists()
    # --check-config refuses it the same way.
    code, out, err, _ = run_hsmd(hsm.config, "--check-config")
    assert code != 0, (case, out, err)
    assert needle in err, (case, err)


def test_hsmd_refuses_a_filesystem_path_that_is_not_a_mount_point(hsm_stopped):
    hsm = hsm_stopped
    plain = hsm.base / "plain-dir"
    plain.mkdir()
    hsm.config.write_text(base_config(hsm, fs_path=plain))
    code, out, err, took = run_hsmd(hsm.config)
    assert code != 0, (out, err)
    assert str(plain) in err, err
    assert "mount point" in err, err
    assert took < 10
    assert not hsm.socket.exists()


def test_hsmd_refuses_a_missing_store_directory(hsm_stopped):
    hsm = hsm_stopped
    gone = hsm.base / "no-such-store"
    hsm.config.write_text(base_config(hsm, store_path=gone))
    code, out, err, took = run_hsmd(hsm.config)
    assert code != 0, (out, err)
    assert str(gone) in err, err
    assert took < 10
    assert not gone.exists(), "hsmd created the store it was told is missing"
    assert not hsm.socket.exists()


def test_check_config_accepts_a_good_config_and_starts_nothing(hsm_stopped):
    hsm = hsm_stopped
    hsm.write_config(extra='recall_threads = 8\nrecall_timeout = "90s"\nreadahead_max = "32M"')
    code, out, err, took = run_hsmd(hsm.config, "--check-config")
    assert code == 0, (out, err)
    assert took < 10
    assert not hsm.socket.exists()
    # And the same config really starts.
    hsm.start()
    assert hsm.ctl("doctor", check=False).returncode == 0


def test_sigterm_stops_hsmd_with_exit_0(hsm):
    p, digest = hsm.write("a.bin", size=2_000_000)
    hsm.migrate(p)
    started = time.time()
    code = hsm.stop(signal.SIGTERM, timeout=15)
    assert code == 0, f"hsmd exited with {code}:\n{hsm.log_text()[-3000:]}"
    assert time.time() - started < 10
    # Nothing was lost: a new hsmd recalls the file.
    hsm.start()
    assert hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest


def test_doctor_exit_codes(hsm):
    r = hsm.ctl("doctor", check=False)
    assert r.returncode == 0, r
    assert "FAIL" not in r.stdout
    assert str(hsm.mnt) in r.stdout, r.stdout
    hsm.stop()
    r = hsm.ctl("doctor", check=False)
    assert r.returncode == 2, r
    assert "not running" in r.stdout + r.stderr, (r.stdout, r.stderr)


def test_the_example_config_is_valid():
    """Config/hsmd.toml documents every key; it must stay acceptable to hsmd."""
    example = Path(__file__).resolve().parents[2] / "Config" / "hsmd.toml"
    r = subprocess.run([str(HSMD), "--config", str(example), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_results_of_more_than_512_files_arrive_complete(hsm):
    """hsmd sends long result lists in parts of 512; hsmctl must put them back together."""
    d = hsm.mnt / "many"
    d.mkdir()
    for i in range(700):
        (d / f"f{i:04d}").write_bytes(b"x" * 100)
    r = hsm.ctl("migrate", "--json", d)
    out = json.loads(r.stdout)
    paths = sorted(f["path"] for f in out["files"])
    assert paths == sorted(str(d / f"f{i:04d}") for i in range(700))
    assert out["summary"]["done"] == 700
    assert all(f["state"] == "released" for f in out["files"])
