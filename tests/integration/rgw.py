"""A real S3 server for the tests: a single-node Ceph cluster (one monitor, one OSD on
bluestore over a sparse file, pool size 1) and a RADOS Gateway bound to 127.0.0.1, all of
it kept in one folder under /var/tmp.

Every daemon runs in the foreground under its own session; its pid is kept, and `stop`
ends exactly those pids and removes the folder, also when the start failed half way.
Nothing is written to /etc/ceph or /var/lib/ceph. Install the daemons with
scripts/setup.sh (ceph-mon, ceph-osd, radosgw, ceph-common).

    with RGWCluster.running() as rgw:
        rgw.endpoint, rgw.access_key, rgw.secret_key
        rgw.https_endpoint, rgw.ca_file   # the same gateway over TLS, and the CA that signed it

The gateway also listens with TLS on a second port, with a certificate for 127.0.0.1 (not
for localhost) signed by a CA made here with `openssl` (tls/ca.pem in the folder).
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import urllib.error
import urllib.request
from pathlib import Path

BINARIES = ["ceph-mon", "ceph-osd", "radosgw", "ceph-authtool", "monmaptool", "ceph", "radosgw-admin"]
START_TIMEOUT = float(os.environ.get("HSMD_RGW_START_TIMEOUT", "180"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class RGWCluster:
    def __init__(self, parent="/var/tmp"):
        self.dir = Path(tempfile.mkdtemp(prefix="hsmd-rgw-", dir=parent))
        self.conf = self.dir / "ceph.conf"
        self.env = dict(os.environ, CEPH_CONF=str(self.conf))
        self.pids = {}  # daemon name -> pid
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.rgw_tls_port = free_port()
        self.https_endpoint = f"https://127.0.0.1:{self.rgw_tls_port}"
        self.ca_file = self.dir / "tls" / "ca.pem"
        self.access_key = "HSMDTEST" + uuid.uuid4().hex[:12].upper()
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]

    @classmethod
    @contextlib.contextmanager
    def running(cls, parent="/var/tmp"):
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise RuntimeError(f"the S3 tests need Ceph's daemons; missing {', '.join(missing)}: run scripts/setup.sh")
        cluster = cls(parent)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()

    # ------------------------------------------------------------------ start

    def _run(self, *args, timeout=60):
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout

    def _spawn(self, name, *args):
        out = open(self.dir / "log" / f"{name}.out", "wb")
        # Own session, no inherited fds, stdin from /dev/null: nothing of ours keeps a
        # pipe open or gets its signals.
        p = subprocess.Popen(list(args), env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)
        out.close()
        self.pids[name] = p
        (self.dir / "run" / f"{name}.pid").write_text(f"{p.pid}\n")
        return p

    def _write_conf(self, fsid):
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
log file = {d}/log/$cluster-$name.log
crash dir = {d}/crash
keyring = {d}/keyring/$cluster.$name.keyring
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = {d}/mon/$cluster-$id
keyring = $mon_data/keyring

[osd]
osd data = {d}/osd/$cluster-$id
keyring = $osd_data/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {int(os.environ.get("CEPH_OSD_SIZE", 10 << 30))}
osd memory target = 1073741824

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port} ssl_endpoint=127.0.0.1:{self.rgw_tls_port} ssl_certificate={d}/tls/server.pem ssl_private_key={d}/tls/server.key tcp_nodelay=1
rgw data = {d}/rgw/$cluster-$id
rgw thread pool size = 64
rgw gc obj min wait = 60
rgw gc processor period = 60
""")

    def _make_tls(self):
        """A CA, and a server certificate it signs for 127.0.0.1 only (so a test can reach the
        same gateway by a name the certificate does not carry: localhost)."""
        t = self.dir / "tls"
        self._run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hsmd test CA",
                  "-keyout", str(t / "ca.key"), "-out", str(self.ca_file))
        (t / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n")
        self._run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                  "-keyout", str(t / "server.key"), "-out", str(t / "server.csr"))
        self._run("openssl", "x509", "-req", "-in", str(t / "server.csr"), "-CA", str(self.ca_file), "-CAkey", str(t / "ca.key"),
                  "-CAcreateserial", "-days", "2", "-extfile", str(t / "ext.cnf"), "-out", str(t / "server.pem"))

    def start(self):
        d = self.dir
        for sub in ["run", "log", "crash", "keyring", "mon/ceph-a", "osd/ceph-0", "rgw/ceph-rgw.a", "tls"]:
            (d / sub).mkdir(parents=True, exist_ok=True)
        self._make_tls()
        fsid = str(uuid.uuid4())
        self._write_conf(fsid)
        # Every key first, all imported into the monitor's keyring before --mkfs, so no
        # `ceph auth add` is needed. The initial keyring stays outside the mon's data dir.
        init = d / "keyring" / "mon-init.keyring"
        keys = {
            "mon.": (init, ["--cap", "mon", "allow *"]),
            "client.admin": (d / "keyring" / "ceph.client.admin.keyring",
                             ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]),
            "client.rgw.a": (d / "keyring" / "ceph.client.rgw.a.keyring", ["--cap", "mon", "allow rw", "--cap", "osd", "allow rwx"]),
            "osd.0": (d / "osd" / "ceph-0" / "keyring",
                      ["--cap", "mon", "allow profile osd", "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd"]),
        }
        for name, (path, caps) in keys.items():
            self._run("ceph-authtool", str(path), "--create-keyring", "--gen-key", "-n", name, *caps)
            if path != init:
                self._run("ceph-authtool", str(init), "--import-keyring", str(path))
        monmap = d / "monmap"
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap))
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(init))
        self._spawn("mon", "ceph-mon", "-f", "-c", str(self.conf), "-i", "a")
        deadline = time.monotonic() + START_TIMEOUT
        self._wait(lambda: self._quiet("ceph", "-s", "--connect-timeout", "5"), deadline, "the monitor answering")
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "osd", "new", osd_uuid, "0")
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._spawn("osd", "ceph-osd", "-f", "-c", str(self.conf), "-i", "0")
        for port in (self.rgw_port, self.rgw_tls_port):
            if port_in_use(port):
                raise RuntimeError(f"port {port} was taken before radosgw could bind it")
        self._spawn("rgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a")
        self._wait(self._rgw_answers, deadline, "radosgw answering S3")
        self._run("radosgw-admin", "user", "create", "--uid", "test", "--display-name", "hsmd tests",
                  "--access-key", self.access_key, "--secret-key", self.secret_key, timeout=120)
        (d / "s3user.json").write_text(json.dumps({"access_key": self.access_key, "secret_key": self.secret_key}))
        os.chmod(d / "s3user.json", 0o600)

    def _quiet(self, *args):
        try:
            return subprocess.run(list(args), env=self.env, capture_output=True, timeout=15,
                                  stdin=subprocess.DEVNULL).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _rgw_answers(self):
        # Only an S3 answer counts (it carries x-amz-request-id), whatever its status.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=5) as r:
                return r.headers.get("x-amz-request-id") is not None
        except urllib.error.HTTPError as e:
            return e.headers.get("x-amz-request-id") is not None
        except OSError:
            return False

    def _wait(self, ready, deadline, what):
        while time.monotonic() < deadline:
            for name, p in self.pids.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ceph {name} exited ({p.returncode}) before {what}: "
                                       f"{self.tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {START_TIMEOUT:.0f} s waiting for {what}")

    def tail(self, name, n=2000):
        try:
            return (self.dir / "log" / f"{name}.out").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ use

    def admin(self, *args):
        """radosgw-admin with the cluster's config; its stdout."""
        return self._run("radosgw-admin", *args, timeout=120)

    def stop_rgw(self):
        self._stop("rgw")

    def kill_rgw(self):
        """The gateway dies at once (SIGKILL): connections in flight break mid-answer."""
        p = self.pids.pop("rgw", None)
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)

    def start_rgw(self):
        self._spawn("rgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a")
        self._wait(self._rgw_answers, time.monotonic() + START_TIMEOUT, "radosgw answering S3 again")

    # ------------------------------------------------------------------ stop

    def _stop(self, name, grace=20):
        p = self.pids.pop(name, None)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)

    def stop(self):
        # The gateway first, then the OSD, the monitor last: each by the pid we started.
        try:
            for name in ["rgw", "osd", "mon"]:
                self._stop(name)
            for name in list(self.pids):
                self._stop(name)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    # By hand: start a cluster, print how to reach it, stop it on Enter.
    with RGWCluster.running() as c:
        print(json.dumps({"endpoint": c.endpoint, "https_endpoint": c.https_endpoint, "ca_file": str(c.ca_file), "access_key": c.access_key, "secret_key": c.secret_key, "dir": str(c.dir)}))
        input("running; Enter stops it\n")
