"""The manager's /ui dashboard in a real headless Chromium, against a real
three-node cluster: the `datanode` and `manager` binaries on loopback ports
chosen by the system (as tests/src/lib.rs starts them).

Run through tests/browser/run.sh, which builds the binaries and finds the
browser. RINGCACHE_BIN_DIR names the directory holding the binaries.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import http.client
import math
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("RINGCACHE_BIN_DIR", ROOT / "target" / "debug"))
SCREENSHOT = Path(os.environ.get("RINGCACHE_SCREENSHOT", ROOT / "docs" / "images" / "dashboard.png"))
# Longest wait for anything the tests poll for.
DEADLINE = 20.0
# Failure detection: nodes send a heartbeat every 100 ms and the manager
# marks a node down after 1 s without one; the page polls once a second.
HEARTBEAT_INTERVAL = "100ms"
HEARTBEAT_TIMEOUT_S = 1.0
PAGE_POLL_S = 1.0
# From SIGSTOP to the page showing `down`: the timeout, up to two page polls
# (one may be in flight), and slack for a loaded CI machine.
DOWN_BOUND_S = HEARTBEAT_TIMEOUT_S + 2 * PAGE_POLL_S + 1.0

VALUE = b"x" * 1000
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def wait_for(what, f, deadline=DEADLINE, every=0.05):
    """Polls f until it returns something truthy; fails after deadline."""
    start = time.monotonic()
    last = None
    while True:
        try:
            v = f()
        except Exception as e:  # a stale element between page updates
            v, last = None, e
        if v:
            return v
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline}s waiting for {what} (last error: {last})")
        time.sleep(every)


class Proc:
    """A spawned server process whose stderr goes to a log file."""

    def __init__(self, name, binary, marker, args, logdir):
        self.name = name
        self.log = Path(logdir) / f"{name}.log"
        path = BIN_DIR / binary
        assert path.exists(), f"{path} not built: run `cargo build --bins`"
        with open(self.log, "wb") as out:
            self.p = subprocess.Popen([str(path), *args], stdout=subprocess.DEVNULL, stderr=out)
        self.addr = wait_for(f"{name} readiness line", lambda: self._ready(marker))

    def _ready(self, marker):
        if self.p.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.log_text()}")
        for line in self.log_text().splitlines():
            if marker in line:
                m = re.search(r" addr=(\S+)", ANSI.sub("", line))
                if m:
                    return m.group(1)
        return None

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig):
        os.kill(self.p.pid, sig)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.kill()
        self.p.wait(timeout=DEADLINE)


class Cluster:
    def __init__(self, logdir, token=None, prefix="node"):
        auth = ["--auth-token", token] if token else []
        self.nodes = []
        self.manager = None
        try:
            for i in range(1, 4):
                self.nodes.append(Proc(
                    f"{prefix}-{i}", "datanode", "data node serving gRPC",
                    ["--listen", "127.0.0.1:0", "--id", f"{prefix}-{i}",
                     "--max-memory", "1MiB", "--heartbeat-interval", HEARTBEAT_INTERVAL, *auth],
                    logdir))
            self.manager = Proc(
                f"{prefix}-manager", "manager", "manager serving HTTP",
                ["--listen", "127.0.0.1:0",
                 "--nodes", ",".join(f"http://{n.addr}" for n in self.nodes),
                 "--heartbeat-timeout", f"{HEARTBEAT_TIMEOUT_S}s", *auth],
                logdir)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://{self.manager.addr}"
        self.token = token

    def stop(self):
        for p in ([self.manager] if self.manager else []) + self.nodes:
            p.stop()

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.log_text()}" for p in [self.manager, *self.nodes] if p)


@pytest.fixture
def logdir():
    with tempfile.TemporaryDirectory(prefix="ringcache-browser-") as d:
        yield d


@pytest.fixture
def browser():
    opts = Options()
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert binary, "no chromium binary on PATH"
    opts.binary_location = binary
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1440,1000", "--force-device-scale-factor=1", "--hide-scrollbars"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    assert Path(driver_path).exists(), "no chromedriver"
    d = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        yield d
    finally:
        d.quit()


def curl(cluster, method, path_and_query):
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
           cluster.url + path_and_query]
    if cluster.token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {cluster.token}"]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10).stdout)


# Reads the node table in one script run: the page re-renders every second,
# so element handles kept across calls go stale.
SNAPSHOT_JS = """
const text = (e, sel) => { const x = e.querySelector(sel); return x ? x.textContent : null; };
return Array.from(document.querySelectorAll('#nodes tbody tr')).map((tr) => {
  const badge = tr.querySelector('td.state .badge');
  const fill = tr.querySelector('.sync .bar-fill');
  return {
    node: tr.dataset.node, state: badge.textContent, state_class: badge.className,
    items: text(tr, 'td.items'), instance: text(tr, 'td.instance'),
    has_sync: !!tr.querySelector('.sync'), sync_width: fill ? fill.style.width : null,
    sync_pct: text(tr, '.sync-pct'), sync_text: text(tr, '.sync-text'),
  };
});
"""


def snapshot(driver):
    """{node: row fields} as the page shows them."""
    return {r["node"]: r for r in driver.execute_script(SNAPSHOT_JS)}


def rows(driver):
    """{node id: (state, items)} as the page shows them."""
    return {n: (r["state"], r["items"]) for n, r in snapshot(driver).items()}


def number(text):
    """The leading number of a card, e.g. '1,234 12/s' -> 1234."""
    m = re.match(r"[\d,]+", text.strip())
    return int(m.group(0).replace(",", "")) if m else None


def severe_logs(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def load(url, token, seconds, max_requests):
    """Traffic with a varying rate, so the charts have a shape: sets, and
    gets of keys that exist and keys that do not. Bounded in time and count."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    sent = 0
    while sent < max_requests:
        elapsed = time.monotonic() - start
        if elapsed > seconds:
            break
        # Requests in this 100 ms slice: a slow wave between 5 and 45.
        slice_end = time.monotonic() + 0.1
        for _ in range(int(25 + 20 * math.sin(elapsed / 3))):
            k = sent % 500
            if sent % 3 == 0:
                # Values of about 1 KiB, so the memory bars have something to show.
                conn.request("POST", f"/?key=load-{k}", body=VALUE, headers=headers)
            else:
                # Half the reads ask for keys never written: misses.
                key = f"load-{k}" if sent % 2 else f"absent-{k}"
                conn.request("GET", f"/?key={key}", headers=headers)
            conn.getresponse().read()
            sent += 1
        pause = slice_end - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    conn.close()
    return sent


def take_screenshot(driver):
    """The whole page in one image: a viewport as tall as the document."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1440, "height": height, "deviceScaleFactor": 1, "mobile": False})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT)), "screenshot not saved"
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"screenshot: {SCREENSHOT}")


def test_dashboard_shows_the_live_cluster(browser, logdir):
    cluster = Cluster(logdir)
    try:
        run_live_checks(browser, cluster)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def run_live_checks(driver, cluster):
    ids = {f"node-{i}" for i in range(1, 4)}
    driver.get(cluster.url + "/ui")
    wait_for("every node up on the page",
             lambda: set(rows(driver)) == ids and all(s == "up" for s, _ in rows(driver).values()))
    assert driver.find_element(By.ID, "login").is_displayed() is False
    # The ring has one arc per node, coloured as up.
    wait_for("three up arcs", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#ring .arc.state-up")) == 3)

    # Numbers change after requests made with curl: 20 keys on 2 replicas
    # are 40 items in all, and the request counter moves by at least 20.
    (before,) = wait_for("request counter", lambda: (number(driver.find_element(By.ID, "s-requests").text),)
                         if number(driver.find_element(By.ID, "s-requests").text) is not None else None)
    assert number(driver.find_element(By.ID, "s-items").text) == 0
    for i in range(20):
        assert curl(cluster, "POST", f"/?key=curl-{i}&value=v{i}") == 201
    wait_for("40 items on the page", lambda: number(driver.find_element(By.ID, "s-items").text) == 40)
    per_node = sum(number(items) for _, items in rows(driver).values())
    assert per_node == 40, rows(driver)
    wait_for("request counter +20",
             lambda: number(driver.find_element(By.ID, "s-requests").text) >= before + 20)

    # A varying load for the charts. The checks and the screenshot come
    # while it still runs, so the page shows traffic at that moment.
    result = {}
    worker = threading.Thread(target=lambda: result.update(sent=load(cluster.url, None, seconds=30, max_requests=30000)))
    load_start = time.monotonic()
    worker.start()
    try:
        # History for the charts: wait until the load has run 24 s (a
        # duration to show, not a synchronization).
        wait_for("24 s of load", lambda: time.monotonic() - load_start >= 24 or not worker.is_alive(), deadline=40, every=0.2)
        assert worker.is_alive(), "the load ended early"
        wait_for("a non-zero request rate on the page",
                 lambda: not driver.find_element(By.CSS_SELECTOR, "#c-rate .now").text.startswith(("0", "–")))
        for chart in ["c-rate", "c-hit", "c-p50", "c-p99"]:
            assert driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg path.line"), chart
            assert driver.find_element(By.CSS_SELECTOR, f"#{chart} .now").text not in ("", "–"), chart
        # The nodes' hot keys, from their heartbeats, in the table.
        wait_for("hot keys in the table",
                 lambda: driver.find_elements(By.CSS_SELECTOR, "#hotkeys tbody tr td.key"))
        first = driver.find_element(By.CSS_SELECTOR, "#hotkeys tbody tr td.key").text
        assert first != "", "an empty hot key"
        assert not driver.find_element(By.ID, "hotkeys-none").is_displayed()
        take_screenshot(driver)
    finally:
        worker.join(timeout=60)
    sent = result.get("sent", 0)
    assert sent > 100, result
    wait_for("request counter past the load",
             lambda: number(driver.find_element(By.ID, "s-requests").text) >= before + 20 + sent)

    # No script error or blocked resource (CSP) while the page ran.
    assert severe_logs(driver) == []

    # A SIGSTOPped node sends no heartbeat: the page shows it down within
    # the detection bound.
    victim = cluster.nodes[1]
    victim.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for("node-2 down on the page", lambda: rows(driver).get("node-2", ("",))[0] == "down",
                 deadline=DOWN_BOUND_S, every=0.02)
        took = time.monotonic() - stopped_at
        print(f"node-2 shown down {took:.2f}s after SIGSTOP (bound {DOWN_BOUND_S:.1f}s)")
        others = rows(driver)
        assert others["node-1"][0] == "up" and others["node-3"][0] == "up", others
        wait_for("a down arc", lambda: driver.find_elements(By.CSS_SELECTOR, '#ring .arc.state-down[data-node="node-2"]'))
        assert driver.find_element(By.ID, "s-up").text == "2 / 3"
        driver.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / "ringcache-dashboard-down.png"))
    finally:
        victim.signal(signal.SIGCONT)


def test_dashboard_with_auth_token(browser, logdir):
    token = "s3cret-browser-token"
    cluster = Cluster(logdir, token=token, prefix="authnode")
    try:
        driver = browser
        driver.get(cluster.url + "/ui")
        # Without a token: the prompt, and nothing of the cluster anywhere in
        # the page.
        wait_for("token prompt", lambda: driver.find_element(By.ID, "login").is_displayed())
        assert not driver.find_element(By.ID, "dash").is_displayed()
        assert driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr") == []
        source = driver.page_source
        for n in cluster.nodes:
            assert n.addr not in source and n.name not in source, f"page leaks {n.name}"

        # A wrong token is refused and still shows nothing.
        driver.find_element(By.ID, "token").send_keys("wrong-token")
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for("refusal message", lambda: driver.find_element(By.ID, "login-error").is_displayed())
        assert driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr") == []
        assert driver.execute_script("return sessionStorage.getItem('ringcache.token')") is None

        # The right token: the live cluster.
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        ids = {f"authnode-{i}" for i in range(1, 4)}
        wait_for("every node up with the token",
                 lambda: set(rows(driver)) == ids and all(s == "up" for s, _ in rows(driver).values()))
        assert curl(cluster, "POST", "/?key=k&value=v") == 201
        wait_for("2 items", lambda: number(driver.find_element(By.ID, "s-items").text) == 2)

        # The token is asked once per tab: a reload goes straight to the data.
        driver.refresh()
        wait_for("nodes after reload", lambda: set(rows(driver)) == ids)
        assert not driver.find_element(By.ID, "login").is_displayed()

        # Forgetting it clears the page.
        driver.find_element(By.ID, "forget-token").click()
        wait_for("prompt after forget", lambda: driver.find_element(By.ID, "login").is_displayed())
        assert driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr") == []
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


# States and fields a newer manager may send (the live-membership work adds
# `syncing` and `leaving` with a `sync` object, and `id` next to `node_id`):
# served by a stand-in for /cluster, with the page's files as the manager
# embeds them.
FUTURE_CLUSTER = b"""{"replicas": 2, "vnodes": 64, "nodes": [
  {"address": "http://10.9.0.1:1", "node_id": "old-style", "state": "up", "items": 5, "bytes": 100,
   "memory_limit": 1000, "evictions": 0, "hit_ratio": 0.5, "ring_share": 0.25,
   "last_heartbeat_age_ms": 10, "instance": "abcdef0123456789"},
  {"address": "http://10.9.0.2:1", "id": "syncer", "state": "syncing", "ring_share": 0.25,
   "sync": {"keys_copied": 30, "bytes_copied": 2048, "scanned": 25, "to_scan": 100}},
  {"address": "http://10.9.0.3:1", "id": "leaver", "state": "leaving", "ring_share": 0.25,
   "sync": {"keys_copied": 7, "note": "text is ignored"}},
  {"address": "http://10.9.0.4:1", "id": "odd", "state": "quarantined", "ring_share": 0.25, "sync": null}
]}"""


def test_dashboard_renders_new_states_and_sync_progress(browser):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    ui = ROOT / "manager" / "ui"
    files = {
        "/ui": ("text/html", ui / "index.html"),
        "/ui/app.js": ("text/javascript", ui / "app.js"),
        "/ui/style.css": ("text/css", ui / "style.css"),
        "/ui/favicon.svg": ("image/svg+xml", ui / "favicon.svg"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in files:
                kind, path = files[self.path]
                body = path.read_bytes()
            elif self.path == "/cluster":
                kind, body = "application/json", FUTURE_CLUSTER
            elif self.path == "/metrics":
                kind, body = "text/plain", b""
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver = browser
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/ui")
        wait_for("four rows", lambda: len(rows(driver)) == 4)
        got = rows(driver)
        assert set(got) == {"old-style", "syncer", "leaver", "odd"}, got
        assert got["syncer"] == ("syncing", "–") and got["leaver"][0] == "leaving"

        snap = snapshot(driver)
        # Counts with a total: a progress bar at 25 % and the counts.
        assert snap["syncer"]["sync_width"] == "25%", snap["syncer"]
        assert snap["syncer"]["sync_pct"] == "25.0%", snap["syncer"]
        assert "bytes copied 2.0 KiB" in snap["syncer"]["sync_text"], snap["syncer"]
        # Counts without a total: the counts, no bar.
        assert snap["leaver"]["sync_width"] is None and snap["leaver"]["sync_text"] == "keys copied 7", snap["leaver"]
        # An unknown state is shown as it is, in the neutral style.
        assert snap["odd"]["state"] == "quarantined" and "state-other" in snap["odd"]["state_class"], snap["odd"]
        assert not snap["odd"]["has_sync"]
        assert snap["old-style"]["instance"] == "abcdef01"
        arcs = driver.execute_script(
            "return Array.from(document.querySelectorAll('#ring .arc')).map((a) => a.getAttribute('class'))")
        assert sorted(arcs) == ["arc state-leaving", "arc state-other", "arc state-syncing", "arc state-up"], arcs
        assert driver.find_element(By.ID, "s-up").text == "1 / 4"
        assert severe_logs(driver) == []
    finally:
        server.shutdown()
        server.server_close()
