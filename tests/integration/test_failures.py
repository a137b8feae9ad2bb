"""Recall failures reach the program as errnos, never as zeros or a hang."""
import errno
import os
import subprocess
import time

import pytest

from conftest import drop_caches, sha256

MiB = 1 << 20


def _read_errno(path):
    try:
        with open(path, "rb") as f:
            f.read()
    except OSError as e:
        return e.errno
    return None


def test_recall_slower_than_recall_timeout_fails_with_eio_not_a_hang(hsm_stopped):
    # The kernel accepts no ETIMEDOUT in FAN_DENY_ERRNO (docs/KERNEL-FACTS.md), so a
    # timed-out recall is an EIO.
    hsm = hsm_stopped
    hsm.write_config(extra="recall_timeout = 1")
    hsm.start(env={"HSMD_TEST_STORE_DELAY_MS": "3000"})
    p, digest = hsm.write("slow.bin", size=3 * MiB)
    hsm.migrate(p)
    drop_caches()
    started = time.monotonic()
    assert _read_errno(p) == errno.EIO
    assert time.monotonic() - started < 10
    assert hsm.wait_for_log("timed out", "slow.bin")
    # The late recall still finishes in the background; the next read gets the data.
    time.sleep(3.5)
    assert sha256(p) == digest


def test_recall_into_a_full_filesystem_fails_with_enospc_and_loses_nothing(hsm):
    p, digest = hsm.write("cold.bin", size=40 * MiB)
    hsm.migrate(p)
    # Fill the managed filesystem completely.
    filler = hsm.mnt / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * (4 * MiB)
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    drop_caches()
    assert _read_errno(p) == errno.ENOSPC
    assert hsm.wait_for_log("No space left")
    assert hsm.state(p) in ("released", "partial")
    filler.unlink()
    drop_caches()
    assert sha256(p) == digest


def test_a_recall_that_fails_with_enospc_leaves_an_unmodified_file_clean(hsm):
    p, digest = hsm.write("cold.bin", size=8 * MiB)
    hsm.migrate(p)
    # Fill the managed filesystem to its last block, so the recall's first write fails.
    filler = hsm.mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (4 * MiB, 4096):
            try:
                while True:
                    f.write(b"\xaa" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    drop_caches()
    assert _read_errno(p) == errno.ENOSPC
    assert hsm.state(p) in ("released", "partial")
    filler.unlink()
    drop_caches()
    assert sha256(p) == digest
    assert hsm.state(p) == "archived"
