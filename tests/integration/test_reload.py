"""Config reload (SIGHUP, what `systemctl reload hsmd` sends): reloadable keys take effect
without a restart and without dropping anything in flight; a change that needs a restart,
or a config that does not parse, is refused with a log line and the old config stays."""
import hashlib
import json
import os
import signal
import subprocess
import time

from conftest import HSMD


def config_text(h, log_level="debug", extra="", extra_fs="", state_dir=None, extra_store=""):
    return (f'socket = "{h.socket}"\n'
            f'state_dir = "{state_dir or h.state_dir}"\n'
            f'log_level = "{log_level}"\n'
            f"{extra}\n"
            "[[store]]\n"
            'name = "tier1"\n'
            'type = "posix"\n'
            f'path = "{h.store}"\n'
            f"{extra_store}"
            "[[filesystem]]\n"
            f'path = "{h.mnt}"\n'
            'store = "tier1"\n'
            f"{extra_fs}")


def reload(h, text, expect):
    """Writes the config, sends SIGHUP to the hsmd this test started, and waits for the
    log line that answers it (the nth such line, so earlier reloads do not count)."""
    before = h.log_text().count(expect)
    h.config.write_text(text)
    os.kill(h.proc.pid, signal.SIGHUP)
    deadline = time.time() + 20
    while time.time() < deadline:
        if h.log_text().count(expect) > before:
            return
        assert h.proc.poll() is None, f"hsmd exited at SIGHUP:\n{h.log_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no {expect!r} in hsmd's log after SIGHUP:\n{h.log_text()[-3000:]}")


def reads_one_byte(path):
    """Opens the file as python3 (its /proc comm) and reads one byte."""
    subprocess.run(["python3", "-c", f"open({str(path)!r}, 'rb').read(1)"], check=True)


def test_log_level_reload(hsm_stopped):
    h = hsm_stopped
    h.start()
    h.ctl("status", h.mnt)
    assert "status requested" in h.log_text()  # a debug line
    reload(h, config_text(h, log_level="notice"), "config reloaded")
    assert "changed log_level" in h.log_text()
    mark = len(h.log_text())
    h.ctl("status", h.mnt)
    path, _ = h.write("a.bin", 8192)
    h.ctl("archive", path)  # an info line at debug and info
    assert h.ctl("metrics").returncode == 0
    after = h.log_text()[mark:]
    assert "status requested" not in after and "archive requested" not in after, after
    reload(h, config_text(h, log_level="debug"), "config reloaded")
    mark = len(h.log_text())
    h.ctl("status", h.mnt)
    assert h.wait_for_log("status requested") and "status requested" in h.log_text()[mark:]


def test_full_recall_programs_reload_without_dropping_a_recall_in_flight(hsm_stopped):
    h = hsm_stopped
    h.write_config(extra="full_recall_programs = []")
    # A slow store: a recall is in flight while the reload happens.
    h.start(env={"HSMD_TEST_STORE_DELAY_MS": "1500"})
    size = 8 * 1024 * 1024
    first, _ = h.write("first.bin", size)
    second, _ = h.write("second.bin", size)
    slow, slow_digest = h.write("slow.bin", size)
    for p in (first, second, slow):
        h.migrate(p)
    # Without python3 in the list, one byte read recalls only what it needs (its pages: the
    # block stays offline).
    reads_one_byte(first)
    assert h.status(first)["offline_bytes"] > 0, h.status(first)

    reader = subprocess.Popen(["sha256sum", str(slow)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not json.loads(h.ctl("queue", "--json").stdout)["recalls"]:
            assert time.time() < deadline, "the slow recall never showed in hsmctl queue"
            time.sleep(0.05)
        reload(h, config_text(h, extra='full_recall_programs = ["python3"]'), "config reloaded")
        assert "changed full_recall_programs" in h.log_text()
        out, _ = reader.communicate(timeout=120)
        assert reader.returncode == 0 and out.split()[0] == slow_digest
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert "the access fails" not in h.log_text()
    # Now an open by python3 brings the whole file back first.
    reads_one_byte(second)
    row = h.status(second)
    assert row["offline_bytes"] == 0 and row["state"] == "archived", row
    doctor = h.ctl("doctor").stdout
    assert "whole-file recall at open for: python3" in doctor


def test_change_that_needs_a_restart_is_refused(hsm_stopped, tmp_path):
    h = hsm_stopped
    h.start()
    other_store = tmp_path / "store2"
    other_store.mkdir()
    cases = [
        (config_text(h, log_level="notice", state_dir=tmp_path / "state2"), "state_dir changed"),
        (config_text(h, log_level="notice", extra_store=f'[[store]]\nname = "tier2"\ntype = "posix"\npath = "{other_store}"\n'),
         '[[store]] changed (store "tier2" added)'),
        (config_text(h, log_level="notice", extra='metrics_listen = "127.0.0.1:9"'), "metrics_listen changed"),
        (config_text(h, log_level="notice", extra="recall_threads = 7"), "recall_threads changed"),
    ]
    for text, needle in cases:
        reload(h, text, "config reload refused")
        line = [l for l in h.log_text().splitlines() if "config reload refused" in l][-1]
        assert needle in line and "needs a restart" in line and "the running config stays in force" in line, line
    # The log_level change that came with them was not applied either.
    mark = len(h.log_text())
    h.ctl("status", h.mnt)
    assert h.wait_for_log("status requested") and "status requested" in h.log_text()[mark:]
    s = h.ctl("metrics").stdout
    assert 'hsmd_config_reloads_total{result="refused"} 4' in s


def test_removed_filesystem_is_refused(hsm_stopped):
    h = hsm_stopped
    h.start()
    text = (f'socket = "{h.socket}"\nstate_dir = "{h.state_dir}"\nlog_level = "debug"\n'
            f'[[store]]\nname = "tier1"\ntype = "posix"\npath = "{h.store}"\n')
    reload(h, text, "config reload refused")
    line = [l for l in h.log_text().splitlines() if "config reload refused" in l][-1]
    assert f"[[filesystem]] changed (filesystem {h.mnt} removed)" in line, line
    # Still managing it: a released file recalls.
    path, digest = h.write("still.bin", 100000)
    h.migrate(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_bad_config_on_reload_is_refused_with_the_parse_error(hsm_stopped):
    h = hsm_stopped
    h.start()
    reload(h, "log_level = \n[[store\n", "config reload refused")
    line = [l for l in h.log_text().splitlines() if "config reload refused" in l][-1]
    assert "TOML syntax error at line" in line and "the running config stays in force" in line, line
    reload(h, config_text(h, log_level="debug", extra="recall_timeout = \"never\""), "config reload refused")
    line = [l for l in h.log_text().splitlines() if "config reload refused" in l][-1]
    assert "recall_timeout" in line, line
    assert h.ctl("doctor").returncode == 0
    # A good config afterwards is taken.
    reload(h, config_text(h, extra='recall_timeout = "30s"'), "config reloaded")
    assert "changed recall_timeout" in h.log_text()


def test_unchanged_config_reload_says_so(hsm_stopped):
    h = hsm_stopped
    h.start()
    reload(h, h.config.read_text(), "config reloaded")
    assert "nothing changed" in h.log_text()


def test_log_level_from_the_command_line_wins_at_reload(hsm_stopped):
    h = hsm_stopped
    h.start(wrapper=())  # plain start first, to reuse the harness's checks
    h.stop()
    # Started with --log-level debug: a reload to "error" keeps debug.
    h.logfile = open(h.log, "ab")
    h.proc = subprocess.Popen([str(HSMD), "--config", str(h.config), "--log-level", "debug"],
                              stdout=h.logfile, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while h.ctl("doctor", check=False).returncode != 0:
        assert time.time() < deadline and h.proc.poll() is None, h.log_text()
        time.sleep(0.1)
    reload(h, config_text(h, log_level="error"), "config reloaded")
    assert "log_level stays debug (set by --log-level)" in h.log_text()
    mark = len(h.log_text())
    h.ctl("status", h.mnt)
    assert h.wait_for_log("status requested") and "status requested" in h.log_text()[mark:]


def test_systemctl_reload_under_real_systemd():
    """systemctl reload hsmd in a booted container running the repository's unit: a good
    change is applied by the same process; a config that does not parse fails the reload
    (ExecReload's --check-config) and hsmd keeps running with its config. The unit's
    sandbox lets the metrics listener serve (the container shares the host's network)."""
    import nspawn
    import urllib.request
    from test_metrics import check_with_promtool, free_port
    unit = nspawn.UNIT.read_text()
    assert "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'" in unit
    port = free_port()
    sd = nspawn.SystemdHSM(image_size="1G", config_extra=f'metrics_listen = "127.0.0.1:{port}"')
    try:
        sd.boot()
        pid, _ = sd.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            check_with_promtool(r.read().decode())
        good = sd.config.read_text().replace('log_level = "info"', 'log_level = "debug"\nfull_recall_programs = ["python3"]')
        assert good != sd.config.read_text()
        sd.config.write_text(good)
        sd.systemctl("reload", "hsmd.service")
        deadline = time.time() + 20
        while "config reloaded" not in sd.journal():
            assert time.time() < deadline, sd.journal()
            time.sleep(0.1)
        assert "changed log_level, full_recall_programs" in sd.journal()
        assert sd.main_pid() == pid
        assert "whole-file recall at open for: python3" in sd.ctl("doctor").stdout
        sd.config.write_text("log_level = \n")
        r = sd.systemctl("reload", "hsmd.service", check=False)
        assert r.returncode != 0
        assert sd.main_pid() == pid and sd.show("ActiveState")["ActiveState"] == "active"
        assert sd.ctl("doctor").returncode == 0
        assert 'hsmd_config_reloads_total{result="applied"} 1' in sd.ctl("metrics").stdout
    finally:
        sd.cleanup()


def test_policies_and_watermarks_reload(hsm_stopped):
    """A changed [[policy]] and a filesystem's new watermarks are taken at a reload (the
    filesystem itself did not change, so this is no restart-only change)."""
    h = hsm_stopped
    policy = lambda age: f'[[policy]]\nname = "cold"\nolder_than = "{age}"\n'
    h.config.write_text(config_text(h, extra=policy("30d")))
    h.start()
    out = h.ctl("migrate", "--policy", "cold", "--dry-run", str(h.mnt)).stdout
    assert "policy cold: older than 30d" in out, out
    reload(h, config_text(h, extra=policy("2d") + '[[policy]]\nname = "big"\nmin_size = "1M"\n',
                          extra_fs="high_watermark = 95\nlow_watermark = 90\n"), "config reloaded")
    line = [l for l in h.log_text().splitlines() if "config reloaded" in l][-1]
    assert "[[policy]]" in line and "[[filesystem]] watermarks" in line, line
    out = h.ctl("migrate", "--policy", "cold", "--dry-run", str(h.mnt)).stdout
    assert "policy cold: older than 2d" in out, out
    assert h.ctl("migrate", "--policy", "big", "--dry-run", str(h.mnt)).returncode == 0
    doctor = h.ctl("doctor").stdout
    assert "high 95%" in doctor or "95%" in doctor, doctor
