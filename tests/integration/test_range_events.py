"""Every way of changing a file through a range gives the same bytes on a released file as
on its resident twin: fallocate in each mode (insert, collapse, zero, punch, allocate),
truncation, appends, writes past the end, reflink clones and copy_file_range.

What the kernel reports for each (docs/KERNEL-FACTS.md, `tools/probe-range-events.py`):
every one raises FAN_PRE_ACCESS events that look the same as a read or write of the same
page-rounded range; a count of 0 means "from offset to the end of the file" (FICLONE,
FICLONERANGE with length 0, ftruncate to a page-aligned size); an O_APPEND write reports
the fd's position, not the end of the file.

Each test writes the same random bytes to `orig` (never released) and `f` (archived and
released), applies one operation to both in a subprocess with a timeout, drops the page
cache and compares. A mismatch names the operation, and for each differing MiB whether the
released file read zeros there.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import drop_caches
import fileops
from fileops import COLLAPSE_RANGE, INSERT_RANGE, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE

KiB = 1 << 10
MiB = 1 << 20
TIMEOUT = 90
FILEOPS = Path(fileops.__file__).resolve()

# Compares two files MiB by MiB in a subprocess (reading the released one recalls).
COMPARE = r"""
import sys
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
i, bad = 0, []
while True:
    x, y = a.read(1 << 20), b.read(1 << 20)
    if not x and not y:
        break
    if x != y:
        zero = x.count(0) == len(x)
        bad.append(f"MiB {i}" + (" reads zeros" if zero and x else "") + (f" ({len(x)} vs {len(y)} bytes)" if len(x) != len(y) else ""))
    i += 1
print("; ".join(bad) if bad else "same")
"""


def run_fileop(*args, threads=0):
    r = subprocess.run([sys.executable, str(FILEOPS), *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, FILEOPS_THREADS=str(threads)))
    assert r.returncode == 0, f"fileops {args}: {r.stderr}"
    return r.stdout.strip()


def compare(released, twin):
    """'same', or which MiB differ. Cold cache: reads of the released file recall."""
    drop_caches()
    r = subprocess.run([sys.executable, "-c", COMPARE, str(released), str(twin)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def released_and_twin(h, name, data):
    """`name` archived and released, and `name.twin` with the same bytes, never released."""
    twin = h.mnt / f"{name}.twin"
    twin.write_bytes(data)
    p, _ = h.write(name, data=data)
    h.migrate(p)
    return p, twin


def check_all(h, cases, data_for, threads=0):
    """Applies each case to a fresh released file and its twin; returns the mismatches.
    `threads`: idle threads in the process that applies it to the released file."""
    failures, ran = [], 0
    for i, (label, args) in enumerate(cases):
        data = data_for(label)
        p, twin = released_and_twin(h, f"c{i}", data)
        on_twin = run_fileop(args[0], twin, *args[1:])
        if on_twin == "EOPNOTSUPP":
            continue  # this filesystem lacks the mode: nothing to compare
        ran += 1
        on_released = run_fileop(args[0], p, *args[1:], threads=threads)
        if on_released != on_twin:
            failures.append(f"{label}: released file got {on_released}, twin {on_twin}")
            continue
        if os.stat(p).st_size != os.stat(twin).st_size:
            failures.append(f"{label}: size {os.stat(p).st_size}, twin {os.stat(twin).st_size}")
        diff = compare(p, twin)
        if diff != "same":
            failures.append(f"{label}: {diff}")
    return failures, ran


FALLOCATE_CASES = [
    ("insert-range 1MiB @ 1MiB", ("fallocate", INSERT_RANGE, MiB, MiB)),
    ("insert-range 4KiB @ 4KiB", ("fallocate", INSERT_RANGE, 4 * KiB, 4 * KiB)),
    ("insert-range 3MiB @ 5MiB", ("fallocate", INSERT_RANGE, 5 * MiB, 3 * MiB)),
    ("collapse-range 1MiB @ 1MiB", ("fallocate", COLLAPSE_RANGE, MiB, MiB)),
    ("collapse-range 4KiB @ 4KiB", ("fallocate", COLLAPSE_RANGE, 4 * KiB, 4 * KiB)),
    ("collapse-range 2MiB+4KiB @ 3MiB", ("fallocate", COLLAPSE_RANGE, 3 * MiB, 2 * MiB + 4 * KiB)),
    ("zero-range 1MiB @ 1MiB", ("fallocate", ZERO_RANGE, MiB, MiB)),
    ("zero-range 10000 @ 5000", ("fallocate", ZERO_RANGE, 5000, 10000)),
    ("zero-range 2MiB @ 7MiB (extends)", ("fallocate", ZERO_RANGE, 7 * MiB, 2 * MiB)),
    ("zero-range|keep-size 2MiB @ 7MiB", ("fallocate", ZERO_RANGE | KEEP_SIZE, 7 * MiB, 2 * MiB)),
    ("punch-hole 1MiB @ 1MiB", ("fallocate", PUNCH_HOLE | KEEP_SIZE, MiB, MiB)),
    ("punch-hole 10000 @ 5000", ("fallocate", PUNCH_HOLE | KEEP_SIZE, 5000, 10000)),
    ("punch-hole 1MiB+1 @ 2MiB-1", ("fallocate", PUNCH_HOLE | KEEP_SIZE, 2 * MiB - 1, MiB + 1)),
    ("allocate 1MiB @ 1MiB", ("fallocate", 0, MiB, MiB)),
    ("allocate|keep-size 1MiB @ 1MiB", ("fallocate", KEEP_SIZE, MiB, MiB)),
    ("allocate 1MiB @ 8MiB (extends)", ("fallocate", 0, 8 * MiB, MiB)),
]


@pytest.mark.parametrize("hsm_fs", ["ext4", "xfs", "btrfs"], indirect=True)
def test_fallocate_modes_on_a_released_file_equal_the_same_mode_on_the_original(hsm_fs):
    data = os.urandom(8 * MiB)
    failures, ran = check_all(hsm_fs, FALLOCATE_CASES, lambda _: data)
    # btrfs has no insert/collapse; everything else runs everywhere.
    assert ran >= len(FALLOCATE_CASES) - (6 if hsm_fs.fstype == "btrfs" else 0)
    assert not failures, f"{hsm_fs.fstype}: " + "\n".join(failures)


# 5,000,000 bytes: the end of file is in the middle of a page and of a recall block.
ODD = 5_000_000
WRITE_CASES = [
    ("O_APPEND write of 3 bytes", ("append", "616263")),
    ("pwrite 3 bytes @ 6,000,000 (past EOF)", ("pwrite", 6_000_000, "616263")),
    ("pwrite 3 bytes @ EOF", ("pwrite", ODD, "616263")),
    ("ftruncate down to 3MiB (page aligned: count-0 event)", ("ftruncate", 3 * MiB)),
    ("ftruncate down to 3MiB+12345", ("ftruncate", 3 * MiB + 12345)),
    ("ftruncate up to 12MiB (count-0 event)", ("ftruncate", 12 * MiB)),
    ("ftruncate up to 12MiB+5", ("ftruncate", 12 * MiB + 5)),
    ("ftruncate to the same size", ("ftruncate", ODD)),
]


@pytest.mark.parametrize("hsm_fs", ["ext4", "xfs", "btrfs"], indirect=True)
def test_appends_writes_past_eof_and_truncation_of_a_released_file_equal_the_original(hsm_fs):
    data = os.urandom(ODD)
    failures, ran = check_all(hsm_fs, WRITE_CASES, lambda _: data)
    assert ran == len(WRITE_CASES)
    assert not failures, f"{hsm_fs.fstype}: " + "\n".join(failures)


def test_truncate_down_then_up_before_any_read_gives_zeros_above_the_cut(hsm):
    data = os.urandom(8 * MiB)
    p, twin = released_and_twin(hsm, "f", data)
    for path in (p, twin):
        assert run_fileop("ftruncate", path, 3 * MiB) == "ok"
        assert run_fileop("ftruncate", path, 8 * MiB) == "ok"
    assert compare(p, twin) == "same"


@pytest.mark.parametrize("hsm_fs", ["xfs", "btrfs"], indirect=True)
def test_a_clone_of_a_released_file_has_its_bytes(hsm_fs):
    """FICLONE raises one count-0 event on the source (and one on the destination)."""
    h = hsm_fs
    data = os.urandom(8 * MiB + 12345)
    p, twin = released_and_twin(h, "src", data)
    assert run_fileop("clone", p, h.mnt / "clone") == "ok"
    assert compare(h.mnt / "clone", twin) == "same"
    assert compare(p, twin) == "same"


@pytest.mark.parametrize("hsm_fs", ["xfs", "btrfs"], indirect=True)
def test_a_clone_range_to_eof_of_a_released_file_has_its_bytes(hsm_fs):
    """FICLONERANGE with length 0 means "to the end of the source": a count-0 event."""
    h = hsm_fs
    data = os.urandom(8 * MiB + 12345)
    p, _ = released_and_twin(h, "src", data)
    assert run_fileop("clonerange", p, 3 * MiB, 0, h.mnt / "part", 0) == "ok"
    (h.mnt / "expected").write_bytes(data[3 * MiB:])
    assert compare(h.mnt / "part", h.mnt / "expected") == "same"


@pytest.mark.parametrize("hsm_fs", ["xfs", "btrfs"], indirect=True)
def test_cloning_over_a_released_file_replaces_its_bytes(hsm_fs):
    """The destination's count-0 event: its offline blocks must not come back later into
    the clone's holes (nor its tail be lost)."""
    h = hsm_fs
    old = os.urandom(8 * MiB)
    dst, _ = released_and_twin(h, "dst", old)
    new = bytearray(os.urandom(5 * MiB))
    src, _ = h.write("src", data=bytes(new))
    assert run_fileop("fallocate", src, PUNCH_HOLE | KEEP_SIZE, 2 * MiB, MiB) == "ok"
    new[2 * MiB:3 * MiB] = bytes(MiB)  # the source has a hole there: so must the clone
    new = bytes(new)
    assert run_fileop("clone", src, dst) == "ok"
    (h.mnt / "expected").write_bytes(new + old[5 * MiB:])
    assert compare(dst, h.mnt / "expected") == "same"


@pytest.mark.parametrize("hsm_fs", ["ext4", "xfs", "btrfs"], indirect=True)
def test_copy_file_range_from_a_released_file_copies_its_bytes(hsm_fs):
    h = hsm_fs
    data = os.urandom(8 * MiB)
    p, _ = released_and_twin(h, "src", data)
    assert run_fileop("copyrange", p, MiB + 4096, 5 * MiB, h.mnt / "copy", 0) == "ok"
    (h.mnt / "expected").write_bytes(data[MiB + 4096:6 * MiB + 4096])
    assert compare(h.mnt / "copy", h.mnt / "expected") == "same"


def test_without_ptrace_access_every_case_still_equals_the_original(hsm_stopped):
    """Without CAP_SYS_PTRACE hsmd cannot see what an accessing process is doing, so every
    access counts as the worst case (a shifting fallocate, a truncation): slower, still right."""
    h = hsm_stopped
    h.start(wrapper=["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
    assert h.wait_for_log("cannot see what accessing processes are doing")
    assert "sees what accessing processes do" in h.ctl("doctor").stdout and "CAP_SYS_PTRACE missing" in h.ctl("doctor").stdout
    data = os.urandom(8 * MiB)
    failures, _ = check_all(h, FALLOCATE_CASES, lambda _: data)
    odd = os.urandom(ODD)
    more, _ = check_all(h, WRITE_CASES, lambda _: odd)
    assert not failures + more, "\n".join(failures + more)


@pytest.mark.parametrize("threads", [40, 300])
def test_a_process_with_many_threads_gets_the_same_bytes(hsm, threads):
    """hsmd reads every thread of the process (the event names the process): 40 threads go
    to a recall worker instead of the event thread; over 256 count as the worst case."""
    data = os.urandom(8 * MiB)
    failures, _ = check_all(hsm, FALLOCATE_CASES[:6], lambda _: data, threads=threads)
    odd = os.urandom(ODD)
    more, _ = check_all(hsm, WRITE_CASES, lambda _: odd, threads=threads)
    assert not failures + more, "\n".join(failures + more)


def test_doctor_says_hsmd_sees_what_accessing_processes_do(hsm):
    """With CAP_SYS_PTRACE (tests run hsmd as root) doctor says so. It once asked by
    reading pid 1's lines, which a sandbox's pid 1 refuses to everyone: it said "no"."""
    out = hsm.ctl("doctor").stdout
    assert re.search(r"ok +sees what accessing processes do .*: yes", out), out
    assert "cannot see what accessing processes are doing" not in hsm.log_text()
