"""Readers that raise no pre-content event: loop devices (losetup, mount -o loop) read an
image through the block layer, qemu-img and qemu map its holes with lseek(SEEK_DATA). They
get the whole file back at open (full_recall_programs), and a loop device's file cannot be
released under it. Every loop device made here is detached and every mount unmounted, also
when a test fails."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import drop_caches, managed_filesystem, sha256

MiB = 1 << 20

def require_qemu_img():
    # Not a skip: on a machine set up by scripts/setup.sh these tests must run.
    assert shutil.which("qemu-img"), "qemu-img is missing: run scripts/setup.sh (it installs qemu-utils)"


@pytest.fixture(params=["ext4", "xfs", "btrfs"])
def managed(request):
    """A running hsmd on a fresh ext4, xfs or btrfs filesystem."""
    with managed_filesystem(start=True, fstype=request.param) as h:
        yield h


def run(*argv):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} exited {r.returncode}: {r.stderr}"
    return r.stdout.strip()


@contextlib.contextmanager
def loop_device(path, *options):
    """`losetup -f --show [options] path`; the device is detached however the block ends."""
    dev = run("losetup", *options, "-f", "--show", path)
    try:
        yield dev
    finally:
        for _ in range(50):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"could not detach {dev}")


@contextlib.contextmanager
def loop_mount(image, where, options="loop"):
    """`mount -o options image where`; unmounted however the block ends."""
    where.mkdir(exist_ok=True)
    run("mount", "-o", options, image, where)
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(where)])
            raise AssertionError(f"could not unmount {where}")


def device_sha256(dev):
    """Reads the whole block device, past the page cache (it must come from the file)."""
    run("blockdev", "--flushbufs", dev)
    return sha256(dev)


def released_image(hsm, name="disk.img", size=24 * MiB):
    p, digest = hsm.write(name, size=size)
    hsm.migrate(p)
    drop_caches()
    return p, digest


@pytest.mark.parametrize("options", [[], ["-r"], ["--direct-io=on"]], ids=["rw", "read-only", "direct-io"])
def test_a_loop_device_over_a_released_image_reads_its_bytes(managed, options):
    hsm = managed
    p, digest = released_image(hsm)
    with loop_device(p, *options) as dev:
        # losetup's open waited while the whole file came back: the block layer raises no
        # event, so a hole still there would read as zeros through the device.
        assert device_sha256(dev) == digest
        # Its marker is written right after the answer (a loop device holds its file
        # open for as long as it exists: only archivers wait for the close).
        hsm.wait_for_state(p, "archived")
    assert hsm.wait_for_log("losetup (pid", "recalling all of it first")
    assert sha256(p) == digest


def test_mount_o_loop_of_a_released_ext4_image_reads_the_files_inside(hsm):
    image = hsm.mnt / "fs.img"
    run("truncate", "-s", "64M", image)
    run("mkfs.ext4", "-q", "-F", image)
    inside = {}
    with loop_mount(image, hsm.base / "inner"):
        for i, size in enumerate([5 * MiB, 123_457, 1]):
            data = os.urandom(size)
            (hsm.base / "inner" / f"f{i}").write_bytes(data)
            inside[f"f{i}"] = data
        (hsm.base / "inner" / "dir").mkdir()
        (hsm.base / "inner" / "dir" / "note").write_text("hello\n")
    hsm.migrate(image)
    drop_caches()
    with loop_mount(image, hsm.base / "inner", "loop,ro") as inner:
        for name, data in inside.items():
            assert (inner / name).read_bytes() == data, name
        assert (inner / "dir" / "note").read_text() == "hello\n"
    assert hsm.wait_for_log("mount (pid", "recalling all of it first")
    # And read-write, after releasing it again: the mount writes to the image.
    hsm.migrate(image)
    drop_caches()
    with loop_mount(image, hsm.base / "inner") as inner:
        for name, data in inside.items():
            assert (inner / name).read_bytes() == data, name
        run("fsck.ext4", "-n", run("findmnt", "-n", "-o", "SOURCE", inner))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_img_convert_of_a_released_image_equals_the_original(managed, fmt):
    require_qemu_img()
    hsm = managed
    # Data with a real hole in the middle too, which must stay zeros.
    data = os.urandom(8 * MiB) + b"\0" * (4 * MiB) + os.urandom(8 * MiB)
    p, digest = hsm.write("disk.img", data=data)
    hsm.migrate(p)
    drop_caches()
    out = hsm.base / f"out.{fmt}"  # not on the managed filesystem
    run("qemu-img", "convert", "-f", "raw", "-O", fmt, p, out)
    back = hsm.base / "back.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", out, back)
    assert sha256(back) == digest
    assert hsm.wait_for_log("qemu-img (pid", "recalling all of it first")
    # compare reads both: the released original (recalled now) and the copy.
    hsm.migrate(p)
    drop_caches()
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt, p, out], capture_output=True, text=True)
    assert r.returncode == 0 and "identical" in r.stdout, (r.stdout, r.stderr)


def test_qemu_nbd_serves_a_released_image_whole(hsm):
    require_qemu_img()
    p, digest = released_image(hsm)
    sock, pidfile = hsm.base / "nbd.sock", hsm.base / "nbd.pid"
    run("qemu-nbd", "--fork", "--persistent", "-r", "-f", "raw", f"--socket={sock}", f"--pid-file={pidfile}", p)
    pid = int(pidfile.read_text())
    try:
        out = hsm.base / "out.raw"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///?socket={sock}", out)
        assert sha256(out) == digest
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
    assert hsm.wait_for_log("qemu-nbd (pid", "recalling all of it first")


def test_a_program_matching_a_prefix_pattern_gets_the_whole_file(hsm):
    # The kernel cuts qemu-system-x86_64 to "qemu-system-x86"; the default "qemu-system-*"
    # must match it. A stand-in process with that name asks where the data is, as qemu does.
    p, digest = released_image(hsm, size=3 * MiB)
    probe = (
        "import ctypes, os, sys\n"
        "ctypes.CDLL(None).prctl(15, b'qemu-system-x86', 0, 0, 0)\n"  # PR_SET_NAME
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n"
        "    print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE))\n"
        "except OSError as e:\n"
        "    print('error', e.errno)\n"
    )
    out = run(sys.executable, "-c", probe, p)
    assert out == f"0 {3 * MiB}", out  # all data, no hole (ENXIO = 6 while released)
    hsm.wait_for_state(p, "archived")
    assert hsm.wait_for_log("qemu-system-x86 (pid", "recalling all of it first")
    assert sha256(p) == digest


@pytest.mark.parametrize("options", [[], ["-r"]], ids=["rw", "read-only"])
@pytest.mark.parametrize("released_first", [False, True], ids=["resident", "released"])
def test_a_file_held_by_a_loop_device_cannot_be_released(hsm, options, released_first):
    # A loop device keeps its file open: the write lease release needs is refused, so no
    # hole is ever punched under a device that would read it as zeros.
    p, digest = hsm.write("disk.img", size=16 * MiB)
    hsm.ctl("archive", p)
    if released_first:
        hsm.ctl("release", p)
        drop_caches()
    with loop_device(p, *options) as dev:
        hsm.wait_for_state(p, "archived")
        r = hsm.ctl("release", p, check=False)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "busy" in r.stderr, r.stderr
        assert hsm.state(p) == "archived"
        drop_caches()
        assert device_sha256(dev) == digest
    # Detached, it can go.
    hsm.ctl("release", p)
    assert hsm.state(p) == "released"


def test_doctor_lists_the_full_recall_programs(hsm):
    r = hsm.ctl("doctor")
    lines = [l for l in r.stdout.splitlines() if "whole-file recall at open" in l]
    assert len(lines) == 1, r.stdout
    assert lines[0].startswith("ok "), lines
    for name in ["cp", "tar", "losetup", "mount", "qemu-img", "qemu-nbd", "qemu-system-*"]:
        assert f" {name} " in lines[0] + " ", (name, lines[0])
    hsm.stop()
    hsm.write_config(extra='full_recall_programs = ["myprog", "qemu-*"]')
    hsm.start()
    r = hsm.ctl("doctor")
    assert "whole-file recall at open for: myprog qemu-* (full_recall_programs)" in r.stdout, r.stdout
    hsm.stop()
    hsm.write_config(extra="full_recall_programs = []")
    hsm.start()
    r = hsm.ctl("doctor")  # a warning, not a failure: the exit code stays 0
    assert "warn whole-file recall at open: none" in r.stdout, r.stdout
