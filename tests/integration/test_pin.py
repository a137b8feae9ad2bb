"""hsmctl pin and unpin: a pinned file's data stays local. Release refuses it, migrate and
the watermarks skip it, pinning a released file recalls it; archive still copies it, but
never the pin itself into the store's record."""
import json
import os
import subprocess

import pytest

from conftest import drop_caches, sha256
from test_watermarks import make_file, percent_used, small_managed_filesystem, wait_for, write_config

MiB = 1 << 20
PIN = "trusted.hsm.pin"


def pinned(hsm, p):
    return hsm.status(p).get("pinned")


def test_release_refuses_a_pinned_file_until_it_is_unpinned(hsm):
    p, digest = hsm.write("a.bin", size=3 * MiB)
    hsm.ctl("archive", p)
    r = hsm.ctl("pin", "--json", p)
    assert json.loads(r.stdout)["files"][0]["reason"] == "pinned", r.stdout
    assert pinned(hsm, p) is True
    assert "(pinned)" in hsm.ctl("status", p).stdout
    assert "already pinned" in hsm.ctl("pin", p).stdout

    r = hsm.ctl("release", "--json", p, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    result = json.loads(r.stdout)["files"][0]
    assert result["outcome"] == "failed" and result["reason"].startswith("pinned"), result
    assert hsm.state(p) == "archived"
    assert os.stat(p).st_blocks * 512 >= 3 * MiB, "a pinned file lost data blocks"

    assert "unpinned" in hsm.ctl("unpin", p).stdout
    assert pinned(hsm, p) is False
    assert "not pinned" in hsm.ctl("unpin", p).stdout
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    drop_caches()
    assert sha256(p) == digest


def test_pinning_a_released_file_brings_its_data_back(hsm):
    p, digest = hsm.write("b.bin", size=5 * MiB)
    hsm.migrate(p)
    r = hsm.ctl("pin", "--json", p)
    out = json.loads(r.stdout)
    assert out["files"][0]["reason"] == "pinned; its offline data recalled", out
    assert out["summary"]["bytes_recalled"] == 5 * MiB, out
    assert hsm.state(p) == "archived"
    assert pinned(hsm, p) is True
    assert os.stat(p).st_blocks * 512 >= 5 * MiB
    assert sha256(p) == digest


def test_migrate_skips_pinned_files_and_counts_them(hsm):
    files = {}
    for i in range(4):
        p, d = hsm.write(f"tree/f{i}.bin", size=1 * MiB)
        files[p] = d
    keep = hsm.mnt / "tree" / "f2.bin"
    hsm.ctl("pin", keep)
    r = hsm.ctl("migrate", "--json", hsm.mnt / "tree")
    rows = {row["path"]: row for row in json.loads(r.stdout)["files"]}
    assert rows[str(keep)]["outcome"] == "skipped" and rows[str(keep)]["reason"].startswith("pinned"), rows
    for p in files:
        assert hsm.state(p) == ("resident" if p == keep else "released"), (p, hsm.status(p))
    # The summary counts the skip by its reason.
    text = hsm.ctl("migrate", hsm.mnt / "tree").stdout
    assert "pinned" in text, text
    drop_caches()
    for p, d in files.items():
        assert sha256(p) == d


def test_archive_never_stores_the_pin_with_the_files_xattrs(hsm):
    p, _ = hsm.write("c.bin", size=100_000)
    os.setxattr(p, "user.colour", b"blue")
    hsm.ctl("pin", p)
    hsm.ctl("archive", p)
    obj = hsm.status(p)["object"]
    record = (hsm.store / "objects" / obj[:2] / f"{obj}.json").read_text()
    assert "user.colour" in record, record[:400]
    assert PIN not in record, record[:400]
    assert os.getxattr(p, PIN) == b"1"


def test_pin_refuses_what_it_cannot_pin(hsm, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    r = hsm.ctl("pin", outside, check=False)
    assert r.returncode == 1 and "not on a managed filesystem" in r.stderr, r.stderr
    (hsm.mnt / "d").mkdir()
    r = hsm.ctl("pin", hsm.mnt / "d", check=False)
    assert r.returncode == 1 and "is a directory" in r.stderr, r.stderr
    with pytest.raises(OSError):
        os.getxattr(outside, PIN)


def archived_files_under_watermarks(h, prefix, count, pin, high, low):
    """`count` archived 6 MiB files on a full small filesystem, those `pin` picks pinned,
    then hsmd started again with watermarks `high`/`low` looking every second."""
    write_config(h)
    h.start()
    files = {}
    for i in range(count):
        p, d = make_file(h, f"{prefix}{i}.bin", 6 * MiB, age_days=30 + i)
        files[p] = d
    h.ctl("archive", *files)
    h.ctl("pin", *[p for p in files if pin(p)])
    assert h.stop() == 0
    subprocess.run(["sync"], check=True)
    assert percent_used(h.mnt) >= high
    write_config(h, top='watermark_interval = "1s"', fs_keys=f"high_watermark = {high}\nlow_watermark = {low}\n")
    h.start()
    return files


def test_the_watermarks_leave_a_pinned_file():
    """The least recently used file is pinned: the pass frees the space from the others
    and says how many it left pinned."""
    with small_managed_filesystem(image_size="128M") as h:
        oldest = h.mnt / "c9.bin"
        files = archived_files_under_watermarks(h, "c", 10, lambda p: p == oldest, high=40, low=30)
        wait_for(lambda: percent_used(h.mnt) < 30, 120, "usage did not fall below the low mark", h)
        wait_for(lambda: h.wait_for_log(f"watermarks: {h.mnt}: ", timeout=0.1), 60, "no pass line", h)
        assert h.state(oldest) == "archived", h.status(oldest)
        assert h.status(oldest)["pinned"] is True
        released = [p for p in files if h.state(p) == "released"]
        assert released, {p: h.state(p) for p in files}
        for p, d in files.items():
            assert sha256(p) == d


def test_a_filesystem_full_of_pinned_files_warns_and_counts_them():
    with small_managed_filesystem(image_size="128M") as h:
        files = archived_files_under_watermarks(h, "p", 8, lambda p: True, high=30, low=20)
        wait_for(lambda: h.wait_for_log("nothing eligible is left", timeout=0.1), 60, "no warning that nothing is eligible", h)
        line = [l for l in h.log_text().splitlines() if "nothing eligible is left" in l][0]
        assert "8 pinned" in line, line
        for p, d in files.items():
            assert h.state(p) == "archived"
            assert sha256(p) == d


def pinned_in_report(hsm):
    r = json.loads(hsm.ctl("report", "--json").stdout)
    return r["filesystems"][0]["pinned"]


def test_report_counts_pinned_files_and_check_and_a_rebuild_keep_the_count_true(hsm):
    a, _ = hsm.write("a.bin", size=3 * MiB)
    b, _ = hsm.write("b.bin", size=1 * MiB)
    c, _ = hsm.write("c.bin", size=2 * MiB)
    hsm.ctl("archive", a, c)
    hsm.ctl("pin", a, b)  # b was never archived: still pinned, still counted
    assert pinned_in_report(hsm) == {"files": 2, "bytes": 4 * MiB}
    assert "pinned 2 files, 4.0 MiB" in hsm.ctl("report").stdout
    r = hsm.ctl("check", "--json")
    assert json.loads(r.stdout)["discrepancies"] == [], r.stdout

    hsm.ctl("unpin", b)
    assert pinned_in_report(hsm) == {"files": 1, "bytes": 3 * MiB}

    # A pin set behind hsmd's back: check names the stale row, --repair counts it.
    os.setxattr(c, PIN, b"1")
    r = hsm.ctl("check", "--json", check=False)
    found = json.loads(r.stdout)["discrepancies"]
    assert [(d["kind"], d["path"]) for d in found] == [("stale_catalog", str(c))], found
    assert "the file is pinned" in found[0]["meaning"], found
    assert hsm.ctl("check", "--repair", check=False).returncode == 1  # it found the row, then rebuilt
    assert pinned_in_report(hsm) == {"files": 2, "bytes": 5 * MiB}

    # A lost catalog is rebuilt with its pins.
    hsm.stop()
    for suffix in ("", "-wal", "-shm"):
        p = hsm.state_dir / ("catalog.sqlite" + suffix)
        if p.exists():
            p.unlink()
    hsm.start()
    assert hsm.wait_for_log("rebuilding it from the markers and the stores"), hsm.log_text()
    hsm.ctl("check", "--repair")
    assert pinned_in_report(hsm) == {"files": 2, "bytes": 5 * MiB}
