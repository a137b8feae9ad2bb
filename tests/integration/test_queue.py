"""hsmctl queue lists recalls in flight and running jobs; hsmctl cancel stops a job; a
migrate whose hsmctl went away stops by itself."""
import json
import os
import signal
import subprocess
import time

from conftest import HSMCTL


def queue(h):
    return json.loads(h.ctl("queue", "--json").stdout)


def wait_for(what, probe, timeout=60):
    """Polls `probe` until it returns something true (a deadline for a hang, not a timing check)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = probe()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_hsmd(h, **env):
    h.start(env={k: str(v) for k, v in env.items()})


def ctl_popen(h, *args):
    env = dict(os.environ, HSMD_SOCKET=str(h.socket))
    return subprocess.Popen([str(HSMCTL), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_queue_lists_a_recall_in_flight(hsm_stopped):
    h = hsm_stopped
    # A store that answers slowly: the recall stays in flight long enough to be listed.
    start_hsmd(h, HSMD_TEST_STORE_DELAY_MS=4000)
    path, digest = h.write("slow.bin", 2 * 1024 * 1024)
    h.migrate(path)
    reader = subprocess.Popen(["python3", "-c", f"import hashlib,sys; print(hashlib.sha256(open({str(path)!r},'rb').read()).hexdigest())"],
                              stdout=subprocess.PIPE, text=True)
    try:
        rows = wait_for("the recall in hsmctl queue", lambda: queue(h)["recalls"])
        r = rows[0]
        assert r["path"] == str(path)
        assert r["pid"] == reader.pid
        assert r["program"] == "python3"
        assert r["kind"] == "access"
        assert r["bytes"] >= 0 and r["age_seconds"] >= 0
        text = h.ctl("queue").stdout
        assert "recalls in flight: 1" in text and str(path) in text and "python3" in text
        out, _ = reader.communicate(timeout=60)
        assert out.strip() == digest
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    wait_for("an empty queue", lambda: queue(h) == {"recalls": [], "jobs": [], "queued_accesses": 0})


def make_tree(h, n):
    paths = []
    for i in range(n):
        p, _ = h.write(f"tree/f{i:03d}", 8192)
        paths.append(p)
    return paths


def migrate_job(h):
    jobs = queue(h)["jobs"]
    # Its scan is done (it knows its 40 files) and it has copied one of them.
    return jobs[0] if jobs and jobs[0]["op"] == "migrate" and jobs[0]["total"] == 40 and jobs[0]["copied"] >= 1 else None


def test_cancel_stops_a_listed_migrate(hsm_stopped):
    h = hsm_stopped
    start_hsmd(h, HSMD_TEST_ARCHIVE_PAUSE_MS=200)
    paths = make_tree(h, 40)
    m = ctl_popen(h, "migrate", "--jobs", "1", h.mnt / "tree")
    try:
        job = wait_for("the migrate in hsmctl queue, scan done", lambda: migrate_job(h))
        assert job["path"] == str(h.mnt / "tree") and job["total"] == 40 and job["progress"]["scanned"] == 40
        assert job["cancelled"] is None and 1 <= job["copied"] < 40
        r = h.ctl("cancel", job["id"])
        assert f"job {job['id']}" in r.stdout and "stopping" in r.stdout
        out, err = m.communicate(timeout=120)
    finally:
        if m.poll() is None:
            m.kill()
            m.wait()
    # The files not started are reported not done, with the reason, and exit 1.
    assert m.returncode == 1, (out, err)
    assert "the job was cancelled" in err
    assert "stopped: cancelled by hsmctl cancel" in out
    states = [h.state(p) for p in paths]
    assert "released" in states and "resident" in states, states
    # What was migrated reads back, what was not is untouched; nothing is listed any more.
    assert queue(h)["jobs"] == []
    s = h.ctl("metrics").stdout
    assert "hsmd_jobs_cancelled_total 1" in s
    # Files the job never started are no archive failures.
    assert 'hsmd_archives_total{outcome="failed"} 0' in s


def test_migrate_stops_when_its_hsmctl_goes_away(hsm_stopped):
    h = hsm_stopped
    start_hsmd(h, HSMD_TEST_ARCHIVE_PAUSE_MS=200)
    paths = make_tree(h, 40)
    m = ctl_popen(h, "migrate", "--jobs", "1", h.mnt / "tree")
    try:
        wait_for("the migrate in hsmctl queue, scan done", lambda: migrate_job(h))
    finally:
        m.send_signal(signal.SIGKILL)
        m.wait()
    wait_for("the job to end", lambda: queue(h)["jobs"] == [])
    assert h.wait_for_log("went away")
    states = [h.state(p) for p in paths]
    assert states.count("resident") > 0, states
    assert states.count("released") > 0, states


def test_cancel_of_no_such_job(hsm):
    r = hsm.ctl("cancel", "999", check=False)
    assert r.returncode == 2
    assert "no job 999 is running" in r.stderr
    r = hsm.ctl("cancel", "0", check=False)
    assert r.returncode == 2 and "not a job id" in r.stderr


def test_queue_needs_root(hsm):
    r = hsm.ctl("queue", check=False, user=65534)
    assert r.returncode == 2 and "root" in r.stderr


def test_a_client_that_half_closes_after_its_request_keeps_its_job(hsm_stopped):
    """Shutting down only the sending side (as `nc -N` does) is not going away: the
    migrate runs to the end and the answer arrives."""
    import socket
    h = hsm_stopped
    start_hsmd(h, HSMD_TEST_ARCHIVE_PAUSE_MS=50)
    paths = make_tree(h, 10)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(h.socket))
    s.sendall(json.dumps({"op": "migrate", "paths": [str(h.mnt / "tree")], "jobs": 1}).encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    replies = [json.loads(l) for l in data.splitlines()]
    files = [f for r in replies for f in (r.get("files") or [])]
    assert replies[-1]["type"] == "result"
    assert sorted(f["path"] for f in files if f["outcome"] == "done") == sorted(map(str, paths)), files
    assert all(h.state(p) == "released" for p in paths)
