"""Metrics: `hsmctl metrics` and GET /metrics on metrics_listen, checked by Prometheus's
own promtool after real archive, release and recall traffic, and counters that moved by
exactly what happened."""
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import pytest


def promtool():
    """Prometheus's checker (Debian package `prometheus`, which scripts/setup.sh installs)."""
    for candidate in (shutil.which("promtool"), "/usr/bin/promtool", "/usr/local/bin/promtool"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("promtool not found: install Debian's prometheus package (scripts/setup.sh does)")


def check_with_promtool(text):
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, f"promtool check metrics refused the exposition:\n{r.stdout}{r.stderr}\n---\n{text}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def samples(text):
    """{(name, frozenset of label pairs): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(s, name, **labels):
    return s.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def hsm_metrics(hsm_stopped):
    port = free_port()
    hsm_stopped.write_config(extra=f'metrics_listen = "127.0.0.1:{port}"')
    hsm_stopped.start()
    hsm_stopped.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return hsm_stopped


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def test_metrics_after_archive_release_recall(hsm_metrics):
    h = hsm_metrics
    size = 3 * 1024 * 1024 + 12345
    path, digest = h.write("data.bin", size)
    h.migrate(path)
    # Read it all back through the kernel: recall on access.
    with open(path, "rb") as f:
        data = f.read()
    import hashlib
    assert hashlib.sha256(data).hexdigest() == digest

    text = h.ctl("metrics").stdout
    check_with_promtool(text)
    s = samples(text)
    assert value(s, "hsmd_archives_total", outcome="done") == 1
    assert value(s, "hsmd_archived_bytes_total") == size
    assert value(s, "hsmd_releases_total", outcome="done") == 1
    assert value(s, "hsmd_released_bytes_total") > 0
    # Every byte that was read came back from the store, once.
    assert value(s, "hsmd_recalled_bytes_total") == size
    assert value(s, "hsmd_recalls_total") >= 1
    assert value(s, "hsmd_recall_duration_seconds_count") >= 1
    assert value(s, "hsmd_recall_duration_seconds_bucket", le="+Inf") == value(s, "hsmd_recall_duration_seconds_count")
    assert value(s, "hsmd_events_total", kind="access") + value(s, "hsmd_events_total", kind="open") >= 1
    assert value(s, "hsmd_store_request_duration_seconds_count", store="tier1", op="put") == 1
    assert value(s, "hsmd_store_request_duration_seconds_count", store="tier1", op="read") >= 1
    # The worker finishes (read-ahead, marker) after the reader has its bytes: the gauges
    # come back to 0 once it is done.
    import time
    deadline = time.time() + 30
    while True:
        g = samples(h.ctl("metrics").stdout)
        if value(g, "hsmd_recall_queue_depth") == 0 and value(g, "hsmd_recalls_in_flight") == 0:
            break
        assert time.time() < deadline, "queue depth and in-flight recalls never went back to 0"
        time.sleep(0.05)
    # Counted by the change journal (on by default): the file's creation at least.
    assert value(s, "hsmd_journal_events_total") >= 1
    assert ("hsmd_journal_overflows_total", frozenset()) in s

    # The HTTP endpoint serves the same registry.
    body = scrape(h.metrics_url)
    check_with_promtool(body)
    web = samples(body)
    assert value(web, "hsmd_recalled_bytes_total") == size
    assert value(web, "hsmd_archives_total", outcome="done") == 1


def test_failures_counted_by_errno(hsm_metrics):
    h = hsm_metrics
    path, _ = h.write("lost.bin", 256 * 1024)
    h.migrate(path)
    for f in h.object_files():
        f.unlink()
    with pytest.raises(OSError) as e:
        with open(path, "rb") as f:
            f.read()
    assert e.value.errno == 5  # EIO
    s = samples(h.ctl("metrics").stdout)
    assert value(s, "hsmd_recall_failures_total", errno="EIO") == 1
    # The record may come from the cache; opening or reading the missing data fails.
    assert sum(v for (n, l), v in s.items() if n == "hsmd_store_errors_total" and ("store", "tier1") in l) >= 1, \
        {k: v for k, v in s.items() if k[0] == "hsmd_store_errors_total" and v}
    assert value(s, "hsmd_recalled_bytes_total") == 0
    check_with_promtool(scrape(h.metrics_url))


def test_http_endpoint_refuses_other_requests(hsm_metrics):
    h = hsm_metrics
    base = h.metrics_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/other", timeout=10)
    assert e.value.code == 404
    req = urllib.request.Request(h.metrics_url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    # Garbage, then a good scrape: the listener is still there.
    with socket.create_connection(("127.0.0.1", int(h.metrics_url.split(":")[2].split("/")[0])), timeout=10) as c:
        c.sendall(b"\x00\x01garbage\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400")
    check_with_promtool(scrape(h.metrics_url))


def test_bad_metrics_listen_is_refused(hsm_stopped):
    hsm_stopped.write_config(extra='metrics_listen = "metrics.example:9464"')
    r = subprocess.run([os.environ.get("HSMD_BIN_DIR", ".build/debug") + "/hsmd", "--config", str(hsm_stopped.config), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "metrics_listen" in r.stderr and "not an IP address" in r.stderr


def test_metrics_needs_root(hsm):
    r = hsm.ctl("metrics", check=False, user=65534)
    assert r.returncode == 2
    assert "root" in r.stderr


def test_space_per_state_from_the_catalog(hsm_metrics):
    h = hsm_metrics
    a, _ = h.write("a.bin", 2 * 1024 * 1024)
    b, _ = h.write("b.bin", 1024 * 1024)
    h.ctl("archive", a, b)
    h.ctl("release", a)
    h.ctl("pin", b)
    mnt = str(h.mnt)
    import time
    deadline = time.time() + 30
    while True:
        text = h.ctl("metrics").stdout
        s = samples(text)
        if value(s, "hsmd_managed_files", filesystem=mnt, state="released") == 1:
            break
        assert time.time() < deadline, f"the released file never showed in the metrics:\n{text}"
        time.sleep(0.1)
    check_with_promtool(text)
    assert value(s, "hsmd_managed_files", filesystem=mnt, state="archived") == 1
    assert value(s, "hsmd_managed_bytes", filesystem=mnt, state="released") == 2 * 1024 * 1024
    assert value(s, "hsmd_offline_bytes", filesystem=mnt) == 2 * 1024 * 1024
    assert value(s, "hsmd_store_objects", store="tier1") == 2
    assert value(s, "hsmd_pinned_files", filesystem=mnt) == 1
    assert value(s, "hsmd_pinned_bytes", filesystem=mnt) == 1024 * 1024
    assert value(s, "hsmd_store_orphan_objects", store="tier1") == 0
    check_with_promtool(scrape(h.metrics_url))
