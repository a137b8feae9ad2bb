"""The catalog (state_dir/catalog.sqlite), hsmctl report and hsmctl check, on a real
loop-mounted ext4 with a posix store."""
import json
import os
from pathlib import Path

from conftest import drop_caches

MiB = 1 << 20


def report(hsm, *args):
    return json.loads(hsm.ctl("report", "--json", *args).stdout)


def fs_report(hsm):
    r = report(hsm)
    assert len(r["filesystems"]) == 1, r
    return r["filesystems"][0], r["stores"][0]


def check(hsm, *args):
    r = hsm.ctl("check", "--json", *args, check=False)
    assert r.returncode in (0, 1), f"check exited {r.returncode}: {r.stderr}"
    return r.returncode, json.loads(r.stdout)


def kinds(result):
    return sorted(d["kind"] for d in result["discrepancies"])


def test_report_follows_archive_release_recall(hsm):
    a, _ = hsm.write("a.bin", size=3 * MiB)
    b, _ = hsm.write("b.bin", size=2 * MiB)
    c, _ = hsm.write("dir/c.bin", size=1 * MiB)
    hsm.ctl("archive", a, b, c)
    fs, store = fs_report(hsm)
    assert fs["states"]["archived"] == {"files": 3, "bytes": 6 * MiB}
    assert fs["offline_bytes"] == 0 and fs["local_bytes"] == 6 * MiB
    assert store["objects"] == 3 and store["orphans"] == 0
    assert store["stored_bytes"] == 6 * MiB
    assert fs["oldest_archive"] is not None and fs["newest_archive"] >= fs["oldest_archive"]

    hsm.ctl("release", a, b)
    fs, _ = fs_report(hsm)
    assert fs["states"]["released"] == {"files": 2, "bytes": 5 * MiB}
    assert fs["states"]["archived"] == {"files": 1, "bytes": 1 * MiB}
    assert fs["offline_bytes"] == 5 * MiB and fs["local_bytes"] == 1 * MiB

    # A read of b's whole first block makes it a partial file (a smaller read brings back
    # only its pages and leaves the block offline); hsmctl recall brings a back.
    drop_caches()
    with open(b, "rb", buffering=0) as f:
        assert len(f.read(MiB)) == MiB
    hsm.ctl("recall", a)
    fs, _ = fs_report(hsm)
    assert fs["states"]["partial"]["files"] == 1, fs
    assert fs["states"]["archived"] == {"files": 2, "bytes": 4 * MiB}
    assert fs["offline_bytes"] == 1 * MiB

    # Archived again after a change: the old object leaves the catalog with the store.
    hsm.ctl("recall", b)
    with open(c, "ab") as f:
        f.write(b"more")
    hsm.ctl("archive", c)
    fs, store = fs_report(hsm)
    assert fs["states"]["archived"]["files"] == 3
    assert store["objects"] == 3 and store["orphans"] == 0
    text = hsm.ctl("report").stdout
    assert "archived" in text and "store tier1: 3 objects" in text
    code, result = check(hsm)
    assert code == 0 and result["discrepancies"] == [], result


def test_lost_or_corrupt_catalog_is_rebuilt(hsm):
    a, _ = hsm.write("a.bin", size=2 * MiB)
    b, _ = hsm.write("b.bin", size=1 * MiB)
    hsm.ctl("archive", a, b)
    hsm.ctl("release", a)
    before, _ = fs_report(hsm)
    catalog = hsm.state_dir / "catalog.sqlite"
    for damage in ("delete", "corrupt"):
        hsm.stop()
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(catalog) + suffix)
            if p.exists():
                p.unlink()
        if damage == "corrupt":
            catalog.write_bytes(b"this is not an SQLite database" * 200)
        hsm.start()
        assert hsm.wait_for_log("rebuilding it from the markers and the stores"), hsm.log_text()
        hsm.ctl("check", "--repair")
        after, store = fs_report(hsm)
        assert after["states"] == before["states"], (damage, after, before)
        assert after["offline_bytes"] == 2 * MiB and store["objects"] == 2
    assert list(hsm.state_dir.glob("catalog.sqlite.damaged-*")), "the corrupt catalog was not set aside"
    assert hsm.proc.poll() is None


def test_check_finds_missing_object_and_orphan(hsm):
    a, _ = hsm.write("a.bin", size=2 * MiB)
    b, _ = hsm.write("b.bin", size=1 * MiB)
    hsm.ctl("archive", a, b)
    hsm.ctl("release", a)
    code, result = check(hsm)
    assert code == 0, result
    obj_a = hsm.status(a)["object"]
    # The object of a released file goes missing; b is deleted, leaving its object.
    for f in hsm.store.glob(f"objects/*/{obj_a}.*"):
        f.unlink()
    obj_b = hsm.status(b)["object"]
    b.unlink()
    r = hsm.ctl("check", a.parent, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "missing_object" in r.stdout and "damaged" in r.stdout and "orphan" in r.stdout
    code, result = check(hsm)
    by_kind = {}
    for d in result["discrepancies"]:
        by_kind.setdefault(d["kind"], []).append(d)
    assert code == 1
    assert [d["path"] for d in by_kind["missing_object"]] == [str(a)]
    assert [d["object"] for d in by_kind["orphan"]] == [obj_b]
    # The catalog still has b's row and a's object: stale rows, named as such.
    stale = by_kind["stale_catalog"]
    assert any(d["path"] == str(b) for d in stale), stale
    assert any(d["object"] == obj_a for d in stale), stale
    # Repair rebuilds the catalog only: the orphan stays in the store, a stays damaged.
    hsm.ctl("check", "--repair", check=False)
    code, result = check(hsm)
    assert kinds(result) == ["missing_object", "orphan"], result
    fs, store = fs_report(hsm)
    assert fs["states"]["damaged"]["files"] == 1
    assert store["orphans"] == 1
    assert list(hsm.store.glob(f"objects/*/{obj_b}.data"))


def test_scrub_detects_a_corrupt_block(hsm):
    a, _ = hsm.write("a.bin", size=3 * MiB)
    b, _ = hsm.write("b.bin", size=1 * MiB)
    hsm.ctl("archive", a, b)
    code, result = check(hsm, "--scrub")
    assert code == 0 and result["scrubbed_objects"] == 2 and result["scrubbed_bytes"] == 4 * MiB, result
    obj = hsm.status(a)["object"]
    data = next(hsm.store.glob(f"objects/*/{obj}.data"))
    with open(data, "r+b") as f:
        f.seek(MiB + 12345)
        byte = f.read(1)
        f.seek(MiB + 12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, result = check(hsm)
    assert code == 0, "without --scrub the blocks are not read"
    code, result = check(hsm, "--scrub", "--rate", "100M")
    assert code == 1
    assert kinds(result) == ["corrupt_object"], result
    d = result["discrepancies"][0]
    assert d["path"] == str(a) and d["object"] == obj and "block 1" in d["meaning"]


def test_check_exit_codes_and_usage(hsm, tmp_path):
    r = hsm.ctl("check", "--rate", "10M", check=False)
    assert r.returncode == 2 and "--scrub" in r.stderr
    r = hsm.ctl("check", str(tmp_path), check=False)
    assert r.returncode == 3 and "not on a managed filesystem" in r.stderr
    r = hsm.ctl("report", str(tmp_path), check=False)
    assert r.returncode == 2 and "not on a managed filesystem" in r.stderr


def test_check_while_files_are_archived_reports_nothing(hsm):
    """Archives (and re-archives) running during a check are not orphans, missing
    objects or stale rows: each finding is confirmed before it is reported."""
    import threading
    paths = [hsm.write(f"busy/f{i}", size=64 * 1024 + i)[0] for i in range(300)]
    done = threading.Event()
    errors = []

    def archiver():
        try:
            for i in range(0, len(paths), 20):
                hsm.ctl("archive", *paths[i:i + 20])
            for p in paths[:100]:          # dirty, then archived again: a new object each
                with open(p, "ab") as f:
                    f.write(b"x")
            for i in range(0, 100, 20):
                hsm.ctl("archive", *paths[i:i + 20])
        except Exception as e:             # reported by the main thread
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=archiver)
    t.start()
    runs = 0
    while not done.is_set() or runs == 0:
        code, result = check(hsm)
        runs += 1
        assert code == 0 and result["discrepancies"] == [], result
    t.join()
    assert not errors, errors
    code, result = check(hsm)
    assert code == 0, result
    fs, store = fs_report(hsm)
    assert fs["states"]["archived"]["files"] == 300 and store["objects"] == 300 and store["orphans"] == 0, (fs, store)


def test_report_follows_remove_gc_and_import(hsm):
    a, _ = hsm.write("a.bin", size=2 * MiB)
    b, _ = hsm.write("b.bin", size=1 * MiB)
    hsm.ctl("archive", a, b)
    hsm.ctl("remove", a)
    fs, store = fs_report(hsm)
    assert store["objects"] == 1, store
    assert fs["states"]["archived"] == {"files": 1, "bytes": 1 * MiB}, fs
    assert fs["states"]["resident"]["files"] == 1, fs

    # b deleted: its object is an orphan once the catalog is rebuilt; gc deletes it.
    os.unlink(b)
    hsm.ctl("check", "--repair", check=False)
    _, store = fs_report(hsm)
    assert store["objects"] == 1 and store["orphans"] == 1, store
    hsm.ctl("gc", "--grace", "0s")
    _, store = fs_report(hsm)
    assert store["objects"] == 0 and store["orphans"] == 0, store

    # import makes a released stub of an orphan: the catalog learns the file and its object.
    c, digest = hsm.write("c.bin", size=3 * MiB)
    hsm.ctl("archive", c)
    hsm.ctl("release", c)
    os.unlink(c)
    hsm.ctl("check", "--repair", check=False)
    _, store = fs_report(hsm)
    assert store["orphans"] == 1, store
    hsm.ctl("import", "tier1")
    fs, store = fs_report(hsm)
    assert store["objects"] == 1 and store["orphans"] == 0, store
    assert fs["states"]["released"] == {"files": 1, "bytes": 3 * MiB}, fs
    code, result = check(hsm)
    assert code == 0 and result["discrepancies"] == [], result


def test_check_with_an_unreadable_directory_calls_nothing_there_missing(hsm):
    """A directory the walk cannot read (here: its path is longer than PATH_MAX, so
    every call by path fails with ENAMETOOLONG) hides files. check must say so, call no
    object of that store an orphan and no row of a file there stale, and --repair must
    keep those rows: before, the hidden file's object was reported as an orphan that
    "can be deleted", and the repair dropped its row."""
    hidden, digest = hsm.write("tree/hidden.bin", size=1 * MiB)
    seen, _ = hsm.write("seen.bin", size=1 * MiB)
    gone, _ = hsm.write("gone.bin", size=1 * MiB)
    hsm.ctl("archive", hidden, seen, gone)
    hsm.ctl("release", hidden)
    hidden_obj = hsm.status(hidden)["object"]
    gone_obj = hsm.status(gone)["object"]
    gone.unlink()  # a true orphan: its report must wait until the walk is complete
    hsm.ctl("check", "--repair", check=False)
    code, result = check(hsm)
    assert kinds(result) == ["orphan"], result

    # 17 directories of 255 bytes below the mount: past PATH_MAX (4096).
    fds = [os.open(hsm.mnt, os.O_DIRECTORY)]
    try:
        for i in range(17):
            name = f"d{i:02d}" + "x" * 252
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_DIRECTORY, dir_fd=fds[-1]))
        os.rename(hsm.mnt / "tree", "tree", dst_dir_fd=fds[-1])
        r = hsm.ctl("check", "--json", check=False)
        assert r.returncode == 3, f"check exited {r.returncode}: {r.stdout} {r.stderr}"
        result = json.loads(r.stdout)
        assert "orphan" not in kinds(result), result
        assert "stale_catalog" not in kinds(result), result
        unreadable = [d for d in result["discrepancies"] if d["kind"] == "unreadable"]
        assert unreadable and all("File name too long" in d["meaning"] or "ENAMETOOLONG" in d["meaning"] for d in unreadable), unreadable
        assert all(d.get("object") != hidden_obj for d in result["discrepancies"]), result

        r = hsm.ctl("check", "--repair", check=False)
        assert r.returncode == 3, r.stdout + r.stderr
        fs, store = fs_report(hsm)
        assert fs["states"]["released"]["files"] == 1, fs  # the hidden file's row kept
        assert store["orphans"] == 1, store  # only gone.bin's object
        # status and migrate of the tree say what they could not read.
        for op in ("status", "migrate"):
            r = hsm.ctl(op, hsm.mnt, check=False)
            assert r.returncode != 0 and "File name too long" in r.stdout + r.stderr, (op, r.stdout, r.stderr)

        # Readable again: the check is complete, and finds the one real orphan.
        os.rename("tree", hsm.mnt / "tree", src_dir_fd=fds[-1])
        for i in reversed(range(17)):
            os.rmdir(f"d{i:02d}" + "x" * 252, dir_fd=fds[i])
    finally:
        for fd in fds:
            os.close(fd)
    code, result = check(hsm)
    assert code == 1 and kinds(result) == ["orphan"], result
    assert result["discrepancies"][0]["object"] == gone_obj
    drop_caches()
    import hashlib
    assert hashlib.sha256(hidden.read_bytes()).hexdigest() == digest
