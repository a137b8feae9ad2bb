"""hsmctl import: the namespace rebuilt from a store's records alone (disaster recovery).

The main test migrates a tree, destroys the filesystem (umount, mkfs, mount), imports,
and checks that every file comes back as a released stub with its metadata and reads
back byte-identical. The others: conflicts, --into, --dry-run, several versions of one
path, and records whose paths try to leave the target filesystem.
"""
import json
import os
import secrets
import shutil
import subprocess

import pytest

from conftest import drop_caches, sha256

MARKER = "trusted.hsm"
MiB = 1 << 20


def remount_noatime(hsm):
    # Reads must not move the atimes the test compares.
    subprocess.run(["mount", "-o", "remount,noatime", str(hsm.mnt)], check=True)


def make_tree(hsm):
    """Files of several sizes and kinds, with odd modes, owners, times and xattrs."""
    files = {}

    def add(name, data=None, size=None, mode=0o644, owner=(0, 0), times=None, xattrs=None, sparse=None):
        p = hsm.mnt / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if sparse is not None:
            with open(p, "wb") as f:
                f.truncate(sparse[0])
                for off, n in sparse[1]:
                    f.seek(off)
                    f.write(os.urandom(n))
        else:
            p.write_bytes(data if data is not None else os.urandom(size))
        for k, v in (xattrs or {}).items():
            os.setxattr(p, k, v)
        os.chown(p, *owner)
        os.chmod(p, mode)
        os.utime(p, ns=times or (1_000_000_123_456_789, 990_000_000_987_654_321))
        files[name] = p

    add("small.txt", data=b"hello\n", mode=0o640, owner=(1234, 5678))
    add("empty", data=b"", mode=0o600)
    add("dir/sub dir/ünïcode name.bin", size=4097, mode=0o755, owner=(4321, 100),
        times=(1_700_000_000_000_000_001, 1_600_000_000_000_000_002))
    add("big.bin", size=3 * MiB + 123, mode=0o444)
    add("sparse.bin", sparse=(8 * MiB, [(MiB, 100_000), (7 * MiB + 5, 4096)]), mode=0o664, owner=(1000, 1000))
    add("holes-only.bin", sparse=(2 * MiB, []), mode=0o600)
    add("setuid.bin", size=10_000, mode=0o4755)
    add("dir/xattrs.bin", size=70_000, xattrs={"user.comment": b"kept beside the object", "user.binary": bytes(range(256))},
        mode=0o2750, owner=(0, 42))
    # A capability (set last: chown clears it), which import must set after the owner.
    add("bin/cap-tool", size=20_000, mode=0o755, owner=(0, 0))
    subprocess.run(["setcap", "cap_net_raw+ep", str(files["bin/cap-tool"])], check=True)
    os.utime(files["bin/cap-tool"], ns=(1_000_000_123_456_789, 990_000_000_987_654_321))
    assert "security.capability" in os.listxattr(files["bin/cap-tool"])
    return files


def metadata(p):
    st = os.stat(p)
    xattrs = {k: os.getxattr(p, k) for k in os.listxattr(p) if k != MARKER}
    return {"size": st.st_size, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
            "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "xattrs": xattrs}


def destroy_and_recreate(hsm):
    """Stops hsmd, makes a new empty filesystem in the image, mounts it, starts hsmd."""
    assert hsm.stop() == 0
    subprocess.run(["umount", str(hsm.mnt)], check=True)
    hsm.mounted = False
    subprocess.run([*hsm.MKFS[hsm.fstype], str(hsm.image)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mount", "-o", "loop,noatime", str(hsm.image), str(hsm.mnt)], check=True)
    hsm.mounted = True
    hsm.start()


def import_(hsm, *args, check=True):
    return hsm.ctl("import", *args, check=check)


def test_import_after_mkfs_rebuilds_every_file(hsm):
    remount_noatime(hsm)
    files = make_tree(hsm)
    expected = {name: (metadata(p), sha256(p)) for name, p in files.items()}
    hsm.ctl("migrate", hsm.mnt)
    states = {r["path"]: r["state"] for r in json.loads(hsm.ctl("status", "--json", hsm.mnt).stdout)}
    assert all(states[str(p)] in ("released", "archived") for p in files.values()), states
    objects = {name: hsm.status(p)["object"] for name, p in files.items()}

    destroy_and_recreate(hsm)
    assert sorted(os.listdir(hsm.mnt)) == ["lost+found"]

    # A dry run says what it would make and makes nothing.
    r = import_(hsm, "tier1", "--dry-run")
    for name in files:
        assert f"{objects[name]} {hsm.mnt}/{name}: would create" in r.stdout, (name, r.stdout)
    assert sorted(os.listdir(hsm.mnt)) == ["lost+found"]

    # A file already there is a conflict: reported, never overwritten.
    (hsm.mnt / "small.txt").write_bytes(b"new data, not to be lost\n")
    r = import_(hsm, "tier1", check=False)
    assert r.returncode == 1, r
    assert f"import {objects['small.txt']} {hsm.mnt}/small.txt: conflict" in r.stderr, r.stderr
    assert (hsm.mnt / "small.txt").read_bytes() == b"new data, not to be lost\n"
    assert f"created {len(files) - 1} stub(s)" in r.stdout, r.stdout

    for name, p in files.items():
        if name == "small.txt":
            continue
        meta, digest = expected[name]
        assert metadata(p) == meta, name
        st = hsm.status(p)
        assert st["object"] == objects[name], name
        assert st["state"] == ("archived" if name in ("empty", "holes-only.bin") else "released"), (name, st)
    drop_caches()
    for name, p in files.items():
        if name == "small.txt":
            continue
        meta, digest = expected[name]
        assert sha256(p) == digest, name
        assert metadata(p) == meta, f"{name}: metadata changed by the recall"
    # Directories it had to make are root's and open to all, whatever hsmd's umask.
    assert os.stat(hsm.mnt / "dir").st_mode & 0o7777 == 0o755
    assert os.stat(hsm.mnt / "dir" / "sub dir").st_mode & 0o7777 == 0o755
    # Holes stay holes: the sparse file's recall brought back only its data.
    assert os.stat(files["sparse.bin"]).st_blocks * 512 < 1 * MiB

    # Again: every object is named by a marker now; nothing new is made.
    r = import_(hsm, "tier1", check=False)
    assert r.returncode == 1  # the conflict is still there
    assert "created 0 stub(s)" in r.stdout, r.stdout
    assert r.stdout.count("is already named by the marker of") == len(files) - 1, r.stdout


@pytest.mark.parametrize("hsm_fs", ["ext4", "xfs", "btrfs"], indirect=True)
def test_import_into_a_directory_keeps_the_layout(hsm_fs):
    hsm = hsm_fs
    p1, d1 = hsm.write("a/b/one.bin", size=2 * MiB)
    p2, d2 = hsm.write("two.bin", size=5000)
    hsm.ctl("migrate", hsm.mnt)
    shutil.rmtree(hsm.mnt / "a")
    os.unlink(p2)
    dest = hsm.mnt / "restore"
    dest.mkdir()
    r = import_(hsm, "tier1", "--into", dest)
    assert "created 2 stub(s)" in r.stdout, r.stdout
    assert not (hsm.mnt / "a").exists() and not p2.exists()
    drop_caches()
    assert sha256(dest / "a/b/one.bin") == d1
    assert sha256(dest / "two.bin") == d2


def test_import_into_must_be_a_directory_on_a_managed_filesystem(hsm):
    r = import_(hsm, "tier1", "--into", hsm.base, check=False)
    assert r.returncode == 2 and "not on a managed filesystem" in r.stderr, r
    r = import_(hsm, "tier1", "--into", hsm.mnt / "nothing", check=False)
    assert r.returncode == 2 and "No such file" in r.stderr, r
    r = import_(hsm, "nosuchstore", check=False)
    assert r.returncode == 2 and "no store named nosuchstore" in r.stderr, r


def object_files(hsm, obj):
    d = hsm.store / "objects" / obj[:2]
    return d / f"{obj}.data", d / f"{obj}.json"


def clone_object(hsm, obj, **changes):
    """A copy of object `obj` under a new id, its record edited; returns the new id."""
    new = secrets.token_hex(16)
    data, record = object_files(hsm, obj)
    ndata, nrecord = object_files(hsm, new)
    ndata.parent.mkdir(exist_ok=True)
    shutil.copyfile(data, ndata)
    doc = json.loads(record.read_text())
    doc.update(changes, object=new)
    nrecord.write_text(json.dumps(doc))
    return new


def test_import_newest_version_wins(hsm):
    p, _ = hsm.write("v.bin", data=b"version one\n" * 1000)
    hsm.ctl("archive", p)
    old = hsm.status(p)["object"]
    saved = [f.read_bytes() for f in object_files(hsm, old)]
    with open(p, "ab") as f:
        f.write(b"version two\n")
    digest = sha256(p)
    hsm.ctl("archive", p)
    new = hsm.status(p)["object"]
    assert new != old and not object_files(hsm, old)[0].exists()
    # The old version back in the store, as after a failed delete.
    doc = json.loads(saved[1])
    doc["archived_at"] -= 3600
    object_files(hsm, old)[0].write_bytes(saved[0])
    object_files(hsm, old)[1].write_text(json.dumps(doc))
    os.unlink(p)
    r = import_(hsm, "tier1")
    assert f"{old} {p}: an older version" in r.stdout and f"object {new} is newer" in r.stdout, r.stdout
    assert hsm.status(p)["object"] == new
    drop_caches()
    assert sha256(p) == digest


def test_import_refuses_paths_that_leave_the_filesystem(hsm):
    p, digest = hsm.write("good.bin", size=10_000)
    hsm.ctl("archive", p)
    obj = hsm.status(p)["object"]
    outside = hsm.base / "outside"
    outside.mkdir()
    os.symlink(outside, hsm.mnt / "link")
    dotdot = clone_object(hsm, obj, path=f"{hsm.mnt}/../escape.bin")
    through_link = clone_object(hsm, obj, path=f"{hsm.mnt}/link/evil.bin")
    elsewhere = clone_object(hsm, obj, path="/etc/hsmd-import-test.bin")
    os.unlink(p)
    r = import_(hsm, "tier1", check=False)
    assert r.returncode == 1, r
    assert f"{dotdot} {hsm.mnt}/../escape.bin: refused" in r.stderr and '".."' in r.stderr, r.stderr
    assert f"{through_link} {hsm.mnt}/link/evil.bin: refused" in r.stderr and "symlink" in r.stderr, r.stderr
    assert f"{elsewhere} /etc/hsmd-import-test.bin: refused" in r.stderr, r.stderr
    assert os.listdir(outside) == []
    assert not (hsm.base / "escape.bin").exists() and not os.path.exists("/etc/hsmd-import-test.bin")
    # The good one is made all the same.
    assert "created 1 stub(s)" in r.stdout, r.stdout
    drop_caches()
    assert sha256(p) == digest
