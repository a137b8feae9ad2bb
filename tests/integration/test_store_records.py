"""Damaged or edited store records (the posix store's <object>.json).

A record is input like any other: whatever it says, hsmd must not crash (a crash is an
outage: released ranges then read as zeros) and must never serve zeros or wrong bytes
from it. Each case edits the record of a released file while hsmd is stopped (so no
cached copy hides the edit), starts hsmd again and checks: the read fails with EIO,
`status` shows the file damaged, hsmd logs what is wrong with the record, it still runs,
and another released file still reads back whole.
"""
import base64
import errno
import json
import subprocess

import pytest

from conftest import drop_caches, sha256

SIZE = 3_000_000  # three 1 MiB blocks, the last one partial


def record_path(hsm, path):
    obj = hsm.status(path)["object"]
    return hsm.store / "objects" / obj[:2] / f"{obj}.json"


def assert_eio(path):
    drop_caches()
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert r.returncode != 0, f"cat of {path} succeeded and returned {len(r.stdout)} bytes"
    assert b"Input/output error" in r.stderr, r.stderr
    with pytest.raises(OSError) as info:
        with open(path, "rb") as f:
            f.read()
    assert info.value.errno == errno.EIO, info.value


def edit_record(hsm, path, edit):
    """Stops hsmd, applies `edit` to the record (a dict, or raw bytes), starts hsmd."""
    rec = record_path(hsm, path)
    assert hsm.stop() == 0
    original = rec.read_bytes()
    if callable(edit):
        doc = json.loads(original)
        edit(doc)
        rec.write_text(json.dumps(doc))
    else:
        rec.write_bytes(edit)
    hsm.start()
    return original


def set_fields(**fields):
    def edit(doc):
        doc.update(fields)
    return edit


def nested(depth):
    return b'{"object":' + b"[" * depth + b"]" * depth + b"}"


# Records consistent in themselves that do not match the file's marker: block indexes
# past the record's checksums, or blocks bigger than the recall buffer. These crashed hsmd
# before; the store's reader now refuses them block by block.
MISMATCHED = {
    "shift-21-two-checksums": lambda d: d.update(block_shift=21, checksums=d["checksums"][:2]),
    "size-smaller-than-the-marker": lambda d: d.update(size=2_000_000, checksums=d["checksums"][:2],
                                                       extents=[[0, 2_000_000]], stored_bytes=2_000_000),
}

# Records the decoder refuses.
CASES = {
    # A block shift out of range with a checksum count to match (crashed hsmd before).
    "shift-62-one-checksum": lambda d: d.update(block_shift=62, checksums=d["checksums"][:1]),
    # Extents that cannot be ranges (these crashed hsmd before).
    "extent-of-one-number": set_fields(extents=[[0]]),
    "extent-backwards": set_fields(extents=[[2_000_000, 1000]]),
    # A data block without a checksum read as zeros (silently) before.
    "data-block-without-checksum": lambda d: d["checksums"].__setitem__(1, None),
    # Fields out of range or inconsistent.
    "extents-unsorted": set_fields(extents=[[1_048_576, SIZE], [0, 1_048_576]]),
    "extents-overlapping": set_fields(extents=[[0, 2_000_000], [1_000_000, SIZE]]),
    "extent-past-the-end": set_fields(extents=[[0, SIZE + 4096]]),
    "extent-negative": set_fields(extents=[[-4096, SIZE]]),
    "stored-bytes-wrong": set_fields(stored_bytes=1),
    "checksum-count-wrong": lambda d: d["checksums"].append(1),
    "size-negative": set_fields(size=-1),
    "size-huge": set_fields(size=9223372036854775807),
    "shift-zero": set_fields(block_shift=0),
    "shift-255": set_fields(block_shift=255),
    "mode-directory": set_fields(mode=0o40755),
    "format-3": set_fields(format=3),
    # Format 2's chunk checksums: only in format 2, one per 64 KiB chunk, chunks dividing blocks.
    "format-1-with-chunks": set_fields(format=1),
    "chunk-count-wrong": lambda d: d.update(chunk_checksums=base64.b64encode(base64.b64decode(d["chunk_checksums"])[:-4]).decode()),
    "chunk-checksums-not-base64": set_fields(chunk_checksums="%%%"),
    "chunk-shift-above-the-block": set_fields(chunk_shift=21),
    "chunk-shift-missing": lambda d: d.pop("chunk_shift"),
    "archived-at-negative": set_fields(archived_at=-1),
    "other-object-id": set_fields(object="00112233445566778899aabbccddeeff"),
    "xattr-not-base64": set_fields(xattrs={"user.x": "%%%"}),
    "checksum-not-a-number": lambda d: d["checksums"].__setitem__(0, "x"),
    "shift-not-a-byte": set_fields(block_shift=300),
    "size-not-an-integer": set_fields(size=1.5),
    "missing-checksums": lambda d: d.pop("checksums"),
    # Not a record at all.
    "empty": b"",
    "not-json": b"this is not json",
    "truncated": b'{"object":"',
    "not-utf8": b'{"object":"\xff\xfe"}',
    "deeply-nested": nested(100_000),
    "huge-number": b'{"size":' + b"9" * 100_000 + b"}",
}


@pytest.fixture
def two_released(hsm):
    a, a_digest = hsm.write("a.bin", size=SIZE)
    b, b_digest = hsm.write("b.bin", size=SIZE)
    hsm.migrate(a)
    hsm.migrate(b)
    return a, a_digest, b, b_digest


@pytest.mark.parametrize("case", CASES)
def test_bad_record_fails_the_read_and_hsmd_keeps_running(hsm, two_released, case):
    a, _, b, b_digest = two_released
    edit_record(hsm, a, CASES[case])
    assert_eio(a)
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"
    assert hsm.state(a) == "damaged"
    assert hsm.wait_for_log(str(a), "record"), hsm.log_text()[-3000:]
    assert_eio(a)  # and again: never zeros on a second try
    drop_caches()
    assert sha256(b) == b_digest
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"


@pytest.mark.parametrize("case", MISMATCHED)
def test_record_not_matching_the_marker_fails_the_read_and_hsmd_keeps_running(hsm, two_released, case):
    a, _, b, b_digest = two_released
    edit_record(hsm, a, MISMATCHED[case])
    assert_eio(a)
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"
    assert_eio(a)
    drop_caches()
    assert sha256(b) == b_digest
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"


@pytest.mark.parametrize("case", MISMATCHED)
def test_record_not_matching_the_marker_shows_damaged_and_is_named(hsm, two_released, case):
    a, _, _, _ = two_released
    edit_record(hsm, a, MISMATCHED[case])
    assert_eio(a)
    assert hsm.state(a) == "damaged"
    assert hsm.wait_for_log(str(a), "record", timeout=2), hsm.log_text()[-3000:]


def test_restored_record_makes_the_file_readable_again(hsm, two_released):
    a, a_digest, _, _ = two_released
    original = edit_record(hsm, a, CASES["data-block-without-checksum"])
    assert_eio(a)
    assert hsm.state(a) == "damaged"
    rec = record_path(hsm, a)
    assert hsm.stop() == 0
    rec.write_bytes(original)
    hsm.start()
    drop_caches()
    assert sha256(a) == a_digest
    assert hsm.state(a) == "archived", hsm.status(a)


@pytest.mark.parametrize("case", ["shift-21-two-checksums", "shift-62-one-checksum", "size-smaller-than-the-marker"])
def test_release_against_a_record_that_does_not_match_the_marker(hsm, case):
    """Release indexed the record's checksums by the marker's blocks without checking that
    both have the same block shift: an edited record crashed hsmd here."""
    p, digest = hsm.write("a.bin", size=SIZE)
    hsm.ctl("archive", p)
    edit_record(hsm, p, {**CASES, **MISMATCHED}[case])
    r = hsm.ctl("release", p, check=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert f"hsmctl: release {p}:" in r.stderr, r.stderr
    assert "record" in r.stderr or "marker" in r.stderr, r.stderr
    assert hsm.proc.poll() is None, f"hsmd died:\n{hsm.log_text()[-3000:]}"
    # Nothing was punched: the data is all still local.
    drop_caches()
    assert sha256(p) == digest
    assert hsm.state(p) in ("archived", "damaged"), hsm.status(p)
