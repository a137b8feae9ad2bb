"""hsmd speaks the sd_notify protocol when NOTIFY_SOCKET is set."""
import os
import signal
import socket
import subprocess
import time

from conftest import HSMD


def _collect(sock, until, timeout):
    got = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            continue
        got.append(msg)
        if until in msg:
            break
    return got


def test_ready_watchdog_and_stopping_are_sent(hsm_stopped):
    hsm = hsm_stopped
    path = str(hsm.base / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([str(HSMD), "--config", str(hsm.config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        messages = _collect(sock, "READY=1", 20)
        assert any("READY=1" in m for m in messages), messages
        messages = _collect(sock, "WATCHDOG=1", 5)
        assert any("WATCHDOG=1" in m for m in messages), messages
        proc.send_signal(signal.SIGTERM)
        messages = _collect(sock, "STOPPING=1", 10)
        assert any("STOPPING=1" in m for m in messages), messages
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_the_watchdog_is_pinged_while_hsmd_is_idle(hsm_stopped):
    """An event loop waiting for events is alive: the pings go on after a long idle time
    (they used to stop 10 s after the last batch, and systemd then killed an idle hsmd)."""
    hsm = hsm_stopped
    path = str(hsm.base / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([str(HSMD), "--config", str(hsm.config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert any("READY=1" in m for m in _collect(sock, "READY=1", 20))
        time.sleep(12)
        # Only what arrives from now on counts.
        while True:
            try:
                sock.recv(4096)
            except socket.timeout:
                break
        late = _collect(sock, "never", 2)
        assert sum("WATCHDOG=1" in m for m in late) >= 2, late
    finally:
        proc.kill()
        proc.wait()
        sock.close()


def test_systemd_units_verify():
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True).stdout.strip()
    root = os.path.join(os.path.dirname(__file__), "..", "..", "systemd")
    units = [os.path.join(root, u) for u in ("hsmd.service", "hsm-migrate.service", "hsm-migrate.timer")]
    for u in units:
        text = open(u).read()
        assert "[Unit]" in text
    service = open(units[0]).read()
    for key in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "CAP_SYS_ADMIN"):
        assert key in service, key
    assert "OnCalendar=" in open(units[2]).read()
    if analyze:
        # Unknown keys or sections are errors here; missing binaries are not our concern.
        r = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
        bad = [l for l in r.stderr.splitlines() if "Unknown" in l or "Invalid" in l or "Failed to parse" in l]
        assert not bad, r.stderr
