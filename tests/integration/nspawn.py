"""hsmd under a real systemd: a Debian root tree booted with systemd-nspawn.

The root tree (systemd 252 from Debian bookworm, minbase) is built by debootstrap the first
time it is needed and cached under /var/tmp; it is built in a temporary directory and
renamed into place, so a killed build never leaves a half tree behind. Each container boots
it with `--volatile=overlay`, so nothing a test does ever changes the cached tree.

`SystemdHSM` is one managed filesystem (a loop-mounted ext4 made on the host), one store
(posix by default, or the `store_toml` given) and one container whose systemd runs the
repository's own systemd/hsmd.service, unchanged, plus a drop-in that only points it at the
build under test and the test's config. The test's directory is bound into the container
at the same path, so a path means the same file on the host and in the container: programs
on the host read the managed files, and hsmctl on the host reaches hsmd's control socket
there. The container has no network of its own (no --private-network): it shares the
host's, loopback included.

Nothing here imports pytest; the fixtures live in the test modules.
"""
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hsmd.service"
BIN = Path(os.environ.get("HSMD_BIN_DIR", REPO / ".build" / "debug"))

SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libsqlite3-0"]
# Bump the version when PACKAGES or the tree's preparation change: an old cache is then
# simply not used.
ROOT = Path(os.environ.get("HSMD_NSPAWN_ROOT", "/var/tmp/hsmd-nspawn-root-v1"))
# Not under /tmp or /var/tmp: the unit's PrivateTmp=yes hides those from hsmd.
WORK = Path(os.environ.get("HSMD_NSPAWN_WORKDIR", "/srv/hsmd-nspawn-tests"))
# fanotify is outside systemd-nspawn's default seccomp allow-list (fanotify_init fails EPERM
# in a service without it); hsmd's change journal also opens files by handle.
SYSCALLS = "fanotify_init fanotify_mark open_by_handle_at"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# One container at a time on this machine. On a host without systemd, `--keep-unit` puts
# every container's cgroups at the same place of the one cgroup2 hierarchy
# (/payload/system.slice/hsmd.service): two test runs at once then see each other's hsmd
# there, as pid 0, and `systemctl kill` fails "Failed to send signal SIGKILL to auxiliary
# processes: Input/output error". Concurrent runs wait for each other instead.
BOOT_LOCK = Path("/run/lock/hsmd-nspawn.lock")


class HarnessError(Exception):
    pass


# --- the root tree -------------------------------------------------------------------------

def debian_mirror():
    """The Debian mirror apt is configured with (the network may reach nothing else)."""
    if os.environ.get("HSMD_NSPAWN_MIRROR"):
        return os.environ["HSMD_NSPAWN_MIRROR"]
    candidates = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            # deb822: stanzas separated by blank lines, with URIs: and Suites: fields.
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith((" ", "#")):
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.split()
                if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
                    candidates += fields.get("uris", [])
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    candidates.append(words[1])
    for uri in candidates:
        if "security" not in uri:
            return uri
    return "http://deb.debian.org/debian"


def _remove_tree(path):
    """Removes a (possibly half-built) tree, unmounting what a killed debootstrap left
    mounted in it first, and never crossing into another filesystem."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted((m for m in mounts if m == path or m.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def ensure_root(log=print):
    """The cached root tree, built first if missing."""
    if (ROOT / "usr/lib/systemd/systemd").exists():
        return ROOT
    if shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None:
        raise HarnessError("debootstrap and systemd-nspawn are needed: run scripts/setup.sh "
                           "(apt-get install debootstrap systemd-container)")
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{ROOT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ROOT / "usr/lib/systemd/systemd").exists():
            return ROOT
        # We hold the lock: any build directory left is from a build that was killed.
        for stale in glob.glob(f"{ROOT}.build.*"):
            _remove_tree(stale)
        if ROOT.exists():
            _remove_tree(ROOT)  # not a finished tree (renamed in only when complete)
        tmp = tempfile.mkdtemp(prefix=f"{ROOT.name}.build.", dir=ROOT.parent)
        try:
            mirror = debian_mirror()
            log(f"building the systemd-nspawn root tree {ROOT} from {mirror} (once; about a minute)")
            r = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                                SUITE, f"{tmp}/root", mirror], capture_output=True, text=True)
            if r.returncode != 0:
                raise HarnessError(f"debootstrap {SUITE} from {mirror} failed ({r.returncode}):\n"
                                   f"{(r.stdout + r.stderr)[-3000:]}")
            if not Path(f"{tmp}/root/usr/lib/systemd/systemd").exists():
                raise HarnessError(f"debootstrap left no systemd in {tmp}/root")
            os.rename(f"{tmp}/root", ROOT)
        finally:
            _remove_tree(tmp)
    return ROOT


# --- a booted container -------------------------------------------------------------------

class Container:
    """systemd booted by systemd-nspawn; stopped by the nspawn leader's pid."""

    def __init__(self, root, binds, console_log):
        self.root = root
        self.binds = binds
        self.console_log = console_log
        self.proc = None
        self.init_pid = None

    def boot(self, timeout=60):
        cmd = ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
               "--console=pipe", "--volatile=overlay", f"--system-call-filter={SYSCALLS}", *self.binds]
        with open(self.console_log, "ab") as log:
            log.write((" ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + timeout
        # The container's init is the leader's child.
        while self.init_pid is None:
            if self.proc.poll() is not None:
                raise HarnessError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console_text()}")
            if time.time() > deadline:
                raise HarnessError(f"systemd-nspawn started no init in {timeout} s:\n{self.console_text()}")
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                children = []
            for c in children:
                try:
                    if Path(f"/proc/{c}/comm").read_text().strip() == "systemd":
                        self.init_pid = int(c)
                except OSError:
                    pass
            time.sleep(0.05)
        while True:
            r = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                         timeout=max(1, deadline - time.time()))
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if self.proc.poll() is not None or time.time() > deadline:
                raise HarnessError(f"the container's systemd did not finish booting (state {state!r}):\n"
                                   f"{self.console_text()}\n{self.run(['systemctl', '--failed', '--no-pager'], check=False).stdout}")
            time.sleep(0.2)

    ENV = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

    def command(self, cmd):
        """The host command line that runs `cmd` inside the container (all its namespaces)."""
        if self.init_pid is None:
            raise HarnessError("the container is not booted")
        return ["nsenter", "-t", str(self.init_pid), "-a", *cmd]

    def popen(self, cmd):
        """Starts `cmd` inside the container without waiting; output in .stdout (text)."""
        return subprocess.Popen(self.command(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.ENV)

    def run(self, cmd, check=True, timeout=120, input=None):
        """Runs a command inside the container (all of its namespaces)."""
        full = self.command(cmd)
        try:
            r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, env=self.ENV)
        except subprocess.TimeoutExpired as e:
            if check:
                raise HarnessError(f"{' '.join(cmd)} (in the container) did not finish in {timeout} s") from e
            return subprocess.CompletedProcess(full, 124, "", f"timed out after {timeout} s")
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} (in the container) exited {r.returncode}\n"
                               f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def console_text(self):
        try:
            return Path(self.console_log).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def shutdown(self, timeout=30):
        """Powers the container off (SIGTERM to the leader asks init to halt); kills its
        init, which ends every process of the container, if it does not stop in time."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    if self.init_pid is not None and self._init_is_ours():
                        os.kill(self.init_pid, signal.SIGKILL)
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
        finally:
            self.proc = None
            self.init_pid = None

    def _init_is_ours(self):
        try:
            stat = Path(f"/proc/{self.init_pid}/stat").read_text()
        except OSError:
            return False
        # Field 4 (after the parenthesised comm) is the parent pid.
        return int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid


# --- hsmd under systemd ----------------------------------------------------------------------

def swift_runtime_dir(binary):
    """The directory of the Swift runtime libraries `binary` links to (per ldd)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"libswiftCore\.so => (\S+)", line)
        if m:
            return os.path.dirname(os.path.realpath(m.group(1)))
    raise HarnessError(f"ldd finds no libswiftCore.so for {binary}:\n{out}")


class SystemdHSM:
    """One loop-mounted ext4, one store (posix unless store_toml) and hsmd.service in a booted container."""

    def __init__(self, image_size="4G", config_extra="", test_env=None, store_toml=None, log=print):
        self.log = log
        self.mounted = False
        self.container = None
        self.base = None
        self.lock = None
        for b in ("hsmd", "hsmctl"):
            if not (BIN / b).exists():
                raise HarnessError(f"{BIN / b} is missing: build first (swift build) or set HSMD_BIN_DIR")
        self.root = ensure_root(log)
        WORK.mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
        try:
            self._prepare(image_size, config_extra, test_env or {}, store_toml)
        except BaseException:
            self.cleanup()
            raise

    def _prepare(self, image_size, config_extra, test_env, store_toml):
        self.image = self.base / "fs.img"
        self.mnt = self.base / "mnt"
        self.store = self.base / "store"
        self.rundir = self.base / "run"
        self.socket = self.rundir / "hsmd.sock"
        self.bindir = self.base / "bin"
        self.config = self.base / "hsmd.toml"
        self.dropins = self.base / "hsmd.service.d"
        self.readers_dir = self.base / "readers"
        for d in (self.mnt, self.store, self.rundir, self.bindir, self.dropins, self.readers_dir):
            d.mkdir()
        # A copy, so the container runs exactly the build that was under test when it started.
        for b in ("hsmd", "hsmctl"):
            shutil.copy2(BIN / b, self.bindir / b)
        self.hsmd = self.bindir / "hsmd"
        self.hsmctl = self.bindir / "hsmctl"
        subprocess.run(["truncate", "-s", image_size, str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)], check=True)
        self.mounted = True
        # store_toml: the [[store]] keys after name (type and its own keys), in place of
        # the posix store under the test's directory.
        if store_toml is None:
            store_toml = f'type = "posix"\npath = "{self.store}"\n'
        self.config.write_text(
            f'socket = "{self.socket}"\n'
            # The unit's StateDirectory, as in the shipped config.
            'state_dir = "/var/lib/hsmd"\n'
            'log_level = "info"\n'
            f"{config_extra}\n"
            "[[store]]\n"
            'name = "tier1"\n'
            f"{store_toml}"
            "[[filesystem]]\n"
            f'path = "{self.mnt}"\n'
            'store = "tier1"\n')
        env = "".join(f"Environment={k}={v}\n" for k, v in sorted(test_env.items()))
        self.set_dropin("test.conf",
                        "# Test only: run the build under test with the test's config.\n"
                        "[Service]\n"
                        "ExecStartPre=\n"
                        f"ExecStartPre={self.hsmd} --config {self.config} --check-config\n"
                        "ExecStart=\n"
                        f"ExecStart={self.hsmd} --config {self.config}\n"
                        "ExecReload=\n"
                        f"ExecReload={self.hsmd} --config {self.config} --check-config\n"
                        "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'\n"
                        f"{env}",
                        reload=False)

    # --- container and unit ----------------------------------------------------------------

    def boot(self):
        if self.lock is None:
            BOOT_LOCK.parent.mkdir(parents=True, exist_ok=True)
            self.lock = open(BOOT_LOCK, "w")
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.container = Container(self.root, [
            f"--bind={self.base}",
            f"--bind-ro={swift_runtime_dir(self.hsmd)}",
            # The repository's unit file itself, unchanged; drop-ins beside it.
            f"--bind-ro={UNIT}:/etc/systemd/system/hsmd.service",
            f"--bind={self.dropins}:/etc/systemd/system/hsmd.service.d",
        ], self.base / "console.log")
        self.container.boot()
        self.systemctl("enable", "hsmd.service")

    def set_dropin(self, name, text, reload=True):
        """Writes (or with text None removes) a drop-in of hsmd.service; reloads systemd."""
        p = self.dropins / name
        if text is None:
            p.unlink(missing_ok=True)
        else:
            p.write_text(text)
        if reload:
            self.systemctl("daemon-reload")

    def systemctl(self, *args, check=True, timeout=120):
        return self.container.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, *props):
        out = self.systemctl("show", *(f"--property={p}" for p in props), "hsmd.service").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self):
        return int(self.show("MainPID")["MainPID"])

    def restarts(self):
        return int(self.show("NRestarts")["NRestarts"])

    def start(self, timeout=60):
        self.systemctl("start", "hsmd.service", check=False, timeout=timeout)
        return self.wait_running(timeout=timeout)

    def wait_running(self, not_pid=None, timeout=60):
        """Waits until hsmd.service is active (READY=1 sent) with a main pid other than
        `not_pid` and answers hsmctl doctor through the bound socket. Returns the pid and
        the time it was seen ready."""
        deadline = time.time() + timeout
        last = {}
        while time.time() < deadline:
            last = self.show("ActiveState", "SubState", "MainPID", "NRestarts", "Result")
            pid = int(last.get("MainPID", "0"))
            if last.get("ActiveState") == "active" and last.get("SubState") == "running" \
                    and pid not in (0, not_pid) and self.socket.exists() \
                    and self.ctl("doctor", check=False, timeout=10).returncode == 0:
                return pid, time.time()
            time.sleep(0.1)
        raise HarnessError(f"hsmd.service not running with a new main pid after {timeout} s "
                           f"(last: {last}):\n{self.journal()}")

    def journal(self, lines=120, since=None):
        """hsmd.service's journal in the container (the last `lines`, or all since the
        host time `since`: the container shares the host's clock)."""
        window = ["--since", f"@{int(since) - 1}"] if since is not None else ["-n", str(lines)]
        return self.container.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-u", "hsmd.service",
                                   *window], check=False).stdout

    # --- hsmctl from the host ----------------------------------------------------------------

    def ctl(self, *args, check=True, timeout=300):
        cmd = [str(self.hsmctl), *map(str, args)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, HSMD_SOCKET=str(self.socket)))
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess(cmd, 124, "", "timed out")
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}\n"
                               f"hsmd's journal:\n{self.journal(60)}")
        return r

    def status(self, path):
        rows = json.loads(self.ctl("status", "--json", path).stdout)
        if len(rows) != 1:
            raise HarnessError(f"status of {path}: {rows}")
        return rows[0]

    # --- teardown ----------------------------------------------------------------------------

    def cleanup(self):
        try:
            if self.container is not None:
                self.container.shutdown()
        finally:
            if self.mounted:
                for _ in range(50):
                    if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.2)
                else:
                    subprocess.run(["umount", "-l", str(self.mnt)])
                self.mounted = False
            if self.lock is not None:
                self.lock.close()  # lets the next run's container boot
                self.lock = None
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
            try:
                WORK.rmdir()  # only if no other run's directory is left
            except OSError:
                pass
