"""Metrics with a real Prometheus (Debian's): it scrapes `--metrics-listen` on loopback
while real clients make known requests (allowed, denied, SOCKS4 92 and 93 with an identd
the test runs, a connect refused); Prometheus' HTTP API must then report each counter's
value, the counts must agree with the audit log, and `promtool check metrics` must find
nothing wrong in the exposition. `/healthz`: 200 when serving, 503 while the audit log
fails closed (a full tmpfs), 200 again after."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from peers import FakeIdentd, FullDisk, Gateway, HTTPServer, TCPServer, echo, free_port, socks5_connect, wait_for_port

POLICY = """
ident from 127.0.0.0/8 timeout 2s
deny connect to 127.0.0.1 port {denied} label "closed port"
allow connect version socks4 ident label "verified"
allow connect version socks5 label "socks5"
"""


def http_get(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def received(connection):
    """The first bytes the peer sends; nothing if it closes (or resets) instead."""
    try:
        return connection.recv(100)
    except ConnectionResetError:
        return b""


def curl(proxy, url):
    return subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-x", proxy, url],
                          capture_output=True, timeout=30).returncode


class Prometheus:
    """Debian's prometheus, scraping one target every second, on loopback, stopped at exit."""

    def __init__(self, target):
        self.folder = tempfile.mkdtemp(prefix="identgate-prometheus-")
        config = os.path.join(self.folder, "prometheus.yml")
        with open(config, "w") as out:
            out.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: identgate
    static_configs:
      - targets: ["{target}"]
""")
        self.port = free_port()
        self.log = open(os.path.join(self.folder, "log"), "w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.folder}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, deadline=60)

    def query(self, expression):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body, _ = http_get(url)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"{expression}: {status} {body[:300]!r}")
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__"))): float(r["value"][1])
                for r in answer["data"]["result"]}

    def value(self, expression):
        results = self.query(expression)
        return sum(results.values()) if results else 0.0

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@unittest.skipUnless(shutil.which("prometheus") and shutil.which("promtool") and shutil.which("curl"),
                     "needs prometheus and promtool (scripts/test installs them) and curl")
class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-metrics-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.metrics_port = free_port()
        self.identd_port = free_port()

    def gateway(self, policy=None, *args):
        extra = ("--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--ident-port", str(self.identd_port))
        if policy is not None:
            path = os.path.join(self.folder, "test.policy")
            with open(path, "w") as out:
                out.write(policy)
            extra += ("--policy", path)
        return Gateway(*extra, *args)

    def metrics_url(self, path):
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def test_prometheus_scrapes_the_counts_of_known_requests(self):
        denied_port, refused_port = free_port(), free_port()
        with HTTPServer() as web, self.gateway(POLICY.format(denied=denied_port)) as gateway:
            prometheus = Prometheus(f"127.0.0.1:{self.metrics_port}")
            self.addCleanup(prometheus.close)
            proxy5 = f"socks5://127.0.0.1:{gateway.port}"
            page = f"http://127.0.0.1:{web.port}/"
            self.assertEqual(curl(proxy5, page), 0)
            self.assertEqual(curl(proxy5, page), 0)
            self.assertEqual(curl(proxy5, f"http://127.0.0.1:{denied_port}/"), 97, "denied by 'closed port'")
            self.assertEqual(curl(proxy5, f"http://127.0.0.1:{refused_port}/"), 97, "allowed, then the connect is refused")
            # The metrics endpoint is not reachable through the SOCKS port.
            self.assertEqual(curl(proxy5, self.metrics_url("/metrics")), 97)
            identd = FakeIdentd("alice", port=self.identd_port)
            try:
                self.assertEqual(curl(f"socks4://alice@127.0.0.1:{gateway.port}", page), 0, "90: identd says alice")
                self.assertEqual(curl(f"socks4://bob@127.0.0.1:{gateway.port}", page), 97, "93: identd says alice, not bob")
            finally:
                identd.close()
            self.assertEqual(curl(f"socks4://alice@127.0.0.1:{gateway.port}", page), 97, "92: no identd")

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                records = [r for r in gateway.audit_records() if r["event"] == "decision"]
                if len(records) >= 8:
                    break
                time.sleep(0.1)
            replies = sorted(r["reply"] for r in records)
            self.assertEqual(replies, [0, 0, 0, 2, 2, 90, 92, 93], records)

            # Prometheus' own view, once it has scraped after the last request.
            expected_sessions = {("connect", "socks5"): 5, ("connect", "socks4"): 3}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                started = prometheus.query("identgate_sessions_started_total > 0")
                if {(dict(k)["command"], dict(k)["version"]): v for k, v in started.items()} == expected_sessions:
                    break
                time.sleep(0.5)
            self.assertEqual({(dict(k)["command"], dict(k)["version"]): v for k, v in started.items()}, expected_sessions)

            decisions = prometheus.query("identgate_decisions_total")
            from_audit = {}
            for record in records:
                rule = record.get("ruleLabel") or (f"line {record['ruleLine']}" if "ruleLine" in record else "final deny")
                key = (("reply", str(record["reply"])), ("rule", rule), ("verdict", record["verdict"]))
                from_audit[key] = from_audit.get(key, 0) + 1
            self.assertEqual({k: v for k, v in decisions.items() if v}, from_audit, "Prometheus agrees with the audit log")
            self.assertEqual(prometheus.value('identgate_decisions_total{verdict="deny",rule="closed port"}'), 1)
            self.assertEqual(prometheus.value('identgate_decisions_total{reply="93"}'), 1)
            self.assertEqual(prometheus.value('identgate_decisions_total{reply="92"}'), 1)
            self.assertEqual(prometheus.value('identgate_ident_lookups_total{outcome="user-id"}'), 2)
            self.assertEqual(prometheus.value('identgate_ident_lookups_total{outcome="unreachable"}'), 1)
            self.assertEqual(prometheus.value("identgate_ident_lookup_duration_seconds_count"), 3)
            self.assertEqual(prometheus.value('identgate_connect_failures_total{kind="refused"}'), 1)
            self.assertEqual(prometheus.value("identgate_connect_duration_seconds_count"), 3, "three connects succeeded")
            self.assertEqual(prometheus.value("identgate_decision_duration_seconds_count"), 8)
            self.assertEqual(prometheus.value("identgate_sessions_open"), 0, "every client has left")
            body = len(b"hello through identgate\n")
            self.assertGreater(prometheus.value('identgate_relayed_bytes_total{direction="to_client"}'), 3 * body)
            self.assertGreater(prometheus.value('identgate_relayed_bytes_total{direction="from_client"}'), 0)
            self.assertEqual(prometheus.value("identgate_audit_fail_closed"), 0)
            self.assertEqual(prometheus.value('up{job="identgate"}'), 1)
            sha = next(r for r in gateway.audit_records() if r["event"] == "gateway-start")["policySHA256"]
            self.assertEqual(prometheus.value(f'identgate_policy_info{{sha256="{sha}"}}'), 1)

            # The exposition itself passes promtool, and has no label a client chose.
            status, exposition, headers = http_get(self.metrics_url("/metrics"))
            self.assertEqual(status, 200)
            self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"))
            check = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
            self.assertEqual(check.stdout + check.stderr, b"", "promtool has nothing to say")
            for chosen in (b"alice", b"bob", str(web.port).encode()):
                self.assertNotIn(chosen, exposition)

    def test_endpoint_answers_only_what_it_serves_and_is_bounded(self):
        with self.gateway() as gateway:
            self.assertEqual(http_get(self.metrics_url("/healthz"))[:2], (200, b"ok\n"))
            status, body, _ = http_get(self.metrics_url("/metrics"), method="HEAD")
            self.assertEqual((status, body), (200, b""))
            self.assertEqual(http_get(self.metrics_url("/metrics"), method="POST")[0], 405)
            self.assertEqual(http_get(self.metrics_url("/other"))[0], 404)
            # A request that is not HTTP gets 400 and a close, and the gateway carries on.
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as raw:
                raw.sendall(b"\x00\x01 garbage\r\n\r\n")
                self.assertTrue(raw.recv(100).startswith(b"HTTP/1.1 400"))
            # At most 32 connections at once: the 33rd takes the slot of the one that has
            # waited longest without a request, which is closed.
            held = [socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) for _ in range(32)]
            try:
                time.sleep(0.3)
                with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as extra:
                    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    self.assertTrue(extra.recv(100).startswith(b"HTTP/1.1 200"), "a newcomer is answered")
                self.assertEqual(received(held[0]), b"", "the longest-waiting connection gave up its slot")
            finally:
                for connection in held:
                    connection.close()
            self.assertEqual(self.health_within(5, 200)[0], 200, "room again once they left")
            # The SOCKS port does not serve HTTP, and the gateway still serves SOCKS.
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as socks:
                socks.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                self.assertNotIn(b"identgate_", received(socks))

    @unittest.skipUnless(os.geteuid() == 0, "mounting a small tmpfs needs root")
    def test_health_follows_the_audit_log(self):
        full = FullDisk(self.folder)
        self.addCleanup(full.unmount)
        with TCPServer(echo) as server, self.gateway(None, "--audit-log", os.path.join(full.path, "audit.jsonl")) as gateway:
            self.assertEqual(http_get(self.metrics_url("/healthz"))[0], 200)
            full.fill()
            # Requests until the log cannot take their records: then /healthz says so.
            for _ in range(200):
                try:
                    socks5_connect(gateway, "127.0.0.1", server.port).close()
                except (AssertionError, OSError, EOFError):
                    break
            status, body = self.health_within(10, 503)
            self.assertEqual(status, 503, body)
            self.assertIn(b"audit log", body)
            exposition = http_get(self.metrics_url("/metrics"))[1].decode()
            self.assertIn("identgate_audit_fail_closed 1.0", exposition)
            failures = [line for line in exposition.splitlines() if line.startswith("identgate_audit_write_failures_total ")]
            self.assertTrue(failures and int(failures[0].split()[1]) >= 1, failures)
            full.empty()
            self.assertEqual(self.health_within(10, 200)[0], 200, "healthy again once it can write")

    def health_within(self, seconds, expected):
        """/healthz's status and body, once it is `expected` or `seconds` have passed."""
        deadline = time.monotonic() + seconds
        while True:
            status, body, _ = http_get(self.metrics_url("/healthz"))
            if status == expected or time.monotonic() > deadline:
                return status, body
            time.sleep(0.1)
