"""Every file hsmd creates for itself is private to root (mode 0600, directories 0700),
even in a state_dir an administrator created 0755 beforehand."""
import os
import stat
from pathlib import Path


def _loose(root: Path, skip=()):
    """Files and directories under root that group or others may read."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            if p in skip:
                continue
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                continue
            if mode & 0o077:
                out.append(f"{p} {oct(mode & 0o777)}")
    return out


def test_state_and_store_files_are_private(hsm_stopped):
    hsm = hsm_stopped
    hsm.state_dir.mkdir(mode=0o755)
    os.chmod(hsm.state_dir, 0o755)
    hsm.start()
    p, _ = hsm.write("f.bin", size=300_000)
    hsm.ctl("archive", p)
    hsm.ctl("release", p)
    hsm.ctl("journal", "snapshot")
    (hsm.mnt / "newdir").mkdir()
    hsm.ctl("journal", "list")
    # While hsmd runs: the database, its -wal and -shm, the store's identity and objects.
    names = {f.name for f in hsm.state_dir.iterdir()}
    assert {"journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"} <= names, names
    assert _loose(hsm.state_dir, skip={hsm.state_dir}) == []
    assert _loose(hsm.store) == []
    hsm.stop()
    assert _loose(hsm.state_dir, skip={hsm.state_dir}) == []


def test_a_database_left_readable_by_an_older_hsmd_is_made_private(hsm_stopped):
    hsm = hsm_stopped
    hsm.start()
    hsm.stop()
    db = hsm.state_dir / "journal.sqlite"
    os.chmod(db, 0o644)
    hsm.start()
    assert db.stat().st_mode & 0o777 == 0o600
    assert _loose(hsm.state_dir, skip={hsm.state_dir}) == []
