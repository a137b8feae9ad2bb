"""The change journal: which directories changed, per epoch (README, "Change journal").

Every test runs its own hsmd on its own loop-mounted ext4. The journal answers only
after it has read every event queued before the request, so no test sleeps.
"""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import drop_caches, sha256
from fdstore import FDStore


def listed(hsm, *args):
    """{relative path: entry} of `journal list --json` (the mount point is '.')."""
    rows = json.loads(hsm.ctl("journal", "list", "--json", *args).stdout)
    out = {}
    for r in rows:
        assert set(r) >= {"path", "epoch", "deleted"}, r
        rel = os.path.relpath(r["path"], hsm.mnt) if r["path"] else None
        out[rel] = r
    return out


def with_ancestors(*dirs):
    """Each directory (relative to the mount) and all its ancestors, '.' included."""
    out = {"."}
    for d in dirs:
        parts = d.split("/")
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def status(hsm):
    rows = json.loads(hsm.ctl("journal", "status", "--json").stdout)
    assert len(rows) == 1, rows
    assert rows[0]["path"] == str(hsm.mnt)
    return rows[0]


def snapshot(hsm, *path):
    out = hsm.ctl("journal", "snapshot", *path).stdout.strip()
    assert re.fullmatch(r"\d+", out), out
    return int(out)


def changed(hsm, path, since=None):
    args = ["journal", "changed", path] + (["--since", since] if since is not None else [])
    r = hsm.ctl(*args, check=False)
    assert len(r.stdout.strip().splitlines()) == 1, (r.stdout, r.stderr)
    return r.returncode, r.stdout.strip()


def make_tree(hsm, *files):
    for f in files:
        p = hsm.mnt / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f)
    # `changed` also counts a directory whose ctime falls in the epoch, with 50 ms of
    # slack for the kernel's coarse clock; let the setup fall clearly before the epoch.
    time.sleep(0.1)


TREE = ["a/b/c/keep", "a/b/c/old", "d/e/f/g/file", "m/n/src", "p/q/w", "s/t/x", "u/v/attr",
        "quiet/deep/er/file", "quiet2/file"]

# (operation, directories it must record besides their ancestors)
OPERATIONS = {
    "create": (lambda m: (m / "a/b/c/new").write_text("new"), ["a/b/c"]),
    "unlink": (lambda m: (m / "d/e/f/g/file").unlink(), ["d/e/f/g"]),
    "rename_across_directories": (lambda m: os.rename(m / "m/n/src", m / "p/q/dst"), ["m/n", "p/q"]),
    "write": (lambda m: open(m / "s/t/x", "a").write("more"), ["s/t"]),
    "chmod": (lambda m: os.chmod(m / "u/v/attr", 0o600), ["u/v"]),
    "setxattr": (lambda m: os.setxattr(m / "u/v/attr", "user.colour", b"blue"), ["u/v"]),
    "mkdir": (lambda m: (m / "a/b/newdir").mkdir(), ["a/b"]),
    "rmdir": (lambda m: (m / "quiet/deep/er/file").unlink() or (m / "quiet/deep/er").rmdir(), ["quiet/deep"]),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_each_change_lists_exactly_its_directories_and_their_ancestors(hsm, op):
    make_tree(hsm, *TREE)
    before = snapshot(hsm)
    assert listed(hsm) == {}, "a fresh epoch lists nothing"
    action, dirs = OPERATIONS[op]
    action(hsm.mnt)
    got = listed(hsm)
    expected = with_ancestors(*dirs)
    if op == "rmdir":
        # The removed directory itself changed too (its last entry went) and is listed as
        # deleted: under the path it had if hsmd resolved it before it went, else with
        # no path (a handle that no longer opens has no name).
        gone = [k for k, r in got.items() if r["deleted"]]
        assert len(gone) == 1 and gone[0] in ("quiet/deep/er", None), got
        got.pop(gone[0])
    assert set(got) == expected, f"{op}: listed {sorted(got)}, expected {sorted(expected)}"
    assert all(r["epoch"] == before and r["deleted"] is False for r in got.values())
    assert status(hsm)["directories"] == len(expected) + (1 if op == "rmdir" else 0)


def test_chmod_of_a_directory_records_that_directory(hsm):
    make_tree(hsm, "k/l/m/file")
    snapshot(hsm)
    os.chmod(hsm.mnt / "k/l/m", 0o700)
    assert set(listed(hsm)) == with_ancestors("k/l/m")


def test_chmod_of_a_subdirectory_of_a_recorded_directory_records_it(hsm):
    # The parent's ignore mark (placed once it is recorded) must not swallow events of
    # the subdirectory itself.
    make_tree(hsm, "k/l/m/file", "k/l/other")
    snapshot(hsm)
    (hsm.mnt / "k/l/other").write_text("records k/l and marks it")
    assert set(listed(hsm)) == with_ancestors("k/l")
    os.chmod(hsm.mnt / "k/l/m", 0o700)
    os.setxattr(hsm.mnt / "k/l/m", "user.x", b"1")
    assert set(listed(hsm)) == with_ancestors("k/l/m")


def test_a_moved_subtree_counts_at_its_old_and_new_parents_only(hsm):
    make_tree(hsm, "old/parent/tree/sub/file", "new/parent/x")
    snapshot(hsm)
    os.rename(hsm.mnt / "old/parent/tree", hsm.mnt / "new/parent/tree")
    got = listed(hsm)
    assert set(got) == with_ancestors("old/parent", "new/parent")
    # Nothing inside the moved subtree changed: its own directories are not listed ...
    assert "new/parent/tree" not in got and "new/parent/tree/sub" not in got
    # ... but `changed` of the moved directory says yes (it was renamed into place, its
    # ctime is in the epoch), while its untouched subdirectory says no.
    assert changed(hsm, hsm.mnt / "new/parent/tree")[0] == 0
    assert changed(hsm, hsm.mnt / "new/parent/tree/sub")[0] == 1


def test_a_deleted_directory_is_listed_as_deleted_not_dropped(hsm):
    make_tree(hsm, "a/gone/file", "a/stays")
    snapshot(hsm)
    (hsm.mnt / "a/gone/new").write_text("x")
    assert set(listed(hsm)) == with_ancestors("a/gone")
    (hsm.mnt / "a/gone/new").unlink()
    (hsm.mnt / "a/gone/file").unlink()
    (hsm.mnt / "a/gone").rmdir()
    got = listed(hsm)
    assert got["a/gone"]["deleted"] is True
    assert all(not r["deleted"] for k, r in got.items() if k != "a/gone")
    text = hsm.ctl("journal", "list").stdout
    assert re.search(r"a/gone\t\(deleted\)", text), text


def test_hsmds_own_archive_and_release_are_not_changes(hsm):
    make_tree(hsm, "cold/dir/file")
    (hsm.mnt / "cold/dir/big").write_bytes(os.urandom(3 << 20))
    snapshot(hsm)
    hsm.migrate(hsm.mnt / "cold/dir/big")
    assert listed(hsm) == {}
    (hsm.mnt / "cold/dir/file").write_text("user change")
    assert set(listed(hsm)) == with_ancestors("cold/dir")


def test_epochs_snapshot_status_and_since(hsm):
    make_tree(hsm, "one/a", "two/b", "three/c")
    first = snapshot(hsm)
    st = status(hsm)
    assert st["epoch"] == first and st["complete"] is True and st["directories"] == 0
    assert abs(st["started"] - time.time()) < 60
    (hsm.mnt / "one/new").write_text("1")
    second = snapshot(hsm)
    assert second == first + 1
    (hsm.mnt / "two/new").write_text("2")
    assert set(listed(hsm)) == with_ancestors("two")
    both = listed(hsm, "--since", str(first))
    assert set(both) == with_ancestors("one", "two")
    assert both["one"]["epoch"] == first and both["two"]["epoch"] == second
    assert both["."]["epoch"] == second, "a directory changed in several epochs shows the latest"
    # A path limits the list to its subtree.
    assert set(listed(hsm, "--since", str(first), hsm.mnt / "one")) == {"one"}
    # snapshot with a path works on that path's filesystem.
    assert snapshot(hsm, hsm.mnt / "three") == second + 1
    st = status(hsm)
    assert st["epoch"] == second + 1 and st["complete"] and st["directories"] == 0
    text = hsm.ctl("journal", "status").stdout
    assert f"epoch {second + 1}" in text and "complete" in text and "0 directories recorded" in text


def test_changed_exit_codes(hsm):
    make_tree(hsm, "hot/sub/file", "cold/sub/file")
    first = snapshot(hsm)
    (hsm.mnt / "hot/sub/file").write_text("changed")
    code, line = changed(hsm, hsm.mnt / "hot")
    assert code == 0 and line.startswith("changed:"), line
    assert changed(hsm, hsm.mnt / "hot/sub/file")[0] == 0, "a file's own directory is asked about"
    assert changed(hsm, hsm.mnt)[0] == 0
    code, line = changed(hsm, hsm.mnt / "cold")
    assert code == 1 and line.startswith("unchanged:"), line
    second = snapshot(hsm)
    assert changed(hsm, hsm.mnt / "hot")[0] == 1, "the change was in the earlier epoch"
    assert changed(hsm, hsm.mnt / "hot", since=first)[0] == 0
    assert changed(hsm, hsm.mnt / "hot", since=second)[0] == 1
    code, line = changed(hsm, hsm.mnt / "hot", since=0)
    assert code == 3 and line.startswith("unknown:") and "predates" in line, line
    code, line = changed(hsm, hsm.mnt / "hot", since=second + 5)
    assert code == 3 and "has not begun" in line, line


def test_kill_9_makes_the_epoch_incomplete_and_a_snapshot_starts_a_trusted_one(hsm):
    make_tree(hsm, "a/b/file", "c/file")
    epoch = snapshot(hsm)
    (hsm.mnt / "a/b/new").write_text("x")
    assert set(listed(hsm)) == with_ancestors("a/b")
    hsm.stop(sig=signal.SIGKILL)
    hsm.start()
    st = status(hsm)
    assert st["epoch"] == epoch and st["complete"] is False
    assert "did not stop cleanly" in st["reason"], st
    assert set(listed(hsm)) == with_ancestors("a/b"), "what was recorded before the kill is kept"
    code, line = changed(hsm, hsm.mnt / "c")
    assert code == 3 and "incomplete" in line and "did not stop cleanly" in line, line
    assert "INCOMPLETE" in hsm.ctl("journal", "status").stdout
    r = hsm.ctl("journal", "list", check=False)
    assert "incomplete" in r.stderr, r.stderr
    after = snapshot(hsm)
    assert status(hsm)["complete"] is True
    assert changed(hsm, hsm.mnt / "c", since=after)[0] == 1
    assert changed(hsm, hsm.mnt / "c", since=epoch)[0] == 3, "the range still holds the incomplete epoch"


def test_a_restart_with_the_group_kept_keeps_the_epoch_complete_and_sees_changes_made_meanwhile(hsm_stopped):
    """systemd's fd store keeps the journal's group across a restart (here the test's
    stand-in): what changed while no hsmd ran is queued in the kernel and recorded."""
    hsm = hsm_stopped
    store = FDStore(hsm.base)
    try:
        hsm.start(fdstore=store)
        make_tree(hsm, "a/b/file", "c/file")
        epoch = snapshot(hsm)
        (hsm.mnt / "a/b/new").write_text("x")
        assert hsm.stop() == 0
        # The pre-content group is kept too, so this open waits for the next hsmd: it
        # runs in a process of its own.
        writer = subprocess.Popen(["sh", "-c", f"echo y > {hsm.mnt}/c/made-while-down"])
        time.sleep(0.5)
        hsm.start(fdstore=store)
        assert writer.wait(30) == 0
        st = status(hsm)
        assert st["epoch"] == epoch and st["complete"] is True, st
        assert set(listed(hsm)) == with_ancestors("a/b", "c")
        assert changed(hsm, hsm.mnt / "c")[0] == 0
    finally:
        hsm.stop()
        store.close()


def test_a_clean_stop_and_start_without_the_group_kept_is_incomplete(hsm):
    """Without the fd store nothing watched the filesystem between the two runs: the epoch
    cannot vouch for that time."""
    make_tree(hsm, "a/b/file", "c/file")
    epoch = snapshot(hsm)
    assert hsm.stop() == 0
    (hsm.mnt / "c/made-while-down").write_text("y")
    hsm.start()
    st = status(hsm)
    assert st["epoch"] == epoch and st["complete"] is False and "not watched between" in st["reason"], st
    assert changed(hsm, hsm.mnt / "c")[0] == 3


def test_an_epoch_with_the_journal_off_for_a_while_is_incomplete(hsm):
    epoch = snapshot(hsm)
    assert hsm.stop() == 0
    hsm.write_config(extra="journal = false")
    hsm.start()
    r = hsm.ctl("journal", "status", check=False)
    assert r.returncode == 2 and "journal is off" in r.stderr, r.stderr
    (hsm.mnt / "unseen").write_text("made while nobody watched")
    assert hsm.stop() == 0
    hsm.write_config()
    hsm.start()
    st = status(hsm)
    assert st["epoch"] == epoch and st["complete"] is False and "not watched" in st["reason"], st
    assert changed(hsm, hsm.mnt)[0] == 3


def test_a_queue_overflow_makes_the_epoch_incomplete(hsm_stopped):
    h = hsm_stopped
    (h.mnt / "burst").mkdir()
    # Event reading waits while the gate file exists: no timer to race on a busy machine.
    gate = h.base / "journal-gate"
    gate.write_text("")
    h.start(env={"HSMD_TEST_JOURNAL_PAUSE_FILE": str(gate)})
    # Each new file queues a create and a close-write event: 40,000 events against a
    # 16,384-event queue that nobody reads until the gate goes.
    for i in range(20000):
        open(h.mnt / "burst" / f"f{i}", "w").close()
    gate.unlink()
    st = status(h)
    assert st["complete"] is False and "overflow" in st["reason"], st
    code, line = changed(h, h.mnt / "burst")
    assert code == 3 and "overflow" in line, line
    assert h.wait_for_log("overflowed")
    # A new epoch after the burst is trusted again.
    after = snapshot(h)
    (h.mnt / "burst/one_more").write_text("x")
    assert status(h)["complete"] is True
    assert changed(h, h.mnt / "burst", since=after)[0] == 0


def test_the_fast_path_writes_a_recorded_directory_once_and_the_kernel_stops_sending(hsm):
    make_tree(hsm, "busy/dir/seed")
    snapshot(hsm)
    (hsm.mnt / "busy/dir/first").write_text("x")
    assert set(listed(hsm)) == with_ancestors("busy/dir")
    before = status(hsm)
    # Ignore marks are evictable: dropping the inode cache takes them away. hsmd must put
    # them back when a recorded directory's events arrive again.
    drop_caches()
    for i in range(3000):
        with open(hsm.mnt / "busy/dir" / f"f{i}", "w") as f:
            f.write("x")
        os.chmod(hsm.mnt / "busy/dir" / f"f{i}", 0o640)
    # Each unlink also raises FAN_ATTRIB on the file itself (its link count), with no
    # parent for an ignore mark to match: only the attribute group, which reports parents
    # alone, is spared it by the kernel.
    for i in range(3000):
        os.unlink(hsm.mnt / "busy/dir" / f"f{i}")
    after = status(hsm)
    assert after["directories"] == before["directories"] == 3
    assert after["transactions"] == before["transactions"], "no database write for recorded directories"
    # 18,000 events happened in busy/dir (create, modify, close-write, attrib, delete and
    # the unlink's link-count attrib per file); with the ignore mark in place the kernel
    # sends none of them.
    hsm.ctl("journal", "snapshot")
    m = re.findall(r"change journal: (\d+) events read so far", hsm.log_text())
    assert m, hsm.log_text()[-2000:]
    assert int(m[-1]) < 200, f"{m[-1]} events reached hsmd: the ignore mark did not hold"


def set_old(path, days=10):
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def migrate_incremental(hsm, path):
    r = hsm.ctl("migrate", "--incremental", "--older-than", "1d", "--json", path)
    files = json.loads(r.stdout)["files"]
    return files, r.stderr


def test_migrate_incremental_picks_up_exactly_the_changed_files(hsm):
    data = hsm.mnt / "data"
    for d in ["p", "q", "r/deep"]:
        for i in range(3):
            f = data / d / f"f{i}"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(os.urandom(200_000))
            set_old(f)
    time.sleep(0.1)  # the setup clearly before the first run's epoch (see make_tree)
    files, notes = migrate_incremental(hsm, data)
    assert "full scan: no earlier incremental run" in notes, notes
    assert len([f for f in files if f["outcome"] == "done"]) == 9

    # Change one file, add one, and move a subtree in from elsewhere.
    with open(data / "p/f1", "r+b") as f:
        f.write(b"changed")
    set_old(data / "p/f1")
    (data / "q/new").write_bytes(os.urandom(100_000))
    set_old(data / "q/new")
    (hsm.mnt / "outside/tree/sub").mkdir(parents=True)
    for f in ["moved", "sub/moved_deeper"]:
        (hsm.mnt / "outside/tree" / f).write_bytes(os.urandom(100_000))
        set_old(hsm.mnt / "outside/tree" / f)
    # Moved twice: the journal finds a moved directory by its name in its new parent, so
    # the first arrival's name may be gone when hsmd looks; the second arrival covers it.
    os.rename(hsm.mnt / "outside/tree", data / "r/tree-on-its-way")
    os.rename(data / "r/tree-on-its-way", data / "r/tree")

    files, notes = migrate_incremental(hsm, data)
    assert re.search(r"incremental: .*: \d+ changed director.*1 moved-in tree walked whole", notes), notes
    done = {os.path.relpath(f["path"], data) for f in files if f["outcome"] == "done"}
    assert done == {"p/f1", "q/new", "r/tree/moved", "r/tree/sub/moved_deeper"}, files
    scanned = {os.path.relpath(f["path"], data) for f in files}
    assert not any(s.startswith("r/deep") for s in scanned), (files, hsm.ctl("journal", "list", "--since", "1").stdout, hsm.ctl("journal", "status").stdout)

    # Nothing changed since: nothing to do, and nothing scanned.
    files, notes = migrate_incremental(hsm, data)
    assert [f for f in files if f["outcome"] == "done"] == [] and "0 changed directories" in notes, (files, notes)

    # After an unclean stop the journal cannot vouch for the range: full scan, said so.
    (data / "q/after").write_bytes(os.urandom(100_000))
    set_old(data / "q/after")
    hsm.stop(sig=signal.SIGKILL)
    hsm.start()
    files, notes = migrate_incremental(hsm, data)
    assert "full scan" in notes and "incomplete" in notes, notes
    assert {os.path.relpath(f["path"], data) for f in files if f["outcome"] == "done"} == {"q/after"}
    assert len(files) == 13, "a full scan considers every file"
    r = hsm.ctl("migrate", "--incremental", "--older-than", "1d", data)
    assert "incremental:" in r.stdout and "changed director" in r.stdout, r.stdout


def test_a_recall_is_no_change_and_its_data_writes_do_not_reach_the_journal(hsm):
    """Recall writes through hsmd's private mount, which carries a mount ignore mark of
    each journal group for data changes (the kernel refuses FAN_ATTRIB on a mount mark
    with EINVAL: the first try asked for it, and the mark was never placed). What still
    arrives (the mtime restore, the marker) is dropped by pid: a recall changes nothing."""
    p, digest = hsm.write("quiet/a.bin", size=3 * (1 << 20))
    hsm.migrate(p)
    hsm.ctl("journal", "snapshot")  # a new epoch: nothing recorded yet
    drop_caches()
    assert sha256(p) == digest
    assert hsm.state(p) == "archived"
    assert "no ignore mark on hsmd's private mount" not in hsm.log_text()
    assert "quiet" not in listed(hsm), listed(hsm)
