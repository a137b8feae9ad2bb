"""Files of a managed filesystem reached through a mount hsmd cannot write through: an
overlayfs lower layer (container images), a read-only bind mount, a second mount of the
same device made read-only (per mount, or for the whole filesystem).

The kernel opens each event's fd on the mount the program used; hsmd's event fds are
read-only (a read-write one cannot be opened on a read-only mount: the open then fails with
EPERM, resident files too), and recall writes through the file opened by handle on hsmd's
own private mount of the filesystem (docs/ARCHITECTURE.md, "An event's life")."""
import errno
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import drop_caches, sha256

MiB = 1 << 20


class Mounts:
    """Mounts made by one test, unmounted in reverse order (always, see `close`)."""

    def __init__(self):
        self.points = []

    def mount(self, *args):
        subprocess.run(["mount", *map(str, args)], check=True, capture_output=True)
        self.points.append(Path(args[-1]))
        return Path(args[-1])

    def close(self):
        for p in reversed(self.points):
            for _ in range(50):
                if subprocess.run(["umount", str(p)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(p)])
        self.points = []


@pytest.fixture
def mounts():
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


def read_all(path):
    """The file's bytes, or the errno name reading it failed with."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def digest(data):
    assert isinstance(data, bytes), f"read failed with {data}"
    return hashlib.sha256(data).hexdigest()


def device_of(mnt):
    return subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], check=True,
                          capture_output=True, text=True).stdout.strip()


def released_and_resident(hsm, sub="lower"):
    """A released 3 MiB file and a resident one under mnt/sub; (name, sha256) of each."""
    released, rel_sum = hsm.write(f"{sub}/released.bin", size=3 * MiB + 1234)
    hsm.migrate(released)
    resident, res_sum = hsm.write(f"{sub}/resident.bin", size=200_000)
    drop_caches()
    return {"released.bin": rel_sum, "resident.bin": res_sum}


def assert_no_fd_failures(hsm):
    assert "without a file" not in hsm.log_text(), hsm.log_text()[-3000:]


def overlay(hsm, mounts, upper_on_managed):
    """An overlay whose lower layer is mnt/lower; upper and work on a tmpfs of the test's
    own, or in a directory of the managed filesystem itself."""
    if upper_on_managed:
        top = hsm.mnt / "layers"
        top.mkdir()
    else:
        (hsm.base / "tmp").mkdir()
        top = mounts.mount("-t", "tmpfs", "tmpfs", hsm.base / "tmp")
    for d in ("upper", "work"):
        (top / d).mkdir()
    merged = hsm.base / "merged"
    merged.mkdir()
    mounts.mount("-t", "overlay", "overlay", "-o",
                 f"lowerdir={hsm.mnt / 'lower'},upperdir={top / 'upper'},workdir={top / 'work'}", merged)
    return merged, top / "upper"


@pytest.mark.parametrize("upper_on_managed", [False, True], ids=["upper-on-tmpfs", "upper-on-the-managed-fs"])
def test_overlay_lower_layer_reads_released_and_resident_files(hsm, mounts, upper_on_managed):
    sums = released_and_resident(hsm)
    merged, _ = overlay(hsm, mounts, upper_on_managed)
    for name, want in sums.items():
        assert digest(read_all(merged / name)) == want, name
    # The recall went to the managed filesystem itself, durably: the host reads the same.
    drop_caches()
    assert sha256(hsm.mnt / "lower/released.bin") == sums["released.bin"]
    assert hsm.status(hsm.mnt / "lower/released.bin")["offline_bytes"] == 0
    assert_no_fd_failures(hsm)


def test_copy_up_of_a_released_lower_file_copies_its_bytes(hsm, mounts):
    """Writing through the overlay copies the lower file up first: the copy must be the
    file's bytes, not the holes of the released one."""
    sums = released_and_resident(hsm)
    merged, upper = overlay(hsm, mounts, upper_on_managed=False)
    with open(merged / "released.bin", "ab") as f:
        f.write(b"appended")
    drop_caches()
    copied = read_all(upper / "released.bin")
    assert isinstance(copied, bytes), copied
    assert digest(copied[:-8]) == sums["released.bin"]
    assert copied[-8:] == b"appended"
    assert digest(read_all(merged / "released.bin")) == digest(copied)
    # The lower file is unchanged (only recalled).
    assert sha256(hsm.mnt / "lower/released.bin") == sums["released.bin"]
    assert_no_fd_failures(hsm)


def test_read_only_bind_mount_reads_released_and_resident_files(hsm, mounts):
    sums = released_and_resident(hsm)
    ro = hsm.base / "ro"
    ro.mkdir()
    mounts.mount("--bind", hsm.mnt, ro)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    with pytest.raises(OSError) as e:
        (ro / "lower/new").write_bytes(b"x")
    assert e.value.errno == errno.EROFS, "the bind mount is read-only"
    for name, want in sums.items():
        assert digest(read_all(ro / "lower" / name)) == want, name
    drop_caches()
    assert sha256(hsm.mnt / "lower/released.bin") == sums["released.bin"]
    assert_no_fd_failures(hsm)


def test_second_mount_of_the_device_read_only_per_mount_reads_released_files(hsm, mounts):
    """The same block device mounted a second time shares the superblock (and hsmd's
    filesystem mark); `remount,bind,ro` makes that mount alone read-only."""
    sums = released_and_resident(hsm)
    second = hsm.base / "second"
    second.mkdir()
    mounts.mount(device_of(hsm.mnt), second)
    assert os.stat(second).st_dev == os.stat(hsm.mnt).st_dev
    subprocess.run(["mount", "-o", "remount,bind,ro", str(second)], check=True)
    (hsm.mnt / "lower/still-writable").write_bytes(b"x")
    for name, want in sums.items():
        assert digest(read_all(second / "lower" / name)) == want, name
    assert_no_fd_failures(hsm)


def test_read_only_remount_of_a_second_mount_leaves_resident_files_readable(hsm, mounts):
    """`mount -o remount,ro` of a second mount of the device makes the superblock, so every
    mount, read-only (measured: docs/KERNEL-FACTS.md). Resident files stay readable through
    both mounts; released data cannot be written back, so reading it fails with EIO (never
    zeros) until the filesystem is writable again, then reads right."""
    sums = released_and_resident(hsm)
    second = hsm.base / "second"
    second.mkdir()
    mounts.mount(device_of(hsm.mnt), second)
    subprocess.run(["mount", "-o", "remount,ro", str(second)], check=True)
    try:
        with pytest.raises(OSError) as e:
            (hsm.mnt / "lower/new").write_bytes(b"x")
        assert e.value.errno == errno.EROFS, "the whole filesystem is read-only"
        for root in (hsm.mnt, second):
            assert digest(read_all(root / "lower/resident.bin")) == sums["resident.bin"], root
            assert read_all(root / "lower/released.bin") == "EIO", root
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(second)], check=True)
    assert digest(read_all(second / "lower/released.bin")) == sums["released.bin"]
    assert_no_fd_failures(hsm)
