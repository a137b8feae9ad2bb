"""Whole-file recall at open for programs that probe holes (full_recall_programs)."""
import subprocess

from conftest import allocated_bytes, drop_caches, sha256, strace_hsmd

MiB = 1 << 20


def test_without_the_list_cp_copies_zeros_because_seek_data_raises_no_event(hsm_stopped):
    # The kernel fact behind full_recall_programs: lseek(SEEK_DATA) on a released file
    # finds only holes and raises no pre-content event.
    hsm = hsm_stopped
    hsm.write_config(extra="full_recall_programs = []")
    hsm.start()
    p, digest = hsm.write("a.bin", size=3 * MiB)
    hsm.migrate(p)
    copy = hsm.mnt / "copy.bin"
    subprocess.run(["cp", str(p), str(copy)], check=True)
    assert copy.read_bytes() == b"\0" * (3 * MiB)
    assert hsm.state(p) == "released"
    assert sha256(p) == digest


def test_cp_gets_the_whole_file_back_at_open_and_a_plain_reader_does_not(hsm):
    p, digest = hsm.write("a.bin", size=12 * MiB)
    hsm.migrate(p)
    drop_caches()
    # python3 is not in the list: opening and reading 4 KiB brings back only the pages read
    # (the block stays offline until it has no holes: test_partial_recall.py).
    with open(p, "rb") as f:
        f.seek(5 * MiB)
        f.read(4096)
    assert 0 < allocated_bytes(p) <= 64 * 1024
    assert hsm.state(p) == "released"
    copy = hsm.base / "copy.bin"
    subprocess.run(["cp", str(p), str(copy)], check=True)
    assert sha256(copy) == digest
    hsm.wait_for_state(p, "archived")
    assert hsm.wait_for_log("cp (pid", "recalling all of it first")


def test_full_recall_programs_is_validated(hsm_stopped):
    from conftest import HSMD
    for bad, key in [('full_recall_programs = "cp"', "full_recall_programs"),
                     ('full_recall_programs = ["/bin/cp"]', "full_recall_programs[0]"),
                     ('full_recall_programs = ["a-very-long-program-name"]', "full_recall_programs[0]")]:
        hsm_stopped.write_config(extra=bad)
        r = subprocess.run([str(HSMD), "--config", str(hsm_stopped.config), "--check-config"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and key in r.stderr, (bad, r.stderr)


def test_a_one_block_file_comes_back_whole_at_its_open_with_one_event_per_file(hsm):
    # cat is not in full_recall_programs: a file of at most one recall block comes back
    # at its open anyway, and the read that follows raises no second event.
    import hashlib
    import re
    files = [hsm.write(f"small/f{i}", size=16 * 1024) for i in range(40)]
    hsm.ctl("migrate", hsm.mnt / "small")
    assert {hsm.state(p) for p, _ in files} == {"released"}
    drop_caches()

    def events():
        return int(re.search(r"(\d+) events\)", hsm.ctl("doctor").stdout).group(1))

    before = events()
    for p, digest in files:
        out = subprocess.run(["cat", str(p)], capture_output=True, check=True).stdout
        assert hashlib.sha256(out).hexdigest() == digest, p
    seen = events() - before
    assert seen <= 44, f"{seen} events for 40 files: more than one per file"
    assert {hsm.state(p) for p, _ in files} == {"archived"}
    assert "recalling all of it first" not in hsm.log_text(), "a log line per small file"


def test_a_plain_open_of_a_larger_file_is_answered_without_a_worker_and_cp_still_waits(hsm):
    # An open that needs nothing back (the program is not in full_recall_programs and the
    # file is larger than a block) is answered on the event thread: counted allowed_inline,
    # not open, and nothing is recalled.
    import os
    from test_metrics import samples, value
    p, digest = hsm.write("big.bin", size=3 * MiB + 5)
    hsm.migrate(p)
    drop_caches()

    def counts():
        s = samples(hsm.ctl("metrics").stdout)
        return (value(s, "hsmd_events_total", kind="open"), value(s, "hsmd_events_total", kind="allowed_inline"),
                value(s, "hsmd_recalls_total"))

    opens, inline, recalls = counts()
    for _ in range(10):
        os.close(os.open(p, os.O_RDONLY))
    o, i, r = counts()
    assert (o - opens, i - inline, r - recalls) == (0, 10, 0), (o - opens, i - inline, r - recalls)
    assert hsm.state(p) == "released" and allocated_bytes(p) == 0
    # cp is in the list: its open still goes to the engine and waits for the whole file.
    copy = hsm.base / "copy.bin"
    subprocess.run(["cp", str(p), str(copy)], check=True)
    assert sha256(copy) == digest
    assert counts()[0] - o == 1
    hsm.wait_for_state(p, "archived")



def test_tar_never_sees_the_marker_change_a_file_another_process_holds_open(hsm):
    # A recall at open answers once the data is in; the marker (whose write changes the
    # ctime tar checks) waits until no one has the file open. A file held open by another
    # program while tar reads it keeps its old marker until that program closes it.
    import os
    big, big_digest = hsm.write("tree/big.bin", size=5 * MiB + 7)
    small = [hsm.write(f"tree/s{i}.bin", size=16 * 1024) for i in range(20)]
    hsm.ctl("migrate", hsm.mnt / "tree")
    drop_caches()
    holder = os.open(big, os.O_RDONLY)   # python3: not in full_recall_programs, recalls nothing
    try:
        r = subprocess.run(["tar", "-C", str(hsm.mnt / "tree"), "-cf", str(hsm.base / "t.tar"), "."],
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        # All of big.bin is local, but its marker still calls it offline.
        assert allocated_bytes(big) >= 5 * MiB
        for p, _ in small:
            hsm.wait_for_state(p, "archived")
        assert hsm.state(big) == "released"
    finally:
        os.close(holder)
    hsm.wait_for_state(big, "archived")
    assert sha256(big) == big_digest
    out = hsm.base / "x"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(hsm.base / "t.tar")], check=True)
    assert sha256(out / "big.bin") == big_digest
    for p, d in small:
        assert sha256(out / p.name) == d


def test_a_file_tar_recalls_is_synced_once_just_before_its_marker(hsm, tmp_path):
    # The fdatasync that must come before the marker (invariant 8) is the only one: the
    # recall at open leaves both to the settle step, which used to sync a second time.
    files = [hsm.write(f"synced/t{i}.bin", size=16 * 1024) for i in range(5)]
    hsm.ctl("migrate", hsm.mnt / "synced")
    drop_caches()
    trace = tmp_path / "trace.txt"
    with strace_hsmd(hsm, "fdatasync,fsetxattr", trace, paths=True):
        subprocess.run(["tar", "-C", str(hsm.mnt / "synced"), "-cf", str(hsm.base / "s.tar"), "."],
                       check=True, timeout=60)
        for p, _ in files:
            hsm.wait_for_state(p, "archived")
    lines = trace.read_text().splitlines()
    for p, digest in files:
        mine = [line for line in lines if f"{p.name}>" in line]
        calls = [line.split("(", 1)[0].split()[-1] for line in mine if "fdatasync(" in line or "trusted.hsm" in line]
        assert calls == ["fdatasync", "fsetxattr"], (p.name, mine)
        assert sha256(p) == digest


def test_a_marker_left_waiting_at_a_crash_is_written_at_the_next_access(hsm):
    # hsmd killed while a file tar had recalled at open waits for its marker: the data is local
    # (page cache: a process's death loses none of it), the marker still says offline; the next access finds every block whole,
    # reads nothing from the store and marks it resident.
    import os
    import signal
    from test_metrics import samples, value
    p, digest = hsm.write("held.bin", size=3 * MiB + 1)
    hsm.migrate(p)
    drop_caches()
    holder = os.open(p, os.O_RDONLY)
    try:
        subprocess.run(["tar", "-C", str(hsm.mnt), "-cf", str(hsm.base / "held.tar"), "held.bin"], check=True)
        assert hsm.state(p) == "released"
        hsm.stop(signal.SIGKILL)
    finally:
        os.close(holder)
    hsm.start()
    for obj in hsm.object_files():
        obj.unlink()   # the store's copy gone: the local data must do
    drop_caches()
    assert sha256(p) == digest
    s = samples(hsm.ctl("metrics").stdout)
    assert value(s, "hsmd_recalls_total") == 0
    hsm.wait_for_state(p, "archived")
