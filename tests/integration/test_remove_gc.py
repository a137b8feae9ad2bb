"""hsmctl remove (a file's stored copy goes, the file stays) and hsmctl gc (orphaned
objects go, after a grace period; anything referenced or young stays)."""
import json
import os
import subprocess
import time

from conftest import drop_caches, sha256

MARKER = "trusted.hsm"


def has_marker(path):
    try:
        os.getxattr(path, MARKER)
        return True
    except OSError:
        return False


def object_paths(hsm, obj):
    d = hsm.store / "objects" / obj[:2]
    return d / f"{obj}.data", d / f"{obj}.json"


def stored(hsm, obj):
    data, record = object_paths(hsm, obj)
    return data.exists() or record.exists()


def archive(hsm, name, size):
    p, digest = hsm.write(name, size=size)
    hsm.ctl("archive", p)
    obj = hsm.status(p)["object"]
    assert stored(hsm, obj)
    return p, digest, obj


# --- remove ---------------------------------------------------------------------------------


def test_remove_archived_file_deletes_its_object_and_keeps_the_file(hsm):
    p, digest, obj = archive(hsm, "dir/a.bin", 3_000_000)
    mode, mtime = os.stat(p).st_mode, os.stat(p).st_mtime_ns
    r = hsm.ctl("remove", p)
    assert "stored copy removed" in r.stdout, r.stdout
    assert not stored(hsm, obj), "the object is still in the store"
    assert not has_marker(p)
    assert hsm.state(p) == "resident"
    assert os.stat(p).st_mode == mode and os.stat(p).st_mtime_ns == mtime
    drop_caches()
    assert sha256(p) == digest
    # It is an ordinary file now: it can be archived again, as a new object.
    hsm.ctl("archive", p)
    assert hsm.status(p)["object"] not in (None, obj)


def test_remove_of_a_never_archived_file_changes_nothing(hsm):
    p, digest = hsm.write("plain.bin", size=10_000)
    r = hsm.ctl("remove", p)
    assert "not archived" in r.stdout, r.stdout
    assert sha256(p) == digest and hsm.state(p) == "resident"


def test_remove_of_a_dirty_file_keeps_its_new_data(hsm):
    p, _, obj = archive(hsm, "dirty.bin", 200_000)
    with open(p, "r+b") as f:
        f.write(b"changed")
    data = p.read_bytes()
    assert hsm.state(p) == "dirty"
    hsm.ctl("remove", p)
    assert not stored(hsm, obj) and not has_marker(p)
    assert p.read_bytes() == data


def test_remove_refuses_released_and_partial_files(hsm):
    p, digest, obj = archive(hsm, "rel.bin", 3_000_000)
    hsm.ctl("release", p)
    r = hsm.ctl("remove", p, check=False)
    assert r.returncode == 1, r
    assert "released" in r.stderr and "--recall" in r.stderr, r.stderr
    assert stored(hsm, obj) and has_marker(p) and hsm.state(p) == "released"
    # Partial: one block back.
    hsm.ctl("recall", "--range", "0:4096", p)
    assert hsm.state(p) == "partial"
    r = hsm.ctl("remove", p, check=False)
    assert r.returncode == 1 and "partial" in r.stderr, r
    assert stored(hsm, obj) and has_marker(p)
    drop_caches()
    assert sha256(p) == digest


def test_remove_recall_brings_the_data_back_first(hsm):
    p, digest, obj = archive(hsm, "rel.bin", 5_000_000)
    hsm.ctl("release", p)
    assert os.stat(p).st_blocks == 0
    r = hsm.ctl("remove", "--recall", "--json", p)
    doc = json.loads(r.stdout)
    assert doc["files"][0]["outcome"] == "done" and doc["files"][0]["state"] == "resident", doc
    assert not stored(hsm, obj) and not has_marker(p)
    assert os.stat(p).st_blocks * 512 >= 5_000_000
    drop_caches()
    assert sha256(p) == digest


def test_remove_many_reports_each_file(hsm):
    a, _, obj_a = archive(hsm, "a.bin", 100_000)
    b, _, obj_b = archive(hsm, "b.bin", 100_000)
    hsm.ctl("release", b)
    missing = hsm.mnt / "missing"
    r = hsm.ctl("remove", a, b, missing, check=False)
    assert r.returncode == 1
    assert f"{a}: resident" in r.stdout, r.stdout
    assert f"remove {b}:" in r.stderr and f"remove {missing}: no such file" in r.stderr, r.stderr
    assert not stored(hsm, obj_a) and stored(hsm, obj_b)


def test_remove_crash_after_marker_removal_leaves_no_orphan_after_restart(hsm):
    """A remove whose hsmd died after the note and marker went (simulated: the marker is
    removed by hand and a note written as hsmd writes it) is finished at the next start."""
    p, digest, obj = archive(hsm, "c.bin", 100_000)
    st = os.stat(p)
    assert hsm.stop() == 0
    os.removexattr(p, MARKER)
    note = {"kind": "remove", "object": obj, "store": "tier1", "path": str(p), "device": os.major(st.st_dev) << 32 | os.minor(st.st_dev), "inode": st.st_ino}
    (hsm.state_dir / "in-progress").mkdir(exist_ok=True)
    (hsm.state_dir / "in-progress" / "slot-7").write_text(json.dumps(note))
    hsm.start()
    assert hsm.wait_for_log(f"interrupted remove of {p} finished: object {obj} deleted"), hsm.log_text()[-2000:]
    assert not stored(hsm, obj)
    assert sha256(p) == digest


def test_remove_killed_before_its_marker_went_keeps_the_object(hsm):
    p, digest, obj = archive(hsm, "k.bin", 100_000)
    hsm.ctl("release", p)
    st = os.stat(p)
    assert hsm.stop() == 0
    note = {"kind": "remove", "object": obj, "store": "tier1", "path": str(p),
            "device": os.major(st.st_dev) << 32 | os.minor(st.st_dev), "inode": st.st_ino}
    (hsm.state_dir / "in-progress" / "slot-3").write_text(json.dumps(note))
    hsm.start()
    assert hsm.wait_for_log(f"interrupted remove of {p}: its marker still names object {obj}; nothing was removed")
    assert stored(hsm, obj) and hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest


# --- gc ---------------------------------------------------------------------------------------


def orphan(hsm, name, size, age_days):
    """An archived file whose marker is gone (as after a restore without xattrs), its
    record's archive time `age_days` ago."""
    p, _, obj = archive(hsm, name, size)
    os.removexattr(p, MARKER)
    _, record = object_paths(hsm, obj)
    doc = json.loads(record.read_text())
    doc["archived_at"] = int(time.time()) - int(age_days * 86400)
    record.write_text(json.dumps(doc))
    return obj


def gc(hsm, *args, check=True):
    return hsm.ctl("gc", *args, check=check)


def test_gc_deletes_old_orphans_only(hsm):
    old = orphan(hsm, "old.bin", 200_000, age_days=40)
    young = orphan(hsm, "young.bin", 200_000, age_days=2)
    live, digest, live_obj = archive(hsm, "live.bin", 3_000_000)
    hsm.ctl("release", live)
    # The record of the referenced object is old too: only the marker keeps it.
    _, rec = object_paths(hsm, live_obj)
    doc = json.loads(rec.read_text())
    doc["archived_at"] = int(time.time()) - 400 * 86400
    rec.write_text(json.dumps(doc))

    r = gc(hsm, "--dry-run")
    assert f"{old} " in r.stdout and "would delete" in r.stdout, r.stdout
    assert stored(hsm, old) and stored(hsm, young) and stored(hsm, live_obj)

    r = gc(hsm)
    assert f"{old} {hsm.mnt}/old.bin: deleted" in r.stdout, r.stdout
    assert f"{young} {hsm.mnt}/young.bin: kept" in r.stdout and "within the grace (30d)" in r.stdout, r.stdout
    assert "1 named by markers" in r.stdout, r.stdout
    assert not stored(hsm, old)
    assert stored(hsm, young) and stored(hsm, live_obj)
    drop_caches()
    assert sha256(live) == digest

    # A shorter grace takes the young one too.
    r = gc(hsm, "--grace", "1d")
    assert f"{young} {hsm.mnt}/young.bin: deleted" in r.stdout, r.stdout
    assert not stored(hsm, young) and stored(hsm, live_obj)


def test_gc_json(hsm):
    old = orphan(hsm, "old.bin", 10_000, age_days=31)
    doc = json.loads(gc(hsm, "--json", "--dry-run").stdout)
    [row] = [f for f in doc["files"] if f["object"] == old]
    assert row["outcome"] == "done" and row["reason"].startswith("would delete"), row
    assert any("store tier1" in n for n in doc["notes"]), doc
    assert stored(hsm, old)


def test_gc_keeps_objects_named_by_a_moved_or_hard_linked_file(hsm):
    p, _, obj = archive(hsm, "a/deep/file.bin", 100_000)
    hsm.ctl("release", p)
    os.makedirs(hsm.mnt / "b")
    os.rename(p, hsm.mnt / "b" / "renamed.bin")
    os.link(hsm.mnt / "b" / "renamed.bin", hsm.mnt / "link.bin")
    _, rec = object_paths(hsm, obj)
    doc = json.loads(rec.read_text())
    doc["archived_at"] = 1
    rec.write_text(json.dumps(doc))
    gc(hsm, "--grace", "0")
    assert stored(hsm, obj)


def test_gc_sees_a_file_moved_during_its_walk(hsm_stopped):
    """A released file moved out of a directory the walk has not reached into one it has
    already listed is seen by neither listing; the change journal's record of the move
    makes gc look again, and the object stays."""
    hsm = hsm_stopped
    gate = hsm.base / "gate"
    hsm.start(env={"HSMD_TEST_GC_WALK_GATE": str(gate)})
    p, digest, obj = archive(hsm, "sub/file.bin", 100_000)
    hsm.ctl("release", p)
    _, rec = object_paths(hsm, obj)
    doc = json.loads(rec.read_text())
    doc["archived_at"] = 1
    rec.write_text(json.dumps(doc))
    gate.write_text("")
    env = dict(os.environ, HSMD_SOCKET=str(hsm.socket))
    from conftest import HSMCTL
    proc = subprocess.Popen([str(HSMCTL), "gc", "--grace", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        reached = hsm.base / "gate.reached"
        for _ in range(3000):
            if reached.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert reached.exists(), "gc's walk never reached its gate"
        # The root is listed (without the file); sub/ is not yet.
        os.rename(p, hsm.mnt / "moved.bin")
    finally:
        gate.unlink()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    assert stored(hsm, obj), f"gc deleted the object of a file it missed:\n{out}"
    assert "1 named by markers" in out, out
    drop_caches()
    assert sha256(hsm.mnt / "moved.bin") == digest


def test_gc_deletes_nothing_when_the_walk_is_incomplete(hsm):
    old = orphan(hsm, "old.bin", 10_000, age_days=60)
    bad, _ = hsm.write("bad.bin", size=100)
    os.setxattr(bad, MARKER, b"not a marker")
    r = gc(hsm, check=False)
    assert r.returncode == 1, r
    assert "damaged marker" in r.stderr and str(bad) in r.stderr, r.stderr
    assert "nothing is deleted" in r.stdout, r.stdout
    assert stored(hsm, old)
    os.removexattr(bad, MARKER)
    gc(hsm)
    assert not stored(hsm, old)


def test_gc_deletes_nothing_from_a_store_that_is_not_there(hsm):
    old = orphan(hsm, "old.bin", 10_000, age_days=60)
    identity = hsm.store / "hsmd-store.json"
    saved = identity.read_bytes()
    identity.unlink()
    try:
        r = gc(hsm, check=False)
        assert r.returncode == 1, r
        assert "store tier1" in r.stderr and "nothing deleted from it" in r.stderr, r.stderr
        assert stored(hsm, old)
    finally:
        identity.write_bytes(saved)


def test_gc_deletes_nothing_from_a_store_it_cannot_list(hsm):
    old = orphan(hsm, "old.bin", 10_000, age_days=60)
    # Where put makes a directory of objects, a file: that part cannot be listed.
    stray = hsm.store / "objects" / ("00" if not old.startswith("00") else "01")
    stray.write_text("")
    r = gc(hsm, check=False)
    assert r.returncode == 1, r
    assert "cannot list its objects" in r.stderr and "nothing deleted from it" in r.stderr, r.stderr
    assert stored(hsm, old)
    stray.unlink()
    gc(hsm)
    assert not stored(hsm, old)


def test_gc_without_the_journal_deletes_nothing(hsm_stopped):
    hsm = hsm_stopped
    hsm.write_config(extra="journal = false")
    hsm.start()
    old = orphan(hsm, "old.bin", 10_000, age_days=60)
    r = gc(hsm, check=False)
    assert r.returncode == 1 and "journal" in r.stderr, r
    assert stored(hsm, old)
