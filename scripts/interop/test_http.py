"""The HTTP front door with real clients: curl -x http://, https_proxy, Python requests and
PySocks' HTTP proxy type, on the port that serves SOCKS too.

Run by scripts/test; IDENTGATE_BIN names the binary under test. An HTTPS server with a
throw-away certificate on loopback stands for the destination; every test checks what
arrived and what the audit log says.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

import jsonschema
import requests
import socks

from peers import BINARY, Gateway, HTTPServer, TCPServer, echo, free_port, recv_exactly

USER, PASSWORD = "alice", "s3cret-pass"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = json.load(open(os.path.join(ROOT, "docs", "audit-log.schema.json")))
HELLO = b"hello through identgate\n"


def run(command, input=None, env=None, timeout=60):
    return subprocess.run(command, input=input, capture_output=True, timeout=timeout, env=env)


class HTTPProxyTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.TemporaryDirectory(prefix="identgate-http-")
        cls.certificate = os.path.join(cls.folder.name, "localhost.pem")
        cls.key = os.path.join(cls.folder.name, "localhost.key")
        made = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", cls.key, "-out", cls.certificate])
        assert made.returncode == 0, made.stderr
        line = run([BINARY, "passwd", USER], input=PASSWORD.encode() + b"\n")
        assert line.returncode == 0, line.stderr
        cls.password_file = os.path.join(cls.folder.name, "passwords")
        with open(cls.password_file, "wb") as out:
            out.write(line.stdout)
        cls.deny_all = os.path.join(cls.folder.name, "deny.policy")
        with open(cls.deny_all, "w") as out:
            out.write("deny from any label \"nothing goes\"\n")

    @classmethod
    def tearDownClass(cls):
        cls.folder.cleanup()

    def https(self):
        return HTTPServer(tls=(self.certificate, self.key))

    def curl(self, gateway, url, *extra, env=None):
        """curl through the gateway as an HTTP proxy; returns (exit status, body, CONNECT's status)."""
        result = run(["curl", "-sS", "--max-time", "20", "--cacert", self.certificate, "-w", "\n%{http_connect}",
                      *extra, url], env=env)
        body, _, connect_status = result.stdout.rpartition(b"\n")
        return result.returncode, body, int(connect_status or 0), result.stderr.decode() + gateway.output()

    def decisions(self, gateway):
        return [r for r in gateway.audit_records() if r.get("event") == "decision"]

    def test_curl_connect_to_https(self):
        with self.https() as server, Gateway() as gateway:
            url = f"https://localhost:{server.port}/"
            status, body, connect, detail = self.curl(gateway, url, "-x", f"http://{gateway.address}")
            self.assertEqual((status, body, connect), (0, HELLO, 200), detail)
            # https_proxy, as clients are configured at an egress point.
            env = dict(os.environ, https_proxy=f"http://{gateway.address}")
            status, body, connect, detail = self.curl(gateway, url, env=env)
            self.assertEqual((status, body, connect), (0, HELLO, 200), detail)
            # And SOCKS on the same port, meanwhile.
            status, body, _, detail = self.curl(gateway, url, "--socks5-hostname", gateway.address)
            self.assertEqual((status, body), (0, HELLO), detail)
            self.assertEqual(gateway.stop(), 0)
            decisions = self.decisions(gateway)
            self.assertEqual([(d["socks"], d["command"], d["verdict"], d["reply"]) for d in decisions],
                             [("http", "connect", "allow", 200)] * 2 + [("socks5", "connect", "allow", 0)])
            self.assertEqual([(d.get("httpMethod"), d.get("httpTarget")) for d in decisions],
                             [("CONNECT", None)] * 2 + [(None, None)])
            ends = [r for r in gateway.audit_records() if r.get("event") == "session-end"]
            self.assertEqual(len(ends), 3, "every allowed session ends with one record")
            self.assertTrue(all(e.get("bytesToClient", 0) > len(HELLO) for e in ends), ends)
            for record in gateway.audit_records():
                jsonschema.validate(record, SCHEMA)
            # The auditor's view: the report counts requests by protocol.
            page = os.path.join(self.folder.name, "report.html")
            made = run([BINARY, "audit", "report", gateway.audit_log, "--html", page])
            self.assertEqual(made.returncode, 0, made.stderr)
            with open(page) as html:
                text = html.read()
            self.assertIn("http connect", text)
            self.assertIn("socks5 connect", text)

    def test_denied_destinations_get_403(self):
        with self.https() as server, Gateway("--policy", self.deny_all) as gateway:
            status, body, connect, detail = self.curl(
                gateway, f"https://localhost:{server.port}/", "-x", f"http://{gateway.address}")
            self.assertEqual((status, connect), (56, 403), detail)
            self.assertNotIn("nothing goes", detail.split("\n")[0], "the rule's label is not shown to the client")
            gateway.stop()
            self.assertEqual([(d["socks"], d["verdict"], d["reply"]) for d in self.decisions(gateway)], [("http", "deny", 403)])

    def test_proxy_user_basic(self):
        with self.https() as server, Gateway("--password-file", self.password_file) as gateway:
            url = f"https://localhost:{server.port}/"
            proxy = ["-x", f"http://{gateway.address}"]
            status, body, connect, detail = self.curl(gateway, url, *proxy, "--proxy-user", f"{USER}:{PASSWORD}")
            self.assertEqual((status, body, connect), (0, HELLO, 200), detail)
            for credentials in [f"{USER}:wrong", None]:
                with self.subTest(credentials=credentials):
                    extra = ["--proxy-user", credentials] if credentials else []
                    status, _, connect, detail = self.curl(gateway, url, *proxy, *extra)
                    self.assertEqual((status, connect), (56, 407), detail)
            # The challenge, as a client sees it.
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(f"CONNECT localhost:{server.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                answer = b""
                while chunk := client.recv(4096):
                    answer += chunk
            self.assertTrue(answer.startswith(b"HTTP/1.1 407 "), answer)
            self.assertIn(b'Proxy-Authenticate: Basic realm="identgate"', answer)
            gateway.stop()
            allowed = [d for d in self.decisions(gateway) if d["verdict"] == "allow"]
            self.assertEqual([(d["auth"], d.get("claimedUser")) for d in allowed], [("password", USER)])
            self.assertIn("password authentication failed", gateway.output())

    def test_python_requests(self):
        with self.https() as server, Gateway() as gateway:
            proxy = f"http://{gateway.address}"
            answer = requests.get(f"https://localhost:{server.port}/", proxies={"https": proxy},
                                  verify=self.certificate, timeout=20)
            self.assertEqual((answer.status_code, answer.content), (200, HELLO))

    def test_pysocks_http_proxy_type(self):
        with TCPServer(echo) as server, Gateway() as gateway:
            client = socks.socksocket()
            client.settimeout(10)
            client.set_proxy(socks.HTTP, "127.0.0.1", gateway.port)
            client.connect(("127.0.0.1", server.port))
            payload = os.urandom(100_000)
            client.sendall(payload)
            self.assertEqual(recv_exactly(client, len(payload)), payload)
            client.close()
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as refused:
                refused.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.0\r\n\r\n")
                self.assertTrue(refused.recv(100).startswith(b"HTTP/1.0 502 "), "HTTP/1.0 answered in kind")

    def test_curl_forwards_plain_http_to_two_hosts_over_one_connection(self):
        with HTTPServer() as first, HTTPServer(host="127.0.0.2") as second, Gateway() as gateway:
            result = run(["curl", "-sS", "--max-time", "20", "-x", f"http://{gateway.address}", "-w", "|%{num_connects}\n",
                          f"http://127.0.0.1:{first.port}/", f"http://127.0.0.2:{second.port}/"])
            self.assertEqual(result.returncode, 0, result.stderr.decode() + gateway.output())
            self.assertEqual(result.stdout, HELLO + b"|1\n" + HELLO + b"|0\n",
                             "both answers, the second over the kept-alive connection (no new connect)")
            gateway.stop()
            decisions = self.decisions(gateway)
            self.assertEqual([(d["socks"], d["destination"], d["verdict"], d["reply"]) for d in decisions],
                             [("http", "127.0.0.1", "allow", 200), ("http", "127.0.0.2", "allow", 200)])
            self.assertEqual([(d["httpMethod"], d["httpTarget"]) for d in decisions],
                             [("GET", f"http://127.0.0.1:{first.port}/"), ("GET", f"http://127.0.0.2:{second.port}/")])
            ends = [r for r in gateway.audit_records() if r.get("event") == "session-end"]
            self.assertEqual(sorted(e["session"] for e in ends), sorted(d["session"] for d in decisions))
            self.assertEqual([e.get("reply") for e in ends], [200, 200])
            self.assertEqual([e.get("bytesToClient") for e in ends], [len(HELLO)] * 2)

    def test_the_destination_connection_is_kept_for_the_next_request(self):
        with HTTPServer() as server, Gateway() as gateway:
            url = f"http://127.0.0.1:{server.port}/"
            result = run(["curl", "-sS", "--max-time", "20", "-x", f"http://{gateway.address}", url, url, url])
            self.assertEqual(result.stdout, HELLO * 3, result.stderr.decode() + gateway.output())
            self.assertEqual(server.server.connections, 1, "three requests, one connection to the destination")
            gateway.stop()
            decisions = self.decisions(gateway)
            ends = [r for r in gateway.audit_records() if r.get("event") == "session-end"]
            self.assertEqual(len(decisions), 3, "each request decided")
            self.assertEqual(sorted(e["session"] for e in ends), sorted(d["session"] for d in decisions))

    def test_forwarded_bodies_and_headers(self):
        payload = os.urandom(3 << 20)
        with HTTPServer() as server, Gateway() as gateway:
            proxy = f"http://{gateway.address}"
            body_file = os.path.join(self.folder.name, "payload")
            with open(body_file, "wb") as out:
                out.write(payload)
            headers_file = os.path.join(self.folder.name, "headers")
            # A 3 MiB upload both ways, with Expect: 100-continue (curl waits a second for
            # the 100 otherwise).
            result = run(["curl", "-sS", "--max-time", "20", "-x", proxy, "-H", "Expect: 100-continue",
                          "--expect100-timeout", "5", "--data-binary", f"@{body_file}", "-D", headers_file,
                          "-w", "%{time_total}", "-o", os.path.join(self.folder.name, "back"),
                          f"http://127.0.0.1:{server.port}/echo"])
            self.assertEqual(result.returncode, 0, result.stderr.decode() + gateway.output())
            self.assertLess(float(result.stdout), 4.0, "the 100 came from the gateway, not the timeout")
            with open(os.path.join(self.folder.name, "back"), "rb") as back:
                self.assertEqual(back.read(), payload)
            with open(headers_file) as h:
                text = h.read()
            self.assertIn("Via: 1.1 ", text)
            # What the destination saw: origin-form, Via, no proxy credentials or hop-by-hop fields.
            answer = requests.get(f"http://127.0.0.1:{server.port}/headers", proxies={"http": proxy},
                                  headers={"Proxy-Connection": "keep-alive", "Connection": "X-Private", "X-Private": "1",
                                           "X-Kept": "yes"}, timeout=20)
            self.assertEqual(answer.status_code, 200)
            seen = answer.text.lower()
            self.assertIn("via: 1.1 ", seen)
            self.assertIn("x-kept: yes", seen)
            for field in ("proxy-connection", "x-private", "proxy-authorization"):
                self.assertNotIn(field + ":", seen)
            self.assertEqual(answer.headers.get("Via", "").split()[0], "1.1")

    def test_pipelined_http10_and_close_framed_responses(self):
        def close_framed(server, connection):
            # An origin that frames its body by closing (no Content-Length, no chunking).
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100_000)

        def exchange(request, until_close=True):
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(request)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
                return answer

        with HTTPServer() as server, TCPServer(close_framed) as closing, Gateway() as gateway:
            get = f"GET http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            last = f"GET http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            # Three requests in one write: three answers, in order, then the close asked for.
            answer = exchange(get + get + last)
            self.assertEqual(answer.count(b"HTTP/1.1 200 OK\r\n"), 3, answer[:300])
            self.assertEqual(answer.count(HELLO), 3)
            # HTTP/1.0: answered in 1.0, and closed after.
            answer = exchange(f"GET http://127.0.0.1:{server.port}/ HTTP/1.0\r\n\r\n".encode())
            self.assertTrue(answer.startswith(b"HTTP/1.0 200 OK\r\n"), answer[:100])
            self.assertTrue(answer.endswith(HELLO))
            # A body framed by the origin's close reaches the client whole, then the close.
            answer = exchange(f"GET http://127.0.0.1:{closing.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertIn(b"Connection: close", head)
            self.assertEqual(body, b"x" * 100_000)
            gateway.stop()
            decisions = self.decisions(gateway)
            ends = [r for r in gateway.audit_records() if r.get("event") == "session-end"]
            self.assertEqual(len(decisions), 5)
            self.assertEqual(sorted(e["session"] for e in ends), sorted(d["session"] for d in decisions),
                             "every forwarded request ends with exactly one record")

    @unittest.skipUnless(shutil.which("chromium"), "needs chromium (scripts/test installs it)")
    def test_chromium_loads_a_page_of_60_images_over_https_and_http(self):
        """Headless Chromium with --proxy-server: the page and its 60 images, through CONNECT
        (HTTPS) and forwarding (HTTP), many requests in flight at once."""
        with self.https() as secure, HTTPServer() as plain, Gateway() as gateway:
            profile = os.path.join(self.folder.name, "chromium")
            for url in (f"https://127.0.0.1:{secure.port}/page", f"http://127.0.0.1:{plain.port}/page"):
                with self.subTest(url=url):
                    shown = run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 f"--user-data-dir={profile}", f"--proxy-server=http://{gateway.address}",
                                 "--proxy-bypass-list=<-loopback>", "--ignore-certificate-errors",
                                 "--virtual-time-budget=15000", "--dump-dom", url], timeout=120)
                    self.assertIn(b"loaded 60", shown.stdout, shown.stderr.decode()[-2000:] + gateway.output()[-2000:])
            gateway.stop()
            decisions = self.decisions(gateway)
            forwarded = [d for d in decisions if d.get("httpMethod") == "GET"]
            self.assertGreaterEqual(len(forwarded), 61, "the page and each image decided")
            self.assertTrue(any(d.get("httpMethod") == "CONNECT" for d in decisions))
            self.assertTrue(all(d["verdict"] == "allow" for d in decisions))

    def test_a_body_longer_than_declared_and_metrics_by_protocol(self):
        """Bytes past a declared Content-Length are the next request's start: unreadable,
        so 400 and the close; nothing of them reaches the destination. The metrics count
        HTTP sessions apart from SOCKS ones."""
        from test_attacks import metric
        metrics_port = free_port()
        with HTTPServer() as server, Gateway("--metrics-listen", f"127.0.0.1:{metrics_port}") as gateway:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(f"POST http://127.0.0.1:{server.port}/echo HTTP/1.1\r\nHost: x\r\n"
                               "Content-Length: 5\r\n\r\nhelloSMUGGLED-GARBAGE\r\n\r\n".encode())
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200])
            self.assertTrue(answer.endswith(b"HTTP/1.1 400 Bad Request\r\n" + answer.split(b"HTTP/1.1 400 Bad Request\r\n")[-1]))
            self.assertEqual(len(server.server.received), 1, "only the declared five bytes were a request")
            self.assertEqual(metric(metrics_port, 'identgate_sessions_started_total{command="connect",version="http"}'), 1)
            self.assertEqual(metric(metrics_port, 'identgate_sessions_started_total{command="connect",version="socks5"}'), 0)

    def test_idle_timeout_and_later_heads_are_bounded(self):
        """--idle-timeout ends a forwarding connection whose destination says nothing, with
        its end on record; a later request's head has the first one's bounds (431)."""
        with TCPServer(lambda server, connection: time.sleep(8)) as silent, HTTPServer() as server, \
                Gateway("--idle-timeout", "1s") as gateway:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                started = time.monotonic()
                client.sendall(f"GET http://127.0.0.1:{silent.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                self.assertEqual(client.recv(100), b"", "closed by the idle timeout")
                self.assertLess(time.monotonic() - started, 5)
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                get = f"GET http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\n"
                client.sendall((get + "\r\n" + get + "X-A: b\r\n" * 101 + "\r\n").encode())
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100])
                self.assertIn(b"HTTP/1.1 431 ", answer)
            gateway.stop()
            ends = [r for r in gateway.audit_records() if r.get("event") == "session-end"]
            self.assertTrue(any("idle timeout" in e.get("reason", "") for e in ends), ends)

    def test_forwarding_denied_is_403(self):
        with HTTPServer() as server, self.https() as secure, TCPServer(echo) as raw, \
                Gateway("--policy", self.deny_all) as gateway:
            result = run(["curl", "-sS", "--max-time", "20", "-x", f"http://{gateway.address}", "-o", "/dev/null",
                          "-w", "%{http_code}", f"http://127.0.0.1:{server.port}/"])
            self.assertEqual(result.stdout, b"403", result.stderr.decode() + gateway.output())
            self.assertEqual(server.server.received, [])
            # Every kind of client hears the 403: requests forwarding and through CONNECT,
            # PySocks' HTTP type.
            proxy = f"http://{gateway.address}"
            answer = requests.get(f"http://127.0.0.1:{server.port}/", proxies={"http": proxy}, timeout=20)
            self.assertEqual(answer.status_code, 403)
            with self.assertRaisesRegex(requests.exceptions.ProxyError, "403"):
                requests.get(f"https://localhost:{secure.port}/", proxies={"https": proxy}, verify=self.certificate,
                             timeout=20)
            client = socks.socksocket()
            client.settimeout(10)
            client.set_proxy(socks.HTTP, "127.0.0.1", gateway.port)
            with self.assertRaisesRegex(socks.GeneralProxyError, "403"):
                client.connect(("127.0.0.1", raw.port))
            client.close()
            self.assertEqual(raw.connections, 0, "nothing reached the destination")

    def test_smuggling_and_control_characters(self):
        with Gateway("--password-file", self.password_file, "--methods", "password") as gateway:
            for request in [
                b"CONNECT localhost:443 HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"CONNECT localhost:443 HTTP/1.1\nHost: x\n\n",
            ]:
                with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                    client.sendall(request)
                    self.assertTrue(client.recv(100).startswith(b"HTTP/1.1 400 "), request)
            forged = base64.b64encode(b"eve\xe2\x80\xae\ninjected:pw").decode()
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(f"CONNECT localhost:443 HTTP/1.1\r\nProxy-Authorization: Basic {forged}\r\n\r\n".encode())
                self.assertTrue(client.recv(100).startswith(b"HTTP/1.1 400 "), "a user name with a newline")
            bidi = base64.b64encode("mallory\u202e:pw".encode()).decode()
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(f"CONNECT localhost:443 HTTP/1.1\r\nProxy-Authorization: Basic {bidi}\r\n\r\n".encode())
                self.assertTrue(client.recv(100).startswith(b"HTTP/1.1 407 "))
            gateway.stop()
            self.assertNotIn("\u202e", gateway.output())
            self.assertIn("mallory\\u{202E}", gateway.output())


if __name__ == "__main__":
    unittest.main()
