"""The s3 store when things go wrong, against the real Ceph RADOS Gateway (rgw.py): only
hsmd links OpenSSL (hsmctl does not); https
with the gateway's own CA and with a wrong one, the gateway stopped in the middle of a
recall (the reader gets its bytes after a retry when the gateway comes back within
recall_timeout, or EIO when it does not: never zeros), the gateway restarted between
recalls, wrong credentials over https, and multipart uploads a killed hsmd left behind.

503 SlowDown cannot be provoked on this gateway on demand; the retry policy's handling of it
is tested against a scripted server in Tests/HSMStoresTests/RetryPolicyTests.swift.
"""
import errno
import hashlib
import json
import subprocess
import sys
import time
import uuid

import pytest

from conftest import HSMCTL, HSMD, drop_caches, managed_filesystem, s3_client, sha256, start_fails

import boto3  # noqa: E402,F401  (scripts/setup.sh installs it: missing means setup failed, never a skip)
from botocore.exceptions import ClientError  # noqa: E402

# Reads 1 MiB of the file, says "ready", waits for a line on stdin, then reads the whole
# file from the start and prints what it got: its hash, where it failed, and the offsets of
# any all-zero 4 KiB page (the test's data is random: a zero page is a released range that
# was allowed without being recalled).
GATED_READER = r"""
import hashlib, json, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
os.pread(fd, 1 << 20, 0)
print("ready", flush=True)
sys.stdin.readline()
h, done, zeros, error = hashlib.sha256(), 0, [], None
try:
    while True:
        b = os.pread(fd, 1 << 20, done)
        if not b:
            break
        for i in range(0, len(b), 4096):
            if b[i:i + 4096] == bytes(len(b[i:i + 4096])):
                zeros.append(done + i)
        h.update(b)
        done += len(b)
except OSError as e:
    error = e.errno
print(json.dumps({"sha256": h.hexdigest(), "done": done, "errno": error, "zeros": zeros[:10], "prefix": done}), flush=True)
"""


def configure(h, rgw, bucket, endpoint=None, store_extra="", top_extra=""):
    h.config.write_text(
        f'socket = "{h.socket}"\nstate_dir = "{h.state_dir}"\nlog_level = "debug"\n{top_extra}'
        '[[store]]\nname = "tier1"\ntype = "s3"\n'
        f'endpoint = "{endpoint or rgw.endpoint}"\nbucket = "{bucket}"\nprefix = "hsm/"\n'
        f'access_key_id = "{rgw.access_key}"\nsecret_access_key = "{rgw.secret_key}"\n{store_extra}'
        f'[[filesystem]]\npath = "{h.mnt}"\nstore = "tier1"\n')
    h.bucket = bucket


def make_ca(where, name):
    """A CA of the test's own, unrelated to the gateway's certificate."""
    key, cert = where / f"{name}.key", where / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert


def digest_of(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- https

def linked_libraries(binary):
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_only_hsmd_links_openssl():
    """TLS lives in its own C module (CHSMTLS) that only the stores use: hsmctl links
    neither libssl nor libcrypto; hsmd links both (the https tests below use them)."""
    ctl = linked_libraries(HSMCTL)
    assert not [lib for lib in ctl if lib.startswith(("libssl", "libcrypto"))], ctl
    daemon = linked_libraries(HSMD)
    assert any(lib.startswith("libssl") for lib in daemon) and any(lib.startswith("libcrypto") for lib in daemon), daemon


def test_https_archive_and_recall(rgw, bucket):
    """Over https with tls_ca_file the gateway's CA: a multipart file and a small one go up
    and come back byte for byte."""
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket, endpoint=rgw.https_endpoint,
                  store_extra=f'tls_ca_file = "{rgw.ca_file}"\npart_size = "5M"\n')
        h.start()
        big, big_digest = h.write("big.bin", size=12 << 20)
        small, small_digest = h.write("small.bin", size=70_000)
        h.migrate(big)
        h.migrate(small)
        assert h.state(big) == "released" and h.state(small) == "released"
        obj = h.status(big)["object"]
        head = s3_client(rgw).head_object(Bucket=bucket, Key=f"hsm/objects/{obj[:2]}/{obj}.data")
        assert head["ContentLength"] == 12 << 20 and head["ETag"].strip('"').endswith("-3"), head
        drop_caches()
        assert sha256(big) == big_digest
        assert sha256(small) == small_digest
        assert "ok   store tier1: ok" in h.ctl("doctor").stdout
        assert rgw.secret_key not in h.log_text()


@pytest.mark.parametrize("ca", ["wrong-ca", "system-bundle"])
def test_https_certificate_refused_stops_start_with_a_clear_message(rgw, bucket, ca):
    """A CA that did not sign the gateway's certificate (or none: the system's bundle does
    not know the test's CA): hsmd refuses to start, naming the endpoint and why, and prints
    no secret."""
    with managed_filesystem(start=False) as h:
        extra = f'tls_ca_file = "{make_ca(h.base, "other-ca")}"\n' if ca == "wrong-ca" else ""
        configure(h, rgw, bucket, endpoint=rgw.https_endpoint, store_extra=extra)
        out = start_fails(h)
        assert rgw.https_endpoint in out, out
        assert "certificate was refused" in out, out
        assert "self-signed certificate in certificate chain" in out or "unable to get local issuer certificate" in out, out
        assert ("tls_ca_file " + str(h.base)) in out if ca == "wrong-ca" else "system's CA certificates" in out, out
        assert rgw.secret_key not in out, out


def test_https_host_name_the_certificate_does_not_carry_stops_start(rgw, bucket):
    """The right CA, but the gateway reached as localhost while its certificate names only
    127.0.0.1: refused."""
    with managed_filesystem(start=False) as h:
        endpoint = rgw.https_endpoint.replace("127.0.0.1", "localhost")
        configure(h, rgw, bucket, endpoint=endpoint, store_extra=f'tls_ca_file = "{rgw.ca_file}"\n')
        out = start_fails(h)
        assert endpoint in out and "certificate was refused" in out and "mismatch" in out, out
        assert rgw.secret_key not in out, out


def test_https_ca_file_that_is_not_a_certificate_stops_start(rgw, bucket):
    with managed_filesystem(start=False) as h:
        bad = h.base / "not-a-ca.pem"
        bad.write_text("hello\n")
        configure(h, rgw, bucket, endpoint=rgw.https_endpoint, store_extra=f'tls_ca_file = "{bad}"\n')
        out = start_fails(h)
        assert "cannot load the CA file" in out and str(bad) in out, out


def test_https_wrong_secret_stops_start_without_printing_it(rgw, bucket):
    wrong = "WrongSecret" + uuid.uuid4().hex
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket, endpoint=rgw.https_endpoint, store_extra=f'tls_ca_file = "{rgw.ca_file}"\n')
        h.config.write_text(h.config.read_text().replace(rgw.secret_key, wrong))
        out = start_fails(h)
        assert "refuses" in out and "check the access key and secret" in out, out
        assert wrong not in out and rgw.secret_key not in out, out


# ---------------------------------------------------------------------------- gateway faults

def gated_reader(path):
    p = subprocess.Popen([sys.executable, "-c", GATED_READER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-within-timeout", "stays-down"])
def test_gateway_stopped_in_the_middle_of_a_recall(rgw, bucket, comes_back):
    """The gateway is killed while a reader streams a released file (each recall slowed so
    the kill lands in the middle). Back within recall_timeout: the reader gets every byte
    right after the retries. Not back: the reader gets EIO, what it read before is right,
    and the log names the object and the errno. Never zeros."""
    data = None
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket, store_extra="timeout = 3\n",
                  top_extra=f"recall_timeout = {90 if comes_back else 8}\n")
        h.start(env={"HSMD_TEST_STORE_DELAY_MS": "100"})
        path, digest = h.write("stream.bin", size=24 << 20)
        with open(path, "rb") as f:
            data = f.read()
        h.migrate(path)
        obj = h.status(path)["object"]
        drop_caches()
        reader = gated_reader(path)
        try:
            reader.stdin.write("go\n")
            reader.stdin.flush()
            rgw.kill_rgw()
            down = True
            try:
                if comes_back:
                    # Down for longer than a few quick retries would cover (radosgw alone
                    # restarts in about a second), well within recall_timeout. The reader is
                    # still waiting for its data: nothing can have answered it.
                    time.sleep(10)
                    assert reader.poll() is None, "the reader finished while the gateway was down"
                    rgw.start_rgw()
                    down = False
                result = json.loads(reader.communicate(timeout=240)[0].strip().splitlines()[-1])
                log = h.log_text()
            finally:
                if down:
                    rgw.start_rgw()
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        assert result["zeros"] == [], f"zero pages at {result['zeros']}"
        assert digest_of(data[:result["done"]]) == result["sha256"], "the bytes read before the failure are wrong"
        if comes_back:
            assert result["errno"] is None and result["done"] == len(data), result
            assert result["sha256"] == digest
        else:
            assert result["errno"] == errno.EIO and result["done"] < len(data), result
            assert f"{obj}.data" in log, log[-3000:]
            assert "errno 111" in log or "errno 104" in log or "errno 110" in log, log[-3000:]
            assert rgw.secret_key not in log
            # The gateway back: the same file reads right, with no restart of hsmd.
            drop_caches()
            assert sha256(path) == digest
        assert h.proc.poll() is None, h.log_text()[-3000:]


def test_gateway_restarted_between_recalls(rgw, bucket):
    """hsmd's kept-alive connections die with the gateway; the next recall opens new ones
    and reads the right bytes."""
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket)
        h.start()
        a, a_digest = h.write("a.bin", size=3 << 20)
        b, b_digest = h.write("b.bin", size=3 << 20)
        h.migrate(a)
        h.migrate(b)
        drop_caches()
        assert sha256(a) == a_digest   # connections are now kept alive in hsmd's pool
        rgw.stop_rgw()
        rgw.start_rgw()
        drop_caches()
        assert sha256(b) == b_digest
        assert h.proc.poll() is None


# ---------------------------------------------------------------------------- multipart

def test_unfinished_uploads_under_the_prefix_are_aborted_at_start(rgw, bucket):
    """Uploads to this store's data keys that no note remembers (as a killed hsmd can leave)
    are aborted at the next start; uploads to other keys in the bucket are left alone."""
    s3 = s3_client(rgw)
    obj = uuid.uuid4().hex  # 32 hex digits, as an object id
    ours = f"hsm/objects/{obj[:2]}/{obj}.data"
    theirs = ["hsm/other/file.data", f"elsewhere/objects/{obj[:2]}/{obj}.data", f"hsm/objects/{obj[:2]}/{obj}.json"]
    for key in [ours, *theirs]:
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket)
        h.start()
        assert h.wait_for_log("aborted 1 unfinished multipart upload", timeout=30), h.log_text()[-3000:]
        left = sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
        assert left == sorted(theirs), left


def test_multipart_upload_interrupted_by_kill_leaves_no_parts(rgw, bucket):
    """hsmd killed with parts in flight: after the restart boto3 lists no upload and no
    part, and the file is as it was."""
    import os
    import signal
    s3 = s3_client(rgw)
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket, store_extra='part_size = "5M"\nconnections = 2\n')
        h.start(env={"HSMD_TEST_ARCHIVE_PAUSE_MS": "3000"})
        path, digest = h.write("big.bin", size=40 << 20)
        env = dict(os.environ, HSMD_SOCKET=str(h.socket))
        archive = subprocess.Popen([str(HSMD.parent / "hsmctl"), "archive", str(path)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while True:
                ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                if ups and s3.list_parts(Bucket=bucket, Key=ups[0]["Key"], UploadId=ups[0]["UploadId"]).get("Parts"):
                    break
                assert time.time() < deadline, "no part went up"
                time.sleep(0.2)
            h.stop(sig=signal.SIGKILL)
        finally:
            archive.wait(timeout=60)
        (up,) = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
        h.start()
        assert h.wait_for_log("removed its unfinished object", timeout=30), h.log_text()[-3000:]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        with pytest.raises(ClientError) as gone:
            s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        # RGW 16.2 answers NoSuchKey where AWS answers NoSuchUpload.
        assert gone.value.response["Error"]["Code"] in ("NoSuchUpload", "NoSuchKey"), gone.value.response
        assert h.state(path) == "resident"
        assert sha256(path) == digest
