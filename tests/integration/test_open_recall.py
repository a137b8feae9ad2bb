"""Whole-file recall at open for programs that probe holes (full_recall_programs)."""
import subprocess

from conftest import allocated_bytes, drop_caches, sha256

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
    assert hsm.state(p) == "archived"
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
    assert hsm.state(p) == "archived"
