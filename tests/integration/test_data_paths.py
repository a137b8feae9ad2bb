"""Real programs reading and writing released files on a real filesystem.

Every test releases files with hsmd's own commands, then uses ordinary tools (cat,
sha256sum, dd, cp, tar, mmap, pwrite, truncate) on them and checks the bytes they see,
what came back to disk, and what `hsmctl status` says afterwards.

Programs that touch released data run as subprocesses with a timeout, so a recall that
never finishes fails the test instead of hanging the suite.
"""
import hashlib
import json
import mmap
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import sha256, allocated_bytes, drop_caches, strace_hsmd

KiB = 1 << 10
MiB = 1 << 20
TIMEOUT = 90  # seconds any one program may take on released data

# Reads `path` in an order given on the command line and prints the sha256 of the
# reassembled content, so concurrent readers hit different blocks in different orders.
READER = r"""
import hashlib, os, sys
path, order, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.stat(path).st_size
offsets = list(range(0, size, chunk))
if order == "reverse":
    offsets.reverse()
elif order == "interleaved":
    offsets = offsets[0::2] + offsets[1::2]
parts = {}
fd = os.open(path, os.O_RDONLY)
for off in offsets:
    parts[off] = os.pread(fd, chunk, off)
os.close(fd)
h = hashlib.sha256()
for off in sorted(parts):
    h.update(parts[off])
print(h.hexdigest())
"""

# Maps [map_offset, map_offset+map_length) of `path` read-only (map_length 0: the whole
# file) and writes the file's bytes [offset, offset+length) to stdout through the mapping;
# length -1 prints the sha256 of the whole mapping instead.
MMAP_READER = r"""
import hashlib, mmap, os, sys
path, map_offset, map_length, offset, length = sys.argv[1], *map(int, sys.argv[2:6])
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, map_length, mmap.MAP_SHARED, mmap.PROT_READ, offset=map_offset)
if length < 0:
    sys.stdout.write(hashlib.sha256(m[:]).hexdigest())
else:
    sys.stdout.buffer.write(m[offset - map_offset:offset - map_offset + length])
m.close()
os.close(fd)
"""

# Maps `path` read-write, stores bytes at offset, msyncs.
MMAP_WRITER = r"""
import mmap, os, sys
path, offset, data = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[offset:offset + len(data)] = data
m.flush()
m.close()
os.close(fd)
"""


# --- helpers ---------------------------------------------------------------------------

def run(*cmd, **kw):
    """Runs a program on the test filesystem; fails the test on a non-zero exit."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=TIMEOUT, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout


def cat(path):
    return run("cat", path)


def sha256sum(path):
    return run("sha256sum", path).decode().split()[0]


def dd_read(path, offset, length, bs=64 * KiB):
    """The bytes `dd` reads from [offset, offset+length)."""
    return run("dd", f"if={path}", f"bs={bs}", f"skip={offset}", f"count={length}",
               "iflag=skip_bytes,count_bytes", "status=none")


def digest(data):
    return hashlib.sha256(data).hexdigest()


def fail_context(hsm):
    return f"hsmd log tail:\n{hsm.log_text()[-4000:]}"


def make_sparse(path, pieces, size):
    """Writes `pieces` [(offset, bytes)] into a new file of `size`, leaving holes between.
    Returns the full expected content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = bytearray(size)
    with open(path, "wb") as f:
        for off, data in pieces:
            f.seek(off)
            f.write(data)
            expected[off:off + len(data)] = data
        f.truncate(size)
    return bytes(expected)


def ctl_json(hsm, *args):
    return json.loads(hsm.ctl(*args, "--json").stdout)


# --- 1. whole-file reads with cat and sha256sum ---------------------------------------

SIZES = [0, 1, 4097, MiB, 5_000_000, 40 * MiB + 12_345]


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
def test_cat_and_sha256sum_of_released_file_return_original(hsm_store, size):
    hsm = hsm_store
    p, want = hsm.write(f"whole/f{size}.bin", size=size)
    hsm.ctl("archive", p)
    hsm.ctl("release", p)
    if size > 0:
        assert hsm.state(p) == "released"
        assert hsm.status(p)["offline_bytes"] == size
        assert allocated_bytes(p) < 64 * KiB, allocated_bytes(p)
    assert os.stat(p).st_size == size

    drop_caches()
    assert digest(cat(p)) == want, fail_context(hsm)
    assert hsm.state(p) == "archived"
    assert hsm.status(p)["offline_bytes"] == 0
    assert allocated_bytes(p) >= size - 4096  # the data really came back to disk

    # Release again and read it with another program.
    hsm.ctl("release", p)
    if size > 0:
        assert hsm.state(p) == "released"
        assert allocated_bytes(p) < 64 * KiB
    drop_caches()
    assert sha256sum(p) == want, fail_context(hsm)
    assert hsm.state(p) == "archived"


# --- 2. dd at offsets: only the touched blocks come back --------------------------------

def test_dd_at_offsets_recalls_only_touched_blocks(hsm_store):
    hsm = hsm_store
    size = 20 * MiB
    p, _ = hsm.write("dd/big.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    assert hsm.status(p)["offline_bytes"] == size
    drop_caches()

    # A 4 KiB read at 10 MiB, using dd's block-sized skip/count.
    got = run("dd", f"if={p}", "bs=4096", f"skip={10 * MiB // 4096}", "count=1", "status=none")
    assert got == original[10 * MiB:10 * MiB + 4096], fail_context(hsm)
    alloc = allocated_bytes(p)
    assert alloc <= 2 * MiB, f"a 4 KiB read brought back {alloc} bytes"
    assert alloc >= 4096
    if hsm.store_kind != "posix":
        # The s3 store writes format 1 records (no chunk checksums): whole blocks come back.
        drop_caches()
        assert sha256(p) == digest(original), fail_context(hsm)
        return
    assert alloc <= 64 * KiB, f"a 4 KiB read brought back {alloc} bytes (format 2 records recall pages)"
    st = hsm.status(p)
    # The block is only partly back (test_partial_recall.py): still offline, file released.
    assert st["state"] == "released"
    assert st["offline_bytes"] == size, st

    # A read straddling the 3 MiB block boundary touches blocks 2 and 3.
    before = st["offline_bytes"]
    off = 3 * MiB - 100
    got = dd_read(p, off, 200, bs=200)
    assert got == original[off:off + 200], fail_context(hsm)
    st = hsm.status(p)
    assert st["state"] == "released"
    assert st["offline_bytes"] == before, (before, st)
    assert allocated_bytes(p) <= 5 * MiB, allocated_bytes(p)

    # Reading an already-recalled range changes nothing.
    before = st["offline_bytes"]
    assert dd_read(p, 10 * MiB + 4096, 64 * KiB) == original[10 * MiB + 4096:10 * MiB + 4096 + 64 * KiB]
    assert hsm.status(p)["offline_bytes"] == before

    # The last, partly used block.
    off = size - 1000
    assert dd_read(p, off, 1000, bs=1000) == original[off:], fail_context(hsm)
    # 20 MiB ends on a block boundary: its last block recalls partly too, and stays offline.
    assert hsm.status(p)["offline_bytes"] == before
    assert allocated_bytes(p) < size // 2

    # Untouched ranges are still offline and come back right.
    drop_caches()
    assert sha256(p) == digest(original), fail_context(hsm)
    assert hsm.state(p) == "archived"


def test_sequential_reads_use_readahead_but_stay_bounded(hsm_store):
    """A sequential reader gets read-ahead (the window doubles), but four 1 MiB reads do
    not pull in the whole file."""
    hsm = hsm_store
    size = 30 * MiB
    p, _ = hsm.write("dd/seq.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    got = run("dd", f"if={p}", f"bs={MiB}", "count=4", "status=none")
    assert got == original[:4 * MiB], fail_context(hsm)
    # status waits for the recall under way (it takes the inode lock), so the read-ahead
    # that follows the last answer is in when the allocation is measured.
    st = hsm.status(p)
    alloc = allocated_bytes(p)
    # 4 blocks read, plus read-ahead windows of 1, 2, 4... blocks.
    assert alloc > 4 * MiB, f"no read-ahead: only {alloc} bytes came back for a sequential reader"
    assert alloc <= 12 * MiB, f"{alloc} bytes came back for 4 MiB of sequential reads"
    assert st["state"] == "partial"
    assert st["offline_bytes"] == size - alloc
    drop_caches()
    assert sha256(p) == digest(original)


# --- 3. mmap ----------------------------------------------------------------------------

def test_mmap_read_of_released_file(hsm_store):
    hsm = hsm_store
    size = 12 * MiB + 777
    p, want = hsm.write("mmap/m.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()

    # Map 2 MiB in the middle and read a slice through it. (The kernel reports the
    # mapped range when mmap() is called, so only the mapped blocks may come back.)
    off, length = 7 * MiB + 123, 100_000
    got = run(sys.executable, "-c", MMAP_READER, p, 6 * MiB, 2 * MiB, off, length)
    assert got == original[off:off + length], fail_context(hsm)
    assert hsm.state(p) == "partial"
    alloc = allocated_bytes(p)
    assert alloc <= 3 * MiB, f"mapping 2 MiB brought back {alloc} bytes"

    # The tail page of the last block, through a mapping of the last 4 KiB-aligned part.
    tail_map = (size - 777) // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    got = run(sys.executable, "-c", MMAP_READER, p, tail_map, size - tail_map, size - 777, 777)
    assert got == original[-777:], fail_context(hsm)

    # The whole file through one mapping.
    drop_caches()
    assert run(sys.executable, "-c", MMAP_READER, p, 0, 0, 0, -1).decode() == want, fail_context(hsm)
    assert hsm.state(p) == "archived"


def test_mmap_write_into_released_range(hsm_store):
    hsm = hsm_store
    size = 5_000_000
    p, _ = hsm.write("mmap/w.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    off, patch = 2 * MiB + 4000, b"written through mmap"
    run(sys.executable, "-c", MMAP_WRITER, p, off, patch.hex())
    expected = original[:off] + patch + original[off + len(patch):]
    drop_caches()
    assert digest(cat(p)) == digest(expected), fail_context(hsm)
    assert hsm.state(p) == "dirty"


# --- 4. cp and tar ----------------------------------------------------------------------

def seek_data_evidence(path):
    """Where SEEK_DATA finds the first data (cp and tar --sparse skip what it calls holes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return f"lseek(SEEK_DATA, 0) = {os.lseek(fd, 0, os.SEEK_DATA)}"
    except OSError as e:
        return f"lseek(SEEK_DATA, 0) failed: {e}"
    finally:
        os.close(fd)


def test_cp_of_released_file(hsm):
    size = 9 * MiB + 5
    p, want = hsm.write("cp/src.bin", size=size)
    hsm.migrate(p)
    drop_caches()
    problems = []

    evidence = seek_data_evidence(p)
    outside = hsm.base / "cp-outside.bin"
    run("cp", p, outside)
    if sha256(outside) != want:
        zeros = outside.read_bytes() == bytes(size)
        problems.append(f"cp to another filesystem: wrong bytes (all zeros: {zeros}; "
                        f"copy allocates {allocated_bytes(outside)} B; {evidence})")

    # Release again and copy within the managed filesystem.
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    drop_caches()
    evidence = seek_data_evidence(p)
    inside = hsm.mnt / "cp" / "copy.bin"
    run("cp", p, inside)
    if sha256(inside) != want:
        zeros = inside.read_bytes() == bytes(size)
        problems.append(f"cp within the managed filesystem: wrong bytes (all zeros: {zeros}; "
                        f"copy allocates {allocated_bytes(inside)} B; {evidence})")
    else:
        assert hsm.state(inside) == "resident"
    assert not problems, "\n".join(problems) + "\n" + fail_context(hsm)
    hsm.wait_for_state(p, "archived")


def test_cp_preserving_attributes_of_released_file(hsm):
    size = 3 * MiB + 17
    p, want = hsm.write("cp/attr.bin", size=size)
    hsm.migrate(p)
    drop_caches()
    dest = hsm.base / "cp-a.bin"
    run("cp", "-a", p, dest)
    assert sha256(dest) == want, fail_context(hsm)
    assert os.stat(dest).st_mtime_ns == os.stat(p).st_mtime_ns


TREE = [("a.bin", 3 * MiB + 1), ("sub/b.bin", 1), ("sub/c.bin", 6_000_000),
        ("sub/deeper/d.bin", 64 * KiB), ("e.bin", 0)]


def make_released_tree(hsm, top="tree"):
    """A directory of released files (the empty one only archived); {relative name: sha256}."""
    files = {}
    for name, size in TREE:
        p, d = hsm.write(f"{top}/{name}", size=size)
        files[name] = d
        if size > 0:
            hsm.migrate(p)
        else:
            hsm.ctl("archive", p)
    drop_caches()
    return hsm.mnt / top, files


def tar(*args, **kw):
    """Runs tar; returns (exit status, stderr). GNU tar exits 1 for "file changed as we
    read it" and 2 for real errors."""
    r = subprocess.run(["tar", *map(str, args)], capture_output=True, timeout=TIMEOUT, **kw)
    return r.returncode, r.stderr.decode(errors="replace")


def only_changed_warnings(stderr):
    lines = [l for l in stderr.splitlines() if l.strip()]
    return all(l.endswith("file changed as we read it") for l in lines)


def test_tar_of_directory_of_released_files(hsm):
    """The archive holds the original bytes. (Whether tar also exits 0 is checked
    separately, in test_tar_exits_cleanly_on_released_files.)"""
    src, files = make_released_tree(hsm)
    archive = hsm.base / "tree.tar"
    code, err = tar("-C", src, "-cf", archive, ".")
    assert code == 0 or (code == 1 and only_changed_warnings(err)), err
    out = hsm.base / "extracted"
    out.mkdir()
    code, err = tar("-C", out, "-xf", archive)
    assert code == 0, err
    for name, d in files.items():
        assert sha256(out / name) == d, f"{name} differs after tar round trip\n{fail_context(hsm)}"
        assert os.stat(out / name).st_size == os.stat(src / name).st_size
    for name in ["a.bin", "sub/c.bin"]:
        hsm.wait_for_state(src / name, "archived")

    # Again, released, through a pipe into the managed filesystem itself.
    inner = hsm.mnt / "copy-of-tree"
    inner.mkdir()
    hsm.ctl("release", src / "a.bin", src / "sub" / "c.bin")
    drop_caches()
    producer = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, err = tar("-C", inner, "-xf", "-", stdin=producer.stdout)
    producer.stdout.close()
    assert code == 0, err
    pcode = producer.wait(TIMEOUT)
    perr = producer.stderr.read().decode(errors="replace")
    assert pcode == 0 or (pcode == 1 and only_changed_warnings(perr)), perr
    for name, d in files.items():
        assert sha256(inner / name) == d, f"{name} differs after tar pipe\n{fail_context(hsm)}"


def test_tar_exits_cleanly_on_released_files(hsm):
    """Backups of released files must not fail: GNU tar exits 1 ("file changed as we
    read it") when a file's ctime or size changes while it reads it."""
    src, files = make_released_tree(hsm)
    code, err = tar("-C", src, "-cf", hsm.base / "clean.tar", ".")
    assert (code, err) == (0, ""), f"tar exited {code}: {err}"


def test_tar_sparse_mode_archives_real_bytes_of_released_files(hsm):
    """tar --sparse looks for holes with SEEK_DATA/SEEK_HOLE: a released file's punched
    blocks must not be taken for holes."""
    src, files = make_released_tree(hsm)
    archive = hsm.base / "sparse.tar"
    code, err = tar("--sparse", "-C", src, "-cf", archive, ".")
    assert code == 0 or (code == 1 and only_changed_warnings(err)), err
    out = hsm.base / "extracted-sparse"
    out.mkdir()
    code, err = tar("-C", out, "-xf", archive)
    assert code == 0, err
    for name, d in files.items():
        assert sha256(out / name) == d, f"{name} differs after tar --sparse round trip\n{fail_context(hsm)}"


# --- 5. concurrent readers --------------------------------------------------------------

def _parallel(cmds):
    """Starts every command at once; returns their stdout as text."""
    procs = [subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cmd in cmds]
    outs = []
    for pr in procs:
        try:
            out, err = pr.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert pr.returncode == 0, err.decode(errors="replace")
        outs.append(out.decode())
    return outs


def test_eight_concurrent_readers_of_one_released_file(hsm_store):
    hsm = hsm_store
    size = 24 * MiB + 3
    p, want = hsm.write("conc/one.bin", size=size)
    hsm.migrate(p)
    drop_caches()
    orders = ["forward", "reverse", "interleaved"]
    cmds = []
    for i in range(8):
        if i % 2 == 0:
            cmds.append(["sha256sum", p])
        else:
            cmds.append([sys.executable, "-c", READER, p, orders[i % 3], [MiB, 300 * KiB + 7, 64 * KiB][i % 3]])
    outs = _parallel(cmds)
    for i, out in enumerate(outs):
        assert out.split()[0] == want, f"reader {i} ({cmds[i][0]}) got wrong bytes\n{fail_context(hsm)}"
    assert hsm.state(p) == "archived"
    assert allocated_bytes(p) >= size - 4096


def test_concurrent_readers_of_several_released_files(hsm_store):
    hsm = hsm_store
    wants = {}
    for i, size in enumerate([7 * MiB + 1, 11 * MiB, 2 * MiB - 3, 16 * MiB + 4097]):
        p, d = hsm.write(f"conc/many{i}.bin", size=size)
        hsm.migrate(p)
        wants[p] = d
    drop_caches()
    cmds, expect = [], []
    for p, d in wants.items():
        for order, chunk in [("forward", MiB), ("reverse", 128 * KiB + 1), ("interleaved", 4096)]:
            cmds.append([sys.executable, "-c", READER, p, order, chunk])
            expect.append(d)
        cmds.append(["sha256sum", p])
        expect.append(d)

    # Threads in this process too, reading the same files with pread.
    errors = []

    def thread_reader(path, want):
        try:
            out = run(sys.executable, "-c", READER, path, "reverse", 2 * MiB + 1).decode().strip()
            if out != want:
                errors.append(f"{path}: thread reader got {out}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{path}: {e}")

    threads = [threading.Thread(target=thread_reader, args=(p, d)) for p, d in wants.items()]
    for t in threads:
        t.start()
    outs = _parallel(cmds)
    for t in threads:
        t.join(TIMEOUT)
    for i, out in enumerate(outs):
        assert out.split()[0] == expect[i], f"{cmds[i]} got wrong bytes\n{fail_context(hsm)}"
    assert not errors, errors
    for p in wants:
        assert hsm.state(p) == "archived"


# --- 6. writes into released ranges -----------------------------------------------------

def test_pwrite_into_released_range(hsm):
    size = 5_000_000
    p, _ = hsm.write("w/patch.bin", size=size)
    original = bytearray(p.read_bytes())
    hsm.migrate(p)
    drop_caches()

    patches = [(2_500_000, b"PATCHED!"), (3 * MiB - 4, b"acrossBB")]  # the second straddles blocks 2/3
    fd = os.open(p, os.O_WRONLY)
    try:
        for off, data in patches:
            assert os.pwrite(fd, data, off) == len(data)
    finally:
        os.close(fd)
    for off, data in patches:
        original[off:off + len(data)] = data

    assert hsm.state(p) == "dirty"
    assert os.stat(p).st_size == size
    drop_caches()
    assert digest(cat(p)) == digest(bytes(original)), fail_context(hsm)
    assert hsm.state(p) == "dirty"


def test_append_to_released_file(hsm):
    size = 2 * MiB + 100
    p, _ = hsm.write("w/append.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    with open(p, "ab") as f:
        f.write(b"tail" * 1000)
    assert os.stat(p).st_size == size + 4000
    drop_caches()
    assert cat(p) == original + b"tail" * 1000, fail_context(hsm)
    assert hsm.state(p) == "dirty"


def test_rearchive_after_write_keeps_new_content(hsm):
    """A dirty, partly offline file archived again gets a complete new copy."""
    size = 4 * MiB
    p, _ = hsm.write("w/rearchive.bin", size=size)
    original = bytearray(p.read_bytes())
    hsm.migrate(p)
    old_object = hsm.status(p)["object"]
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, b"new", MiB + 10)
    os.close(fd)
    original[MiB + 10:MiB + 13] = b"new"
    assert hsm.state(p) == "dirty"
    hsm.migrate(p)
    assert hsm.status(p)["object"] != old_object
    drop_caches()
    assert digest(cat(p)) == digest(bytes(original)), fail_context(hsm)


# --- 7. truncation ----------------------------------------------------------------------

def test_truncate_down_then_up_gives_prefix_then_zeros(hsm_store):
    hsm = hsm_store
    size = 5_000_000
    p, _ = hsm.write("t/downup.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()

    small, large = 1_500_037, 6_000_000
    os.truncate(p, small)
    assert os.stat(p).st_size == small
    os.truncate(p, large)
    assert os.stat(p).st_size == large
    drop_caches()
    got = cat(p)
    assert len(got) == large
    assert got[:small] == original[:small], f"prefix differs\n{fail_context(hsm)}"
    tail = got[small:]
    if tail != bytes(len(tail)):
        first = next(i for i, b in enumerate(tail) if b)
        pytest.fail(f"bytes past the truncation point are not zeros: first non-zero at {small + first} "
                    f"(old data there: {original[small + first:small + first + 8].hex()}, "
                    f"got {tail[first:first + 8].hex()})\n{fail_context(hsm)}")
    assert hsm.state(p) == "dirty"
    # Reading again (all blocks now handled) still gives the same.
    drop_caches()
    assert cat(p) == got


def test_truncate_down_then_write_past_old_end(hsm_store):
    """Extending a truncated released file by writing past its old end: the gap reads
    as zeros, never as the data that was truncated away."""
    hsm = hsm_store
    size = 5_000_000
    p, _ = hsm.write("t/downwrite.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    small, far = 1_500_037, 6_000_000
    os.truncate(p, small)
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"end", far)
    finally:
        os.close(fd)
    drop_caches()
    got = cat(p)
    expected = original[:small] + bytes(far - small) + b"end"
    assert len(got) == len(expected)
    assert got[:small] == expected[:small], fail_context(hsm)
    assert got[small:far] == bytes(far - small), f"old data came back past the truncation point\n{fail_context(hsm)}"
    assert got[far:] == b"end"


def test_truncate_down_within_first_block_then_up(hsm):
    size = 3 * MiB
    p, _ = hsm.write("t/small.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    os.truncate(p, 4097)
    os.truncate(p, 2 * MiB + 1)
    drop_caches()
    got = cat(p)
    assert got == original[:4097] + bytes(2 * MiB + 1 - 4097), fail_context(hsm)


def test_truncate_up_released_file(hsm):
    size = 5_000_000
    p, _ = hsm.write("t/up.bin", size=size)
    original = p.read_bytes()
    hsm.migrate(p)
    drop_caches()
    os.truncate(p, 8 * MiB + 3)
    assert os.stat(p).st_size == 8 * MiB + 3
    drop_caches()
    got = cat(p)
    assert got[:size] == original, f"original part differs\n{fail_context(hsm)}"
    assert got[size:] == bytes(8 * MiB + 3 - size), "extension is not zeros"
    assert hsm.state(p) == "dirty"


def test_truncate_to_zero_then_up(hsm):
    p, _ = hsm.write("t/zero.bin", size=3 * MiB)
    hsm.migrate(p)
    os.truncate(p, 0)
    os.truncate(p, 3 * MiB)
    drop_caches()
    assert cat(p) == bytes(3 * MiB), fail_context(hsm)


def test_open_with_o_trunc_then_write(hsm):
    p, _ = hsm.write("t/otrunc.bin", size=4 * MiB)
    hsm.migrate(p)
    drop_caches()
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"fresh")
    os.truncate(p, 2 * MiB)
    drop_caches()
    assert cat(p) == b"fresh" + bytes(2 * MiB - 5), fail_context(hsm)


# --- 8. rename and hard links -----------------------------------------------------------

def test_rename_and_hard_link_keep_state(hsm):
    size = 6 * MiB + 11
    p, want = hsm.write("names/orig.bin", size=size)
    hsm.migrate(p)
    obj = hsm.status(p)["object"]
    assert obj

    renamed = p.with_name("renamed.bin")
    os.rename(p, renamed)
    st = hsm.status(renamed)
    assert (st["state"], st["object"], st["size"], st["offline_bytes"]) == ("released", obj, size, size)

    other = hsm.mnt / "elsewhere" / "deep"
    other.mkdir(parents=True)
    moved = other / "moved.bin"
    os.rename(renamed, moved)
    st = hsm.status(moved)
    assert (st["state"], st["object"]) == ("released", obj)

    link = hsm.mnt / "link.bin"
    os.link(moved, link)
    st = hsm.status(link)
    assert (st["state"], st["object"], st["offline_bytes"]) == ("released", obj, size)
    assert allocated_bytes(link) < 64 * KiB

    drop_caches()
    assert digest(cat(link)) == want, fail_context(hsm)
    # Same inode: both names now show the recalled state.
    assert hsm.status(link)["state"] == "archived"
    assert hsm.status(moved)["state"] == "archived"
    assert hsm.status(moved)["object"] == obj
    assert sha256(moved) == want

    # Release through one name, read through the other.
    hsm.ctl("release", moved)
    assert hsm.state(link) == "released"
    drop_caches()
    assert sha256sum(link) == want, fail_context(hsm)


# --- 9. sparse files --------------------------------------------------------------------

def test_sparse_file_archives_sparsely_and_recalls_sparsely(hsm_store):
    hsm = hsm_store
    p = hsm.mnt / "sparse" / "holes.bin"
    a, b = os.urandom(MiB), os.urandom(MiB)
    size = 12 * MiB
    expected = make_sparse(p, [(0, a), (11 * MiB, b)], size)
    assert allocated_bytes(p) <= 2 * MiB + 64 * KiB

    hsm.ctl("archive", p)
    assert hsm.object_count() == 1
    if hsm.store_kind == "posix":
        # A sparse file of the file's size; s3 keeps the data blocks only.
        assert hsm.object_files()[0].stat().st_size == size
    stored = hsm.stored_bytes(hsm.status(p)["object"])
    assert MiB <= stored <= 3 * MiB, f"store copy takes {stored} bytes for 2 MiB of data"

    hsm.ctl("release", p)
    assert hsm.state(p) == "released"
    assert allocated_bytes(p) < 64 * KiB
    drop_caches()
    got = cat(p)
    assert digest(got) == digest(expected), fail_context(hsm)
    assert hsm.state(p) == "archived"
    alloc = allocated_bytes(p)
    assert alloc <= 3 * MiB, f"recalled file allocates {alloc} of {size} bytes: holes were filled"


def test_sparse_file_with_unaligned_data_and_trailing_hole(hsm_store):
    hsm = hsm_store
    p = hsm.mnt / "sparse" / "odd.bin"
    pieces = [(3 * MiB + 5000, os.urandom(100 * KiB)), (9 * MiB - 7, os.urandom(20))]
    size = 20 * MiB
    expected = make_sparse(p, pieces, size)
    hsm.migrate(p)
    stored = hsm.stored_bytes(hsm.status(p)["object"])
    # posix keeps the data's own pages; s3 the three 1 MiB blocks that hold data, of 20.
    assert stored <= (MiB if hsm.store_kind == "posix" else 3 * MiB), stored
    drop_caches()
    # A read entirely within a hole, then one across the data.
    assert dd_read(p, 15 * MiB, 4096) == bytes(4096)
    assert dd_read(p, 3 * MiB, 200 * KiB) == expected[3 * MiB:3 * MiB + 200 * KiB], fail_context(hsm)
    drop_caches()
    assert digest(cat(p)) == digest(expected), fail_context(hsm)
    assert allocated_bytes(p) <= 2 * MiB


# --- 10. explicit recall ----------------------------------------------------------------

def test_explicit_range_recall_then_full_recall(hsm):
    size = 8 * MiB + 999
    p, want = hsm.write("recall/r.bin", size=size)
    mtime_before = os.stat(p).st_mtime_ns
    hsm.migrate(p)
    assert os.stat(p).st_mtime_ns == mtime_before

    out = ctl_json(hsm, "recall", "--range", "0:1M", p)
    row = out["files"][0]
    assert row["outcome"] == "done"
    assert row["bytes_recalled"] == MiB
    assert row["state"] == "partial"
    alloc = allocated_bytes(p)
    assert MiB <= alloc <= MiB + 64 * KiB, alloc
    st = hsm.status(p)
    assert st["state"] == "partial"
    assert st["offline_bytes"] == size - MiB
    assert os.stat(p).st_mtime_ns == mtime_before

    # A range in the middle, not block aligned: both touched blocks come back.
    out = ctl_json(hsm, "recall", "--range", f"{5 * MiB - 10}:20", p)
    assert out["files"][0]["bytes_recalled"] == 2 * MiB
    assert hsm.status(p)["offline_bytes"] == size - 3 * MiB

    out = ctl_json(hsm, "recall", p)
    row = out["files"][0]
    assert row["outcome"] == "done" and row["state"] == "archived"
    assert row["bytes_recalled"] == size - 3 * MiB
    st = hsm.status(p)
    assert st["state"] == "archived" and st["offline_bytes"] == 0
    assert allocated_bytes(p) >= size - 4096
    assert os.stat(p).st_mtime_ns == mtime_before
    drop_caches()
    assert sha256(p) == want

    # Recalling a resident-again file is a no-op.
    out = ctl_json(hsm, "recall", p)
    assert out["files"][0]["bytes_recalled"] == 0


# --- 11. metadata -----------------------------------------------------------------------

def test_metadata_unchanged_by_release_and_recall(hsm):
    size = 3 * MiB + 333
    want_bytes = os.urandom(size)
    p, want = hsm.write("meta/m.bin", data=want_bytes)
    os.chown(p, 1234, 1234)
    os.chmod(p, 0o640)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))

    def meta():
        s = os.stat(p)
        return {"size": s.st_size, "mode": oct(s.st_mode), "uid": s.st_uid, "gid": s.st_gid,
                "mtime_ns": s.st_mtime_ns, "ino": s.st_ino, "nlink": s.st_nlink}

    before = meta()
    hsm.ctl("archive", p)
    assert meta() == before
    hsm.ctl("release", p)
    assert meta() == before, "release changed the metadata"
    st = hsm.status(p)
    assert st["state"] == "released" and st["size"] == size

    # Partial recall through a read by another user (the owner).
    drop_caches()
    # (hsm.base is mode 0700, so the owner gets the file on stdin rather than by name.)
    with open(p, "rb") as f:
        r = subprocess.run(["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups",
                            "dd", "bs=4096", "skip=300", "count=1", "status=none"],
                           stdin=f, capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want_bytes[300 * 4096:301 * 4096], fail_context(hsm)
    assert meta() == before, "a partial recall changed the metadata"
    assert hsm.state(p) == "partial"

    drop_caches()
    assert digest(cat(p)) == want
    assert meta() == before, "recall changed the metadata"
    assert hsm.state(p) == "archived"

    hsm.ctl("release", p)
    hsm.ctl("recall", p)
    assert meta() == before, "hsmctl recall changed the metadata"
    assert hsm.state(p) == "archived"


# --- 12. re-release ---------------------------------------------------------------------

def test_rerelease_after_full_and_partial_reads(hsm):
    size = 6 * MiB + 4321
    p, want = hsm.write("rerel/r.bin", size=size)
    hsm.migrate(p)
    obj = hsm.status(p)["object"]
    drop_caches()
    assert sha256sum(p) == want
    assert hsm.state(p) == "archived"

    # Full read, then release again.
    out = ctl_json(hsm, "release", p)
    row = out["files"][0]
    assert row["outcome"] == "done" and row["state"] == "released"
    assert row["bytes_freed"] >= size - 64 * KiB
    assert row["object"] == obj
    assert allocated_bytes(p) < 64 * KiB
    assert hsm.status(p)["offline_bytes"] == size
    drop_caches()
    assert digest(cat(p)) == want, fail_context(hsm)

    # Partial read, then release again: everything is offline again, state released.
    hsm.ctl("release", p)
    drop_caches()
    run("dd", f"if={p}", "bs=4096", f"skip={2 * MiB // 4096}", "count=1", "status=none", "of=/dev/null")
    assert hsm.state(p) == "partial"
    hsm.ctl("release", p)
    st = hsm.status(p)
    assert st["state"] == "released" and st["offline_bytes"] == size and st["object"] == obj
    assert allocated_bytes(p) < 64 * KiB
    drop_caches()
    assert sha256sum(p) == want, fail_context(hsm)
    assert len(hsm.object_files()) == 1


def test_a_small_file_comes_back_with_one_mtime_restore(hsm, tmp_path):
    """Recall puts the archived mtime back after writing (recall is not a change): once
    per recall, not once more for every empty step after the write."""
    p, digest = hsm.write("small.bin", size=16 * 1024)
    mtime = os.stat(p).st_mtime_ns
    hsm.migrate(p)
    drop_caches()
    trace = tmp_path / "trace.txt"
    with strace_hsmd(hsm, "utimensat,pwrite64", trace):
        assert sha256(p) == digest
        time.sleep(0.3)
    lines = trace.read_text().splitlines()
    assert sum("pwrite64(" in line for line in lines) >= 1, lines
    assert sum("utimensat(" in line for line in lines) == 1, lines
    assert os.stat(p).st_mtime_ns == mtime
    assert hsm.state(p) == "archived"
