"""Recall of part of a block (format 2 records: a CRC32C per chunk, one 4 KiB page for
files up to 256 MiB, up to 64 KiB for bigger ones; older hsmd wrote 64 KiB chunks).

A random read of a released file brings back only the chunks it touches; the
block stays offline in the marker ("may have holes") until nothing of it is missing, and
every later recall into it fills holes only. Each test checks the bytes a program reads
against the original, on ext4, xfs and btrfs; where the test says a read brought back
only part of a block it checks that with SEEK_DATA/SEEK_HOLE on the file itself.
"""
import base64
import errno
import json
import os
import subprocess

import pytest

from conftest import drop_caches, sha256
import fileops
from fileops import KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 64 * KiB  # steps between offsets (the chunk of older records and of big files)
SIZE = 8 * MiB + 12345  # eight whole blocks and a short last one
FILESYSTEMS = ["ext4", "xfs", "btrfs"]
# Any access also brings back the block holding the end of the file, whole, when the end
# lies inside it (an O_APPEND write or an extension rewrites its last page).
TAIL = (8 * MiB, SIZE)


def record_path(hsm, path):
    obj = hsm.status(path)["object"]
    return hsm.store / "objects" / obj[:2] / f"{obj}.json"


def data_path(hsm, path):
    obj = hsm.status(path)["object"]
    return hsm.store / "objects" / obj[:2] / f"{obj}.data"


def released(hsm, name, size=SIZE):
    path, _ = hsm.write(name, size=size)
    data = path.read_bytes()
    hsm.migrate(path)
    drop_caches()
    return path, data


def pread(path, offset, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def flip_a_bit(path, offset):
    """Damages one byte of `path` (a stored object) behind hsmd's back."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def data_ranges(path, lo, hi):
    """The data extents of `path` within [lo, hi), by SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    out = []
    try:
        pos = lo
        while pos < hi:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            if start >= hi:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), hi)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def local_bytes(path, lo, hi):
    return sum(b - a for a, b in data_ranges(path, lo, hi))


def assert_whole(path, data):
    drop_caches()
    got = path.read_bytes()
    assert len(got) == len(data)
    for i in range(0, len(data), MiB):
        assert got[i:i + MiB] == data[i:i + MiB], f"MiB {i // MiB} differs" + (" (zeros)" if got[i:i + MiB].count(0) == len(got[i:i + MiB]) else "")


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_random_reads_bring_back_only_their_chunks(hsm_fs):
    hsm = hsm_fs
    path, data = released(hsm, "f")
    assert json.loads(record_path(hsm, path).read_text())["format"] == 2
    block = 3 * MiB
    at = block + 5 * CHUNK + 100
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    # Only the pages that read touched came back (verified by their chunk's checksum),
    # and the block is still offline.
    page = at & ~4095
    assert data_ranges(path, 0, SIZE) == [(page, page + 8 * KiB), TAIL]
    assert hsm.status(path)["offline_bytes"] == 8 * MiB
    # A read across a chunk boundary inside the same block, and one in the recalled chunk.
    at2 = block + 9 * CHUNK - 10
    assert pread(path, at2, 100) == data[at2:at2 + 100]
    assert pread(path, block + 5 * CHUNK, CHUNK) == data[block + 5 * CHUNK:block + 6 * CHUNK]
    assert local_bytes(path, block, block + MiB) == CHUNK + 8 * KiB
    # Reads inside a partly recalled block, cold cache: the rest comes back, holes only.
    drop_caches()
    for off in (block, block + 17, block + MiB - 4 * KiB, block + 5 * CHUNK + 7):
        assert pread(path, off, 4 * KiB) == data[off:off + 4 * KiB], off
    assert_whole(path, data)
    assert hsm.status(path)["offline_bytes"] == 0
    assert hsm.state(path) == "archived"


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_writes_inside_a_partly_recalled_block_win(hsm_fs):
    hsm = hsm_fs
    path, data = released(hsm, "f")
    block = 2 * MiB
    at = block + 3 * CHUNK
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    expected = bytearray(data)
    # One write inside the recalled chunk, one in a chunk not yet back, one across both.
    writes = [(at + 1000, b"A" * 3000), (block + 10 * CHUNK + 5, b"B" * 70000), (block + 4 * CHUNK - 50, b"C" * 100)]
    fd = os.open(path, os.O_WRONLY)
    try:
        for off, buf in writes:
            assert os.pwrite(fd, buf, off) == len(buf)
            expected[off:off + len(buf)] = buf
    finally:
        os.close(fd)
    drop_caches()
    # Around the written bytes: the original ones.
    for off, buf in writes:
        lo, hi = max(off - 5000, 0), off + len(buf) + 5000
        assert pread(path, lo, hi - lo) == bytes(expected[lo:hi]), off
    assert_whole(path, bytes(expected))
    # Still right after archiving again (a dirty file recalls its offline part first).
    hsm.migrate(path)
    assert_whole(path, bytes(expected))


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_holes_a_program_makes_in_a_partly_recalled_block_stay_holes(hsm_fs):
    """A punched or zeroed range inside a partly recalled block reads as zeros ever after:
    the punch's event brings the whole block back first (recall fills holes only, and a
    hole the program made must not be taken for data still to come)."""
    hsm = hsm_fs
    path, data = released(hsm, "f")
    block = 5 * MiB
    at = block + 3 * CHUNK
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    expected = bytearray(data)
    fd = os.open(path, os.O_RDWR)
    try:
        for mode, off, n in [(PUNCH_HOLE | KEEP_SIZE, block + 10 * CHUNK, 3 * 4096), (PUNCH_HOLE | KEEP_SIZE, at + 4096, 4096),
                             (ZERO_RANGE, block + 12 * CHUNK + 100, 20000)]:
            fileops.fallocate(fd, mode, off, n)
            expected[off:off + n] = bytes(n)
    finally:
        os.close(fd)
    assert_whole(path, bytes(expected))
    assert_whole(path, bytes(expected))


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_truncation_inside_a_partly_recalled_block(hsm_fs):
    hsm = hsm_fs
    path, data = released(hsm, "f")
    block = 4 * MiB
    at = block + 2 * CHUNK + 10
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    cut = block + 7 * CHUNK + 1234  # inside the block, past the recalled chunk
    os.truncate(path, cut)
    assert_whole(path, data[:cut])
    # Extending again: zeros past the cut, never the old bytes.
    os.truncate(path, 6 * MiB)
    assert_whole(path, data[:cut] + bytes(6 * MiB - cut))
    # A cut inside the recalled chunk of another file.
    path2, data2 = released(hsm, "g")
    at = block + 2 * CHUNK
    assert pread(path2, at, 4 * KiB) == data2[at:at + 4 * KiB]
    cut2 = at + 3000
    os.truncate(path2, cut2)
    assert_whole(path2, data2[:cut2])


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_release_of_a_partly_recalled_file(hsm_fs):
    hsm = hsm_fs
    path, data = released(hsm, "f")
    for off in (MiB + 3 * CHUNK, 5 * MiB + 100, 5 * MiB + 9 * CHUNK):
        assert pread(path, off, 4 * KiB) == data[off:off + 4 * KiB]
    # Block 6 whole (read to its end), block 1 and 5 partly.
    assert pread(path, 6 * MiB, MiB) == data[6 * MiB:7 * MiB]
    assert hsm.state(path) != "archived"
    hsm.ctl("release", path)
    assert hsm.state(path) == "released"
    assert hsm.status(path)["offline_bytes"] == SIZE
    drop_caches()
    off = 5 * MiB + 9 * CHUNK + 77
    assert pread(path, off, 4 * KiB) == data[off:off + 4 * KiB]
    assert_whole(path, data)
    # And once more, from all resident.
    hsm.ctl("release", path)
    assert_whole(path, data)


@pytest.mark.parametrize("size", [8 * MiB, SIZE], ids=["block-multiple", "short-tail"])
@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_release_frees_pages_a_partial_recall_brought_back(hsm_fs, size):
    # A partly recalled block stays offline in the marker; its recalled pages are still
    # local data, which release must verify and punch, or space is never freed and the
    # file says "released" while holding data.
    hsm = hsm_fs
    path, data = released(hsm, "f", size=size)
    at = 3 * MiB + 5 * CHUNK + 100
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    assert local_bytes(path, 3 * MiB, 4 * MiB) == 8 * KiB
    # "partial" when the short last block came back whole with the access (TAIL).
    assert hsm.state(path) == ("released" if size % MiB == 0 else "partial")
    hsm.ctl("release", path)
    assert data_ranges(path, 0, size) == []
    assert os.stat(path).st_blocks == 0
    assert hsm.state(path) == "released"
    assert hsm.status(path)["offline_bytes"] == size
    assert_whole(path, data)


def test_every_store_gives_release_the_chunks_to_compare_partly_recalled_pages_with(hsm_store):
    """posix and s3 alike: release reads the verified chunks around the pages of a partial
    recall (a ranged GET on s3), finds them equal and punches them."""
    hsm = hsm_store
    path, data = released(hsm, "f", size=8 * MiB)
    for at in (CHUNK - 100, 5 * MiB + 7 * CHUNK):
        assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    assert local_bytes(path, 0, 8 * MiB) > 0
    hsm.ctl("release", path)
    assert data_ranges(path, 0, 8 * MiB) == []
    assert_whole(path, data)


def test_pages_a_partial_recall_brought_back_read_again_without_the_store(hsm_store):
    """A page a partial recall brought back is local and verified: reading it again needs
    nothing from the store, so it reads right with the store's copy gone. A page of the
    same block that is not local fails with EIO."""
    hsm = hsm_store
    path, data = released(hsm, "f")
    at = 3 * MiB + 5 * CHUNK + 100
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    page = at & ~4095
    assert data_ranges(path, 3 * MiB, 4 * MiB) == [(page, page + 8 * KiB)]
    hsm.damage_object(hsm.status(path)["object"], "delete-data")
    drop_caches()
    for off, n in ((at, 4 * KiB), (page, 8 * KiB), (page + 10, 100)):
        assert pread(path, off, n) == data[off:off + n], off
    with pytest.raises(OSError) as info:
        pread(path, 3 * MiB, 4 * KiB)
    assert info.value.errno == errno.EIO
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    assert hsm.proc.poll() is None


@pytest.mark.parametrize("hsm_fs", ["ext4"], indirect=True)
def test_release_refuses_a_partly_recalled_block_whose_local_bytes_changed(hsm_fs):
    # A program that writes into a released file and puts its mtime back leaves bytes
    # no checksum of the marker covers: release must compare them with the store's.
    hsm = hsm_fs
    size = 8 * MiB
    path, data = released(hsm, "f", size=size)
    at = 3 * MiB + 5 * CHUNK
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    st = os.stat(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"Z" * 100, at + 10) == 100
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    expected = bytearray(data)
    expected[at + 10:at + 110] = b"Z" * 100
    r = hsm.ctl("release", path, check=False)
    assert r.returncode != 0
    assert "differs from the stored copy" in r.stdout + r.stderr
    assert_whole(path, bytes(expected))


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_old_format_records_recall_whole_blocks(hsm_fs):
    """A format 1 record (per-block checksums only, as older hsmd wrote) still recalls
    right, whole blocks at a time, next to a format 2 one."""
    hsm = hsm_fs
    old, old_data = released(hsm, "old")
    new, new_data = released(hsm, "new")
    rec = record_path(hsm, old)
    assert hsm.stop() == 0
    r = json.loads(rec.read_text())
    assert r["format"] == 2 and r["chunk_shift"] == 12
    r["format"] = 1
    del r["chunk_shift"], r["chunk_checksums"]
    rec.write_text(json.dumps(r, indent=2, sort_keys=True))
    hsm.start()
    drop_caches()
    at = 3 * MiB + 5 * CHUNK + 100
    assert pread(old, at, 4 * KiB) == old_data[at:at + 4 * KiB]
    assert data_ranges(old, 0, SIZE) == [(3 * MiB, 4 * MiB), TAIL]
    assert pread(new, at, 4 * KiB) == new_data[at:at + 4 * KiB]
    assert data_ranges(new, 0, SIZE) == [(at & ~4095, (at & ~4095) + 8 * KiB), TAIL]
    assert_whole(old, old_data)
    assert_whole(new, new_data)
    # Archived again, the old file gets a format 2 record.
    os.truncate(old, SIZE - 1)
    hsm.migrate(old)
    assert json.loads(record_path(hsm, old).read_text())["format"] == 2
    assert_whole(old, old_data[:SIZE - 1])


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_a_corrupt_chunk_fails_with_eio_and_its_neighbours_read_right(hsm_fs):
    hsm = hsm_fs
    path, data = released(hsm, "f")
    other, other_data = released(hsm, "g")
    chunk = 1 << json.loads(record_path(hsm, path).read_text())["chunk_shift"]
    bad = 2 * MiB + 6 * CHUNK
    flip_a_bit(data_path(hsm, path), bad + 1000)
    drop_caches()
    with pytest.raises(OSError) as info:
        pread(path, bad + chunk - 4 * KiB, 4 * KiB)
    assert info.value.errno == errno.EIO
    # The bad chunk never reached the file.
    assert local_bytes(path, bad, bad + chunk) == 0
    assert hsm.status(path)["state"] == "damaged"
    # The chunks beside it in the same block are fine, the very next one too.
    for off in (bad - CHUNK, bad + chunk, bad + CHUNK + 100):
        assert pread(path, off, 4 * KiB) == data[off:off + 4 * KiB]
    with pytest.raises(OSError) as info:
        pread(path, bad, 1)
    assert info.value.errno == errno.EIO
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"Input/output error" in r.stderr
    assert r.stdout == data[:len(r.stdout)]
    assert len(r.stdout) <= bad
    assert sha256(other) == sha256_bytes(other_data)
    assert hsm.proc.poll() is None


def _crc32c_entry(i):
    for _ in range(8):
        i = (i >> 1) ^ 0x82F63B78 if i & 1 else i >> 1
    return i


CRC32C_TABLE = [_crc32c_entry(i) for i in range(256)]


def crc32c(data):
    """CRC32C (Castagnoli, reflected), as the store's records hold it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("hsm_fs", ["ext4"], indirect=True)
def test_records_of_64_kib_chunks_an_older_hsmd_wrote_recall_partly(hsm_fs):
    """hsmd wrote a CRC32C per 64 KiB chunk before it chose the chunk by file size: such a
    record still recalls part of a block, reading and verifying the 64 KiB chunk around
    a read (a damaged byte in another page of that chunk fails it)."""
    hsm = hsm_fs
    size = 2 * MiB
    path, data = released(hsm, "f", size=size)
    assert crc32c(b"123456789") == 0xE3069283
    rec, obj = record_path(hsm, path), data_path(hsm, path)
    assert hsm.stop() == 0
    r = json.loads(rec.read_text())
    assert r["chunk_shift"] == 12 and r["checksums"][0] == crc32c(data[:MiB])
    r["chunk_shift"] = 16
    r["chunk_checksums"] = base64.b64encode(b"".join(crc32c(data[i:i + CHUNK]).to_bytes(4, "little")
                                                     for i in range(0, size, CHUNK))).decode()
    rec.write_text(json.dumps(r, indent=2, sort_keys=True))
    flip_a_bit(obj, MiB + 3 * CHUNK + 100)
    hsm.start()
    drop_caches()
    at = MiB + 5 * CHUNK + 100
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    page = at & ~4095
    assert data_ranges(path, 0, size) == [(page, page + 8 * KiB)]
    with pytest.raises(OSError) as info:
        pread(path, MiB + 4 * CHUNK - 4 * KiB, 4 * KiB)  # the damaged chunk's last page
    assert info.value.errno == errno.EIO
    at = 7 * CHUNK + 10
    assert pread(path, at, 100) == data[at:at + 100]
    assert hsm.proc.poll() is None


def sha256_bytes(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("hsm_fs", FILESYSTEMS, indirect=True)
def test_last_block_of_a_file_ending_on_a_block_boundary_recalls_partly(hsm_fs):
    """No page of such a block is rewritten when the file grows, so it recalls partly like
    any other; growing the file afterwards keeps every byte."""
    hsm = hsm_fs
    size = 4 * MiB
    path, data = released(hsm, "f", size=size)
    at = 3 * MiB + 7 * CHUNK
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    assert data_ranges(path, 0, size) == [(at, at + 4 * KiB)]
    with open(path, "ab") as f:
        f.write(b"tail")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"past", size + 10000)
    finally:
        os.close(fd)
    expected = data + b"tail" + bytes(10000 - 4) + b"past"
    assert_whole(path, expected)


def stored_record(hsm, path):
    """The object's record as the store holds it, whichever the store."""
    obj = hsm.status(path)["object"]
    if hsm.s3 is not None:
        body = hsm.s3.client.get_object(Bucket=hsm.s3.name, Key=hsm.s3.record_key(obj))["Body"].read()
        return json.loads(body)
    return json.loads(record_path(hsm, path).read_text())


def test_every_store_recalls_only_the_chunks_a_read_touches(hsm_store):
    """posix and s3 alike write format 2 records and fetch (one ranged GET on s3) and
    verify only the chunks of a random read; a damaged chunk fails with EIO while the
    chunks beside it read right."""
    hsm = hsm_store
    path, data = released(hsm, "f")
    record = stored_record(hsm, path)
    assert record["format"] == 2 and record["chunk_shift"] == 12
    at = 3 * MiB + 5 * CHUNK + 100
    assert pread(path, at, 4 * KiB) == data[at:at + 4 * KiB]
    page = at & ~4095
    assert data_ranges(path, 0, SIZE) == [(page, page + 8 * KiB), TAIL]
    assert hsm.status(path)["offline_bytes"] == 8 * MiB
    # The store's copy damaged in chunk 0 (bytes 1000..1064 of the object): chunk 1 of
    # the same block still reads; chunk 0 fails and never reaches the file.
    hsm.damage_object(hsm.status(path)["object"], "corrupt-data")
    drop_caches()
    assert pread(path, CHUNK + 10, 4 * KiB) == data[CHUNK + 10:CHUNK + 10 + 4 * KiB]
    with pytest.raises(OSError) as info:
        pread(path, 0, 4 * KiB)
    assert info.value.errno == errno.EIO
    assert local_bytes(path, 0, CHUNK) == 0
    assert hsm.proc.poll() is None
