"""Recall failures reach the program as errnos, never as zeros or a hang."""
import contextlib
import errno
import time

from conftest import drop_caches, sha256
from stallproxy import StallingProxy

MiB = 1 << 20


def _read_errno(path):
    try:
        with open(path, "rb") as f:
            f.read()
    except OSError as e:
        return e.errno
    return None


def test_store_that_does_not_answer_fails_the_read_with_eio_within_recall_timeout(hsm_store_stopped):
    """A store that stops answering: the read fails with EIO after recall_timeout, not a
    hang and never zeros; once the store answers again, the next read gets the bytes.
    posix: a test hook makes each store read take 3 s. s3: hsmd reaches the real gateway
    through a relay that is made to stop moving bytes (connections accepted, no answer)."""
    # The kernel accepts no ETIMEDOUT in FAN_DENY_ERRNO (docs/KERNEL-FACTS.md), so a
    # timed-out recall is an EIO.
    hsm = hsm_store_stopped
    with contextlib.ExitStack() as stack:
        env = {}
        if hsm.store_kind == "s3":
            host, port = hsm.s3.rgw.endpoint.removeprefix("http://").split(":")
            proxy = stack.enter_context(StallingProxy(host, int(port)))
            hsm.use_s3(hsm.s3, endpoint=proxy.endpoint, store_extra="timeout = 2\n")
        else:
            env = {"HSMD_TEST_STORE_DELAY_MS": "3000"}
        hsm.write_config(extra="recall_timeout = 1")
        hsm.start(env=env)
        p, digest = hsm.write("slow.bin", size=3 * MiB)
        hsm.migrate(p)
        if hsm.store_kind == "s3":
            proxy.stall()
        drop_caches()
        started = time.monotonic()
        assert _read_errno(p) == errno.EIO
        assert time.monotonic() - started < 10
        assert hsm.wait_for_log("timed out", "slow.bin")
        if hsm.store_kind == "s3":
            proxy.resume()
            # The late recall goes on (its GET retried); status waits for it.
            hsm.status(p)
        else:
            # The late recall still finishes in the background; the next read gets the data.
            time.sleep(3.5)
        assert sha256(p) == digest
        assert hsm.proc.poll() is None, hsm.log_text()[-3000:]


def test_recall_into_a_full_filesystem_fails_with_enospc_and_loses_nothing(hsm_store):
    hsm = hsm_store
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


def test_a_recall_that_fails_with_enospc_leaves_an_unmodified_file_clean(hsm_store):
    hsm = hsm_store
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
