"""hsmctl migrate and status over large trees: hsmd sends each file's result or row as it
makes it and holds no list of the tree's files, so its memory does not grow with the tree;
paths named twice, or inside a directory also named, are migrated and reported once."""
import json
import os
import socket
import time

from conftest import drop_caches, sha256
from test_queue import queue, start_hsmd, wait_for

KiB = 1 << 10
MiB = 1 << 20


def rss_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def make_empty_files(root, n, per_dir=1000):
    for d in range((n + per_dir - 1) // per_dir):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(min(per_dir, n - d * per_dir)):
            os.close(os.open(sub / f"file-with-a-longish-name-{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644))


def test_a_migrate_of_a_large_tree_does_not_grow_hsmds_memory(hsm):
    """60,000 files the policy skips: hsmd used to keep one result per file (about 0.6 KiB
    each, some 35 MiB here) until the run ended. Now its peak during the run stays within
    a few MiB of where it started, and hsmctl still gets every file's result."""
    n = 60_000
    make_empty_files(hsm.mnt / "big", n)
    pid = hsm.proc.pid
    hsm.ctl("status", hsm.mnt / "big" / "d000" / "file-with-a-longish-name-00000")
    # The peak so far (start-up, the walk of status) does not count: reset it (proc(5), clear_refs).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib(pid, "VmRSS")
    r = hsm.ctl("migrate", "--json", "--min-size", "1k", hsm.mnt / "big")
    peak = rss_kib(pid, "VmHWM")
    out = json.loads(r.stdout)
    assert out["summary"]["files"] == n and out["summary"]["skipped"] == n, out["summary"]
    paths = [f["path"] for f in out["files"]]
    assert paths == sorted(paths), "hsmctl prints the rows sorted by path"
    assert len(set(paths)) == n
    grew = (peak - before) / 1024
    print(f"hsmd RSS before {before / 1024:.1f} MiB, peak during the migrate {peak / 1024:.1f} MiB (+{grew:.1f})")
    assert grew < 8, f"hsmd's RSS rose by {grew:.1f} MiB during a migrate of {n} skipped files"
    text = hsm.ctl("migrate", "--min-size", "1k", hsm.mnt / "big").stdout
    assert f"skipped {n}: smaller than" in text, text


def test_status_of_a_large_tree_does_not_grow_hsmds_memory(hsm):
    """60,000 rows: hsmd used to hold them all and encode them into one reply line."""
    n = 60_000
    make_empty_files(hsm.mnt / "big", n)
    p, _ = hsm.write("big/zz/archived.bin", 64 * KiB)
    hsm.ctl("archive", p)
    pid = hsm.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib(pid, "VmRSS")
    rows = json.loads(hsm.ctl("status", "--json", hsm.mnt / "big").stdout)
    peak = rss_kib(pid, "VmHWM")
    assert len(rows) == n + 1 and len({r["path"] for r in rows}) == n + 1
    assert {r["state"] for r in rows} == {"resident", "archived"}
    assert [r["path"] for r in rows if r["state"] == "archived"] == [str(p)]
    grew = (peak - before) / 1024
    print(f"hsmd RSS before {before / 1024:.1f} MiB, peak during the status {peak / 1024:.1f} MiB (+{grew:.1f})")
    assert grew < 8, f"hsmd's RSS rose by {grew:.1f} MiB during a status of {n + 1} files"
    text = hsm.ctl("status", hsm.mnt / "big").stdout.splitlines()
    assert len(text) == n + 2 and text[0].startswith("STATE"), text[:3]


def test_results_reach_hsmctl_while_the_migrate_runs(hsm_stopped):
    """A first part of the results (600 files the policy skips) arrives while the job is
    still listed in hsmctl queue, archiving the rest slowly."""
    h = hsm_stopped
    start_hsmd(h, HSMD_TEST_ARCHIVE_PAUSE_MS=300)
    make_empty_files(h.mnt / "tree" / "a", 600)
    for i in range(4):
        h.write(f"tree/b/f{i}.bin", 64 * KiB)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(h.socket))
    try:
        request = {"op": "migrate", "paths": [str(h.mnt / "tree")], "min_size": 1024, "jobs": 1}
        conn.sendall(json.dumps(request).encode() + b"\n")
        reader = conn.makefile("rb")
        first = json.loads(reader.readline())
        assert first["type"] == "files", first
        # hsmd sent it before the run ended: the job is still there.
        jobs = queue(h)["jobs"]
        assert [j["op"] for j in jobs] == ["migrate"], jobs
        lines = [first] + [json.loads(l) for l in reader]
    finally:
        conn.close()
    assert lines[-1]["type"] == "result", lines[-1]
    files = [f for l in lines for f in (l.get("files") or [])]
    assert len(files) == 604, len(files)
    done = sorted(f["path"] for f in files if f["outcome"] == "done")
    assert done == [str(h.mnt / "tree" / "b" / f"f{i}.bin") for i in range(4)], done
    wait_for("an empty queue", lambda: queue(h)["jobs"] == [])


def test_paths_named_twice_or_inside_a_named_directory_are_migrated_once(hsm):
    files = {}
    for name in ("t/x.bin", "t/sub/y.bin", "t/sub/z.bin", "u.bin"):
        p, d = hsm.write(name, 256 * KiB)
        files[str(p)] = d
    t = hsm.mnt / "t"
    os.symlink(t / "sub", hsm.mnt / "link-to-sub")
    r = hsm.ctl("migrate", "--json", t / "sub", t, f"{hsm.mnt}/./t/sub/y.bin", hsm.mnt / "u.bin", hsm.mnt / "u.bin",
                hsm.mnt / "link-to-sub")
    rows = json.loads(r.stdout)["files"]
    by_path = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    # Every file once, under the name of the widest path that holds it (hsmctl resolves
    # the symlink: it is one more name of t/sub).
    assert sorted(by_path) == sorted(files), rows
    assert all(len(v) == 1 for v in by_path.values()), rows
    for p in files:
        assert by_path[p][0]["outcome"] == "done" and hsm.state(p) == "released", by_path[p]
    drop_caches()
    for p, d in files.items():
        assert sha256(p) == d


def test_a_hard_linked_file_is_migrated_once_across_batches(hsm):
    """The two names of one inode are far apart in the walk (more than one batch of
    candidates between them): one archive, the other name skipped."""
    first, digest = hsm.write("h/a/first.bin", 4 * KiB)
    for i in range(1100):
        hsm.write(f"h/b/f{i:04d}", 1 * KiB)
    os.makedirs(hsm.mnt / "h" / "c")
    os.link(first, hsm.mnt / "h" / "c" / "second.bin")
    r = hsm.ctl("migrate", "--json", hsm.mnt / "h")
    rows = {row["path"]: row for row in json.loads(r.stdout)["files"]}
    assert rows[str(first)]["outcome"] == "done", rows[str(first)]
    second = rows[str(hsm.mnt / "h" / "c" / "second.bin")]
    assert second["outcome"] == "skipped" and second["reason"].startswith("hard link"), second
    assert sum(1 for r in rows.values() if r["outcome"] == "done") == 1101
    drop_caches()
    assert sha256(hsm.mnt / "h" / "c" / "second.bin") == digest
