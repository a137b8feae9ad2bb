"""The s3 store against a real Ceph RADOS Gateway (the session's `rgw` fixture, rgw.py).

Files are archived and released to a bucket of their own per test, read back through
hsmd and compared byte for byte; objects corrupted or deleted behind hsmd's back make the
read fail with EIO (never zeros); a store hsmd cannot use with the credentials given stops
it from starting, with a message that names the problem and carries no secret.
"""
import os
import subprocess
import uuid

import pytest

from conftest import HSMD, assert_eio, drop_caches, managed_filesystem, s3_client, sha256, start_fails

import boto3  # noqa: E402,F401  (scripts/setup.sh installs it: missing means setup failed, never a skip)


def s3_store_toml(rgw, bucket, keys=True, extra=""):
    creds = f'access_key_id = "{rgw.access_key}"\nsecret_access_key = "{rgw.secret_key}"\n' if keys else ""
    return ('[[store]]\nname = "tier1"\ntype = "s3"\n'
            f'endpoint = "{rgw.endpoint}"\nbucket = "{bucket}"\nprefix = "hsm/"\n{creds}{extra}')


def configure(h, store_toml):
    h.config.write_text(
        f'socket = "{h.socket}"\nstate_dir = "{h.state_dir}"\nlog_level = "debug"\n'
        f"{store_toml}"
        f'[[filesystem]]\npath = "{h.mnt}"\nstore = "tier1"\n')


@pytest.fixture
def hsm_s3(rgw, bucket):
    with managed_filesystem(start=False) as h:
        configure(h, s3_store_toml(rgw, bucket))
        h.start()
        h.bucket = bucket
        yield h


def keys_of(rgw, bucket, obj):
    s3 = s3_client(rgw)
    prefix = f"hsm/objects/{obj[:2]}/{obj}"
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def migrate_and_check(hsm, rgw, path, digest):
    hsm.migrate(path)
    obj = hsm.status(path)["object"]
    assert keys_of(rgw, hsm.bucket, obj) == [f"hsm/objects/{obj[:2]}/{obj}.data", f"hsm/objects/{obj[:2]}/{obj}.json"]
    drop_caches()
    assert sha256(path) == digest
    return obj


def test_small_file_round_trip(hsm_s3, rgw):
    path, digest = hsm_s3.write("small.bin", size=100_000)
    obj = migrate_and_check(hsm_s3, rgw, path, digest)
    head = s3_client(rgw).head_object(Bucket=hsm_s3.bucket, Key=f"hsm/objects/{obj[:2]}/{obj}.data")
    assert "-" not in head["ETag"], "a small file must go up in one PUT, not a multipart upload"
    assert head["ContentLength"] == 100_000


def test_sparse_file_uploads_only_its_data(hsm_s3, rgw):
    path = hsm_s3.mnt / "sparse.bin"
    a, b = os.urandom(1 << 20), os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.write(a)
        f.seek(40 << 20)
        f.write(b)
        f.truncate(64 << 20)
    digest = sha256(path)
    obj = migrate_and_check(hsm_s3, rgw, path, digest)
    head = s3_client(rgw).head_object(Bucket=hsm_s3.bucket, Key=f"hsm/objects/{obj[:2]}/{obj}.data")
    assert head["ContentLength"] < 8 << 20, f"the data object of a 64 MiB file with 2 MiB of data is {head['ContentLength']} bytes"
    with open(path, "rb") as f:
        f.seek(40 << 20)
        assert f.read(1 << 20) == b
        f.seek(20 << 20)
        assert f.read(4096) == bytes(4096)


def test_large_file_goes_up_in_parts(hsm_s3, rgw):
    path, digest = hsm_s3.write("large.bin", size=40 << 20)
    obj = migrate_and_check(hsm_s3, rgw, path, digest)
    head = s3_client(rgw).head_object(Bucket=hsm_s3.bucket, Key=f"hsm/objects/{obj[:2]}/{obj}.data")
    assert head["ETag"].strip('"').endswith("-3"), f"40 MiB in 16 MiB parts is 3 parts, ETag {head['ETag']}"
    assert head["ContentLength"] == 40 << 20
    assert s3_client(rgw).list_multipart_uploads(Bucket=hsm_s3.bucket).get("Uploads", []) == []
    # A read in the middle, after the caches are gone.
    drop_caches()
    with open(path, "rb") as f:
        f.seek(33 << 20)
        chunk = f.read(65536)
        f.seek(0)
        whole = f.read()
    assert whole[33 << 20:(33 << 20) + 65536] == chunk and len(whole) == 40 << 20


@pytest.mark.parametrize("damage", ["corrupt-data", "delete-data", "delete-record"])
def test_damaged_object_fails_with_eio(hsm_s3, rgw, damage):
    path, _ = hsm_s3.write("victim.bin", size=3 << 20)
    other, other_digest = hsm_s3.write("other.bin", size=200_000)
    hsm_s3.migrate(path)
    hsm_s3.migrate(other)
    obj = hsm_s3.status(path)["object"]
    base = f"hsm/objects/{obj[:2]}/{obj}"
    s3 = s3_client(rgw)
    if damage == "corrupt-data":
        data = bytearray(s3.get_object(Bucket=hsm_s3.bucket, Key=base + ".data")["Body"].read())
        data[12345] ^= 0xFF
        s3.put_object(Bucket=hsm_s3.bucket, Key=base + ".data", Body=bytes(data))
    elif damage == "delete-data":
        s3.delete_object(Bucket=hsm_s3.bucket, Key=base + ".data")
    else:
        s3.delete_object(Bucket=hsm_s3.bucket, Key=base + ".json")
    # hsmd keeps records it wrote; a restart reads them from the bucket.
    assert hsm_s3.stop() == 0
    hsm_s3.start()
    assert_eio(path)
    assert_eio(path)  # and again: never zeros on a second try
    assert hsm_s3.proc.poll() is None, hsm_s3.log_text()[-3000:]
    drop_caches()
    assert sha256(other) == other_digest


def test_wrong_secret_refuses_start_without_printing_it(rgw, bucket):
    wrong = "WrongSecret" + uuid.uuid4().hex
    with managed_filesystem(start=False) as h:
        configure(h, s3_store_toml(rgw, bucket, keys=False,
                                   extra=f'access_key_id = "{rgw.access_key}"\nsecret_access_key = "{wrong}"\n'))
        out = start_fails(h)
        assert "refuses" in out and "check the access key and secret" in out, out
        assert wrong not in out and rgw.secret_key not in out, out


def test_missing_bucket_refuses_start(rgw):
    with managed_filesystem(start=False) as h:
        configure(h, s3_store_toml(rgw, "hsmd-no-such-bucket-" + uuid.uuid4().hex[:8]))
        out = start_fails(h)
        assert "does not exist" in out, out
        assert rgw.secret_key not in out, out


def test_credentials_file_must_be_private(rgw, bucket):
    with managed_filesystem(start=False) as h:
        creds = h.base / "s3.credentials"
        creds.write_text(f"[default]\naws_access_key_id = {rgw.access_key}\naws_secret_access_key = {rgw.secret_key}\n")
        os.chmod(creds, 0o644)
        configure(h, s3_store_toml(rgw, bucket, keys=False, extra=f'credentials_file = "{creds}"\n'))
        out = start_fails(h)
        assert "chmod 600" in out, out
        assert rgw.secret_key not in out, out
        os.chmod(creds, 0o600)
        h.start()
        path, digest = h.write("f.bin", size=50_000)
        h.migrate(path)
        drop_caches()
        assert sha256(path) == digest


def test_gateway_down_means_eio_never_zeros_and_back_means_the_bytes(rgw, bucket):
    """The gateway stopped: a released file reads EIO (never zeros), and hsmd still starts
    (refusing would leave released ranges reading zeros), saying why; the gateway back:
    the same file reads its bytes, with no restart of hsmd."""
    with managed_filesystem(start=False) as h:
        configure(h, s3_store_toml(rgw, bucket, extra="timeout = 2\n"))
        h.bucket = bucket
        h.start()
        path, digest = h.write("f.bin", size=3 << 20)
        h.migrate(path)
        assert h.stop() == 0
        rgw.stop_rgw()
        try:
            h.start()
            assert h.wait_for_log("cannot be reached"), h.log_text()[-3000:]
            doctor = h.ctl("doctor").stdout
            assert "warn store tier1:" in doctor and "cannot be reached" in doctor, doctor
            assert rgw.secret_key not in doctor and rgw.secret_key not in h.log_text()
            assert_eio(path)
            assert h.proc.poll() is None, h.log_text()[-3000:]
            r = h.ctl("archive", h.write("new.bin", size=1000)[0], check=False)
            assert r.returncode != 0, "archive to a store that does not answer must be refused"
        finally:
            rgw.start_rgw()
        drop_caches()
        assert sha256(path) == digest
        assert "ok   store tier1: ok" in h.ctl("doctor").stdout


def test_multipart_upload_interrupted_by_kill_is_aborted_at_start(rgw, bucket):
    """hsmd killed while a file's parts go up: the file stays as it was, and the next start
    aborts the upload (no orphaned parts) and removes what was put."""
    import signal
    import time
    s3 = s3_client(rgw)
    with managed_filesystem(start=False) as h:
        configure(h, s3_store_toml(rgw, bucket, extra='part_size = "5M"\n'))
        h.bucket = bucket
        h.start(env={"HSMD_TEST_ARCHIVE_PAUSE_MS": "5000"})
        path, digest = h.write("big.bin", size=30 << 20)
        env = dict(os.environ, HSMD_SOCKET=str(h.socket))
        archive = subprocess.Popen([str(HSMD.parent / "hsmctl"), "archive", str(path)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
                assert time.time() < deadline, "no multipart upload began"
                time.sleep(0.2)
            h.stop(sig=signal.SIGKILL)
        finally:
            archive.wait(timeout=60)
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the kill left no upload to clean up"
        h.start()
        assert h.wait_for_log("removed its unfinished object", timeout=30), h.log_text()[-3000:]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        # Only the store's identity object is left.
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == ["hsm/hsmd-store.json"]
        assert h.state(path) == "resident"
        assert sha256(path) == digest
