"""The s3 store under the shipped systemd/hsmd.service, in a real systemd 252.

One container (nspawn.py: systemd booted in systemd-nspawn, the repository's unit file
unchanged, a drop-in that only points it at the build under test) runs hsmd with its store
on a fresh bucket of the session's Ceph RADOS Gateway (rgw.py, on 127.0.0.1). The
container has no network of its own (no --private-network): it shares the host's, so the
gateway's 127.0.0.1 is reachable from hsmd if, and only if, the unit's sandbox lets hsmd
open inet sockets. The test checks that it does, that files go up (one in several parts)
and come back with their bytes through recalls, across `systemctl restart`, with the
credentials given each way the README shows (a 0600 credentials_file, LoadCredential=,
EnvironmentFile=) and over https, and that a drop-in restricting the address families to AF_UNIX does
take the store away (so the first checks prove something).

Needs root, systemd-nspawn and debootstrap, and Ceph's daemons (scripts/setup.sh).
"""
import hashlib
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import nspawn  # noqa: E402
from conftest import S3Bucket  # noqa: E402

import boto3  # noqa: E402,F401  (scripts/setup.sh installs it: missing means setup failed, never a skip)

MiB = 1 << 20
CREDS = "/etc/hsmd/s3.credentials"
# Where systemd 252 puts a LoadCredential= of hsmd.service ($CREDENTIALS_DIRECTORY).
LOADED = "/run/credentials/hsmd.service/s3"
FILES = {"small.bin": 4096, "medium.bin": 1 * MiB, "large.bin": 12 * MiB}  # large: 3 parts of 5 MiB


def store_toml(rgw, bucket, credentials):
    return (f'type = "s3"\nendpoint = "{rgw.endpoint}"\nbucket = "{bucket.name}"\nprefix = "{bucket.PREFIX}"\n'
            f'part_size = "5M"\nconnections = 4\n{credentials}')


def write_in_container(sd, path, text):
    """A file only root can read, made inside the container (its /etc is the container's)."""
    sd.container.run(["sh", "-c", f'umask 077 && mkdir -p "$(dirname {path})" && cat > {path}'], input=text)


def recalled_sha256(sd, path):
    """sha256 of `path` read inside the container (hsmd sees the reader's pid)."""
    out = sd.container.run(["sha256sum", str(path)], timeout=120).stdout
    return out.split()[0]


def restart(sd, pid):
    sd.systemctl("daemon-reload")
    sd.systemctl("restart", "hsmd.service", timeout=120)
    new, _ = sd.wait_running(not_pid=pid)
    return new


def test_s3_store_under_the_shipped_unit(rgw):
    bucket = S3Bucket(rgw)
    sd = None
    try:
        sd = nspawn.SystemdHSM(image_size="1G",
                               store_toml=store_toml(rgw, bucket, f'credentials_file = "{CREDS}"\n'))
        sd.boot()
        keys = f"[default]\naws_access_key_id = {rgw.access_key}\naws_secret_access_key = {rgw.secret_key}\n"
        write_in_container(sd, CREDS, keys)
        pid, _ = sd.start()

        # hsmd reached the bucket under the unit's sandbox (its start check put and deleted
        # a probe object), with inet allowed and in the host's network namespace (the
        # container shares it), so the gateway on 127.0.0.1 is the host's.
        doctor = sd.ctl("doctor").stdout
        assert "store tier1: ok" in doctor, doctor
        props = sd.show("RestrictAddressFamilies", "PrivateNetwork")
        assert props["PrivateNetwork"] == "no", props
        assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}, props
        assert sd.container.run(["readlink", f"/proc/{pid}/ns/net"]).stdout.strip() == os.readlink("/proc/self/ns/net")

        # Migrate: each file archived to the bucket and released.
        d = sd.mnt / "data"
        d.mkdir()
        digests = {}
        for name, size in FILES.items():
            data = os.urandom(size)
            (d / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        os.sync()
        sd.ctl("migrate", d)
        objects = {}
        for name in FILES:
            st = sd.status(d / name)
            assert st["state"] == "released", st
            objects[name] = st["object"]
        s3 = bucket.client
        head = s3.head_object(Bucket=bucket.name, Key=bucket.data_key(objects["large.bin"]))
        assert head["ContentLength"] == FILES["large.bin"]
        assert head["ETag"].strip('"').endswith("-3"), f"12 MiB in 5 MiB parts is 3 parts, ETag {head['ETag']}"
        head = s3.head_object(Bucket=bucket.name, Key=bucket.data_key(objects["small.bin"]))
        assert "-" not in head["ETag"], "a small file goes up in one PUT"
        assert s3.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []

        # A read of a released file recalls its bytes from the gateway.
        assert recalled_sha256(sd, d / "large.bin") == digests["large.bin"]

        # systemctl restart: the next hsmd serves the files still released, and one
        # released again.
        pid = restart(sd, pid)
        assert recalled_sha256(sd, d / "small.bin") == digests["small.bin"]
        sd.ctl("release", d / "large.bin")
        assert sd.status(d / "large.bin")["state"] == "released"
        assert recalled_sha256(sd, d / "large.bin") == digests["large.bin"]

        # LoadCredential=: systemd hands hsmd a copy of a file it cannot name itself.
        sd.container.run(["mv", CREDS, "/root/s3.credentials"])
        sd.set_dropin("s3-credentials.conf", "[Service]\nLoadCredential=s3:/root/s3.credentials\n", reload=False)
        sd.config.write_text(sd.config.read_text().replace(f'credentials_file = "{CREDS}"', f'credentials_file = "{LOADED}"'))
        pid = restart(sd, pid)
        # Owner-only, as credentials_file requires.
        assert sd.container.run(["stat", "-c", "%a %U", LOADED]).stdout.split() == ["400", "root"]
        assert recalled_sha256(sd, d / "medium.bin") == digests["medium.bin"]

        # EnvironmentFile= (0600, not Environment=: `systemctl show` prints that to anyone),
        # no credentials in the config.
        write_in_container(sd, "/etc/hsmd/s3.env",
                           f"AWS_ACCESS_KEY_ID={rgw.access_key}\nAWS_SECRET_ACCESS_KEY={rgw.secret_key}\n")
        sd.set_dropin("s3-credentials.conf", "[Service]\nEnvironmentFile=/etc/hsmd/s3.env\n", reload=False)
        sd.config.write_text(sd.config.read_text().replace(f'credentials_file = "{LOADED}"\n', ""))
        assert "credentials_file" not in sd.config.read_text()
        pid = restart(sd, pid)
        sd.ctl("release", d / "medium.bin")
        assert recalled_sha256(sd, d / "medium.bin") == digests["medium.bin"]
        assert rgw.secret_key not in sd.journal(lines=400)

        # https (OpenSSL under the unit's MemoryDenyWriteExecute= and ProtectSystem=), the
        # gateway's certificate checked against the CA given.
        ca = sd.base / "ca.pem"
        ca.write_bytes(Path(rgw.ca_file).read_bytes())
        sd.config.write_text(sd.config.read_text().replace(f'endpoint = "{rgw.endpoint}"',
                                                           f'endpoint = "{rgw.https_endpoint}"\ntls_ca_file = "{ca}"'))
        assert rgw.https_endpoint in sd.config.read_text()
        pid = restart(sd, pid)
        assert "store tier1: ok" in sd.ctl("doctor").stdout
        sd.ctl("release", d / "large.bin")
        assert recalled_sha256(sd, d / "large.bin") == digests["large.bin"]

        # The unit's comment: a drop-in's RestrictAddressFamilies= list is added to the
        # unit's (systemd merges them) unless an empty assignment resets it first. Reset,
        # hsmd cannot open an inet socket: it starts (without hsmd released data would
        # read as zeros) but its store is not usable.
        sd.set_dropin("no-inet.conf", "[Service]\nRestrictAddressFamilies=AF_UNIX\n")
        assert "AF_INET" in sd.show("RestrictAddressFamilies")["RestrictAddressFamilies"]
        sd.set_dropin("no-inet.conf", "[Service]\nRestrictAddressFamilies=\nRestrictAddressFamilies=AF_UNIX\n")
        assert sd.show("RestrictAddressFamilies")["RestrictAddressFamilies"] == "AF_UNIX"
        since = time.time()
        sd.systemctl("restart", "hsmd.service", timeout=120)
        deadline = time.time() + 60
        while True:
            doctor = sd.ctl("doctor", check=False, timeout=10)
            if sd.main_pid() not in (0, pid) and "store tier1:" in doctor.stdout:
                break
            assert time.time() < deadline, f"{doctor.stdout}\n{sd.journal(since=since)}"
            time.sleep(0.2)
        assert "store tier1: ok" not in doctor.stdout, doctor.stdout
        assert "cannot be reached" in sd.journal(since=since), sd.journal(since=since)
    finally:
        try:
            if sd is not None:
                sd.cleanup()
        finally:
            bucket.remove()
