"""Executing a released file works on this kernel: exec raises pre-access events with
usable fds (the kernel skips write denial on exec for files with pre-content watches),
so hsmd recalls what the loader reads."""
import shutil
import subprocess

import pytest

from conftest import drop_caches, sha256


def _released_copy(hsm, source, name):
    dest = hsm.mnt / "bin" / name
    dest.parent.mkdir(exist_ok=True)
    shutil.copy2(source, dest)
    digest = sha256(dest)
    hsm.migrate(dest)
    assert hsm.status(dest)["offline_bytes"] > 0
    drop_caches()
    return dest, digest


@pytest.mark.parametrize("source, args, expected", [
    ("/bin/true", [], ""),
    ("/usr/bin/env", ["echo", "hello from env"], "hello from env\n"),
    # Several recall blocks (1 MiB each): the loader maps and reads them piecemeal.
    ("/usr/bin/perl", ["-e", "print 6 * 7, qq(\\n)"], "42\n"),
])
def test_a_released_binary_runs(hsm, source, args, expected):
    exe, digest = _released_copy(hsm, source, source.rsplit("/", 1)[1])
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    assert r.stdout == expected
    assert sha256(exe) == digest
    assert hsm.state(exe) in ("partial", "archived")


def test_a_released_script_with_a_shebang_runs(hsm):
    script, _ = hsm.write("bin/hello.sh", data=b"#!/bin/sh\necho \"hello $1\"\n")
    script.chmod(0o755)
    hsm.migrate(script)
    drop_caches()
    r = subprocess.run([str(script), "world"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "hello world\n"), r


def test_a_released_binary_runs_while_another_copy_of_it_is_running(hsm):
    exe, digest = _released_copy(hsm, "/usr/bin/perl", "perl")
    first = subprocess.Popen([str(exe), "-e", "sleep 2; print qq(first\\n)"], stdout=subprocess.PIPE, text=True)
    second = subprocess.run([str(exe), "-e", "print qq(second\\n)"], capture_output=True, text=True, timeout=60)
    out, _ = first.communicate(timeout=60)
    assert (first.returncode, out) == (0, "first\n")
    assert (second.returncode, second.stdout) == (0, "second\n"), second
    assert sha256(exe) == digest
