"""fsx-style randomized test: a seeded mix of reads, writes, appends, mmap reads and writes,
truncation up and down and every fallocate mode the filesystem supports, on a file that is
archived and released every 250 operations, compared with a shadow copy in memory
(tests/integration/fsx_worker.py does the work, in a subprocess).

Defaults: 20,000 operations per seed, seeds 1-3, on ext4, xfs and btrfs, and seed 1 on
ext4 once more with hsmd lacking CAP_SYS_PTRACE (its conservative path). To rerun one case:

    FSX_FS=xfs FSX_SEEDS=2 python3 -m pytest -q tests/integration/test_fsx.py

(FSX_OPS and FSX_RELEASE_EVERY change the length and the release interval; a different
FSX_SEEDS list explores new sequences.) A failure prints the seed, the operation's index,
what differed, the last operations and the command that reruns exactly that case.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HSMCTL

FILESYSTEMS = os.environ.get("FSX_FS", "ext4,xfs,btrfs").split(",")
SEEDS = [int(s) for s in os.environ.get("FSX_SEEDS", "1,2,3").split(",")]
OPS = int(os.environ.get("FSX_OPS", "20000"))
RELEASE_EVERY = int(os.environ.get("FSX_RELEASE_EVERY", "250"))
WORKER = Path(__file__).resolve().parent / "fsx_worker.py"
TIMEOUT = 900  # a recall that never finishes fails the test instead of hanging the suite


def run_fsx(h, seed, rerun):
    log = h.base / "fsx.log"
    cmd = [sys.executable, str(WORKER), "--path", str(h.mnt / "fsx.data"), "--seed", str(seed),
           "--ops", str(OPS), "--release-every", str(RELEASE_EVERY), "--log", str(log),
           "--hsmctl", str(HSMCTL), "--socket", str(h.socket)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=WORKER.parent)
    except subprocess.TimeoutExpired:
        tail = log.read_text().splitlines()[-25:] if log.exists() else []
        pytest.fail(f"fsx on {h.fstype}, seed {seed}: no answer within {TIMEOUT} s (a hung access?). "
                    "Last operations:\n  " + "\n  ".join(tail) + f"\nrerun: {rerun}\nhsmd log tail:\n{h.log_text()[-3000:]}")
    assert r.returncode == 0, (f"{h.fstype}: {r.stdout}{r.stderr}\nrerun: {rerun}\n"
                               f"hsmd log tail:\n{h.log_text()[-3000:]}")
    print(h.fstype, r.stdout.strip(), r.stderr.strip())


@pytest.mark.parametrize("hsm_fs,seed", [(fs, s) for fs in FILESYSTEMS for s in SEEDS],
                         indirect=["hsm_fs"], ids=[f"{fs}-seed{s}" for fs in FILESYSTEMS for s in SEEDS])
def test_random_operations_on_a_file_released_again_and_again_match_a_shadow_copy(hsm_fs, seed):
    run_fsx(hsm_fs, seed, f"FSX_FS={hsm_fs.fstype} FSX_SEEDS={seed} FSX_OPS={OPS} FSX_RELEASE_EVERY={RELEASE_EVERY} "
                          "python3 -m pytest -q tests/integration/test_fsx.py")


@pytest.mark.skipif("ext4" not in FILESYSTEMS, reason="FSX_FS leaves out ext4")
def test_the_same_without_ptrace_access_where_every_access_counts_as_the_worst_case(hsm_stopped):
    """hsmd without CAP_SYS_PTRACE cannot tell a read from a truncation or a shifting
    fallocate: the conservative answers must be right too."""
    hsm_stopped.start(wrapper=["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
    seed = SEEDS[0]
    run_fsx(hsm_stopped, seed, f"FSX_FS=ext4 FSX_SEEDS={seed} FSX_OPS={OPS} FSX_RELEASE_EVERY={RELEASE_EVERY} "
                               "python3 -m pytest -q tests/integration/test_fsx.py -k without_ptrace")
