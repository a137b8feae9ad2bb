"""The s3 store proves its identity as the posix store does (README "The store must be the
store"), against the real Ceph RADOS Gateway (rgw.py): the first start writes
`<prefix>hsmd-store.json` and remembers its id in state_dir; a bucket emptied (its identity
object with it) or holding another store's identity is refused for archive and release,
and a released file then reads EIO without being flagged damaged; the right identity back
and hsmd restarted, everything works again.
"""
import json
import os


from conftest import assert_eio, drop_caches, managed_filesystem, s3_client, sha256

import boto3  # noqa: E402,F401  (scripts/setup.sh installs it: missing means setup failed, never a skip)

IDENTITY_KEY = "hsm/hsmd-store.json"


def configure(h, rgw, bucket):
    h.config.write_text(
        f'socket = "{h.socket}"\nstate_dir = "{h.state_dir}"\nlog_level = "debug"\n'
        '[[store]]\nname = "tier1"\ntype = "s3"\n'
        f'endpoint = "{rgw.endpoint}"\nbucket = "{bucket}"\nprefix = "hsm/"\n'
        f'access_key_id = "{rgw.access_key}"\nsecret_access_key = "{rgw.secret_key}"\n'
        f'[[filesystem]]\npath = "{h.mnt}"\nstore = "tier1"\n')


def identity(rgw, bucket):
    return json.loads(s3_client(rgw).get_object(Bucket=bucket, Key=IDENTITY_KEY)["Body"].read())


def marker_flags(path):
    return int.from_bytes(os.getxattr(path, "trusted.hsm")[6:8], "little")


def assert_eio_not_damaged(h, path):
    assert_eio(path)
    # The store is away, not the object lost: the marker is not flagged damaged.
    assert marker_flags(path) == 0, marker_flags(path)


def empty_bucket(rgw, bucket):
    s3 = s3_client(rgw)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])


def test_first_start_writes_the_identity_object_and_remembers_it(rgw, bucket):
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket)
        h.start()
        content = identity(rgw, bucket)
        assert content["store"] == "tier1" and content["format"] == 1 and len(content["id"]) == 32, content
        remembered = json.loads((h.state_dir / "stores.json").read_text())
        assert remembered["tier1"]["id"] == content["id"], remembered
        assert bucket in remembered["tier1"]["path"] and rgw.endpoint in remembered["tier1"]["path"], remembered
        assert h.wait_for_log(f"first use, identity {content['id']} written to {IDENTITY_KEY} in bucket {bucket}")
        doctor = h.ctl("doctor").stdout
        assert f"ok   store tier1: ok (identity {content['id']}, bucket {bucket}" in doctor, doctor
        # A second start verifies the same identity and writes nothing.
        h.stop()
        h.start()
        assert h.wait_for_log(f"identity {content['id']} verified")
        assert identity(rgw, bucket) == content


def test_a_bucket_emptied_is_refused_and_released_files_read_eio_without_damage(rgw, bucket):
    """The bucket emptied behind hsmd's back, its identity object with it (as a bucket
    deleted and created again): archive and release are refused, while hsmd runs and after
    a restart, with a message naming the bucket, the endpoint and the id hsmd archived to;
    a released file reads EIO and is not flagged damaged; nothing is written to the bucket."""
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket)
        h.start()
        ident = identity(rgw, bucket)["id"]
        released, _ = h.write("released.bin", size=3 << 20)
        archived, _ = h.write("archived.bin", size=300_000)
        resident, _ = h.write("resident.bin", size=300_000)
        h.migrate(released)
        h.ctl("archive", archived)
        empty_bucket(rgw, bucket)

        # While hsmd runs: the pinned identity object is gone.
        r = h.ctl("archive", resident, check=False)
        assert r.returncode != 0 and "is gone" in r.stderr and ident in r.stderr and bucket in r.stderr, r
        r = h.ctl("release", archived, check=False)
        assert r.returncode != 0 and "is gone" in r.stderr, r
        assert h.state(archived) == "archived"
        assert_eio_not_damaged(h, released)

        # After a restart: remembered, absent: refused, and the bucket is not initialised.
        h.stop()
        h.start()
        assert h.wait_for_log("has no identity object, but hsmd archived to store id " + ident)
        r = h.ctl("archive", resident, check=False)
        assert r.returncode != 0, r
        for needle in ("has no identity object", ident, bucket, rgw.endpoint, "stores.json"):
            assert needle in r.stderr, (needle, r.stderr)
        assert h.ctl("release", archived, check=False).returncode != 0
        assert_eio_not_damaged(h, released)
        doctor = h.ctl("doctor").stdout
        assert "warn store tier1:" in doctor and "has no identity object" in doctor, doctor
        assert s3_client(rgw).list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        assert rgw.secret_key not in h.log_text()


def test_another_identity_is_refused_and_the_right_one_back_works(rgw, bucket):
    """The identity object replaced by another store's id: refused while hsmd runs (the
    bytes differ from those verified) and after a restart (the id differs from the one
    remembered), the message naming both ids. The right one put back and hsmd restarted:
    archive, release and recall work."""
    s3 = s3_client(rgw)
    with managed_filesystem(start=False) as h:
        configure(h, rgw, bucket)
        h.start()
        right = s3.get_object(Bucket=bucket, Key=IDENTITY_KEY)["Body"].read()
        ident = json.loads(right)["id"]
        released, digest = h.write("released.bin", size=3 << 20)
        later, later_digest = h.write("later.bin", size=300_000)
        h.migrate(released)
        other = "0123456789abcdef" * 2
        s3.put_object(Bucket=bucket, Key=IDENTITY_KEY, Body=right.replace(ident.encode(), other.encode()))

        r = h.ctl("archive", later, check=False)
        assert r.returncode != 0 and f"now names store id {other}" in r.stderr and ident in r.stderr, r
        h.stop()
        h.start()
        assert h.wait_for_log(f"holds store id {other}, but hsmd archived to store id {ident}")
        r = h.ctl("archive", later, check=False)
        assert r.returncode != 0 and bucket in r.stderr and rgw.endpoint in r.stderr, r
        assert h.state(later) == "resident"
        # The objects are there: recall still reads them (they are verified by checksum).
        drop_caches()
        assert sha256(released) == digest

        s3.put_object(Bucket=bucket, Key=IDENTITY_KEY, Body=right)
        h.stop()
        h.start()
        assert h.wait_for_log(f"identity {ident} verified")
        h.migrate(later)
        drop_caches()
        assert sha256(later) == later_digest
        assert "ok   store tier1: ok (identity " + ident in h.ctl("doctor").stdout
