"""Interoperability tests of SOCKS CONNECT with real clients: curl and ncat.

Run by scripts/test after `swift build`; IDENTGATE_BIN names the binary under test.
Every test relays real data and compares SHA-256 digests on both sides.
"""

import hashlib
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from peers import (
    BINARY, STAY_ROOT, HTTPServer, Gateway, TCPServer, echo, recv_exactly, rss_kib, socks5_connect,
)

MIB = 1 << 20
USER, PASSWORD = "alice", "s3cret-pass"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def run(command, input=None, timeout=60):
    return subprocess.run(command, input=input, capture_output=True, timeout=timeout)


class Workspace(unittest.TestCase):
    """A temporary folder with 1 MiB of random data and a password file."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.TemporaryDirectory(prefix="identgate-interop-")
        cls.payload = os.urandom(MIB)
        cls.payload_file = os.path.join(cls.folder.name, "payload")
        with open(cls.payload_file, "wb") as out:
            out.write(cls.payload)
        line = run([BINARY, "passwd", USER], input=PASSWORD.encode() + b"\n")
        assert line.returncode == 0, line.stderr
        cls.password_file = os.path.join(cls.folder.name, "passwords")
        with open(cls.password_file, "wb") as out:
            out.write(line.stdout)

    @classmethod
    def tearDownClass(cls):
        cls.folder.cleanup()

    def path(self, name):
        return os.path.join(self.folder.name, name)


class CurlTests(Workspace):
    def post_through(self, gateway, proxy_arguments, url_host="127.0.0.1", http=None):
        """POSTs the payload through the gateway to the echo endpoint; checks both ways."""
        out, headers = self.path("out"), self.path("headers")
        result = run(
            ["curl", "-sS", "--max-time", "30", *proxy_arguments, "--data-binary", f"@{self.payload_file}",
             "-H", "Content-Type: application/octet-stream", "-D", headers, "-o", out,
             f"http://{url_host}:{http.port}/echo"]
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode() + gateway.output())
        with open(headers) as h:
            received = [line.split(":", 1)[1].strip() for line in h if line.lower().startswith("x-received-sha256")]
        self.assertEqual(received, [sha256(self.payload)], "the server got the whole upload")
        with open(out, "rb") as body:
            self.assertEqual(sha256(body.read()), sha256(self.payload), "the client got the whole download")

    def test_curl_socks4_socks4a_socks5_socks5_hostname(self):
        with HTTPServer() as http, Gateway() as gateway:
            # 4a and 5-hostname send the name; `localhost` may resolve to ::1 first,
            # where nothing listens: the gateway must go on to 127.0.0.1.
            for option, host in [("--socks4", "127.0.0.1"), ("--socks4a", "localhost"),
                                 ("--socks5", "127.0.0.1"), ("--socks5-hostname", "localhost")]:
                with self.subTest(option=option):
                    self.post_through(gateway, [option, gateway.address], url_host=host, http=http)
            self.assertEqual(gateway.stop(), 0, "SIGTERM ends the gateway with status 0")

    def test_curl_through_an_http_connect_tunnel(self):
        """curl's HTTP proxy tunnel (-p: CONNECT for plain http too), to an address and to a
        name: under the direct driver the first is carried by its loops, the second by
        SwiftNIO's front door; 1 MiB each way checked either way."""
        with HTTPServer() as http, Gateway() as gateway:
            for host in ("127.0.0.1", "localhost"):
                with self.subTest(host=host):
                    self.post_through(gateway, ["-p", "-x", f"http://{gateway.address}"], url_host=host, http=http)
            self.assertEqual(gateway.stop(), 0)
            decisions = [record for record in gateway.audit_records() if record["event"] == "decision"]
        self.assertEqual([(d.get("socks"), d.get("httpMethod"), d.get("verdict")) for d in decisions],
                         [("http", "CONNECT", "allow")] * 2)

    def test_curl_socks5h_with_password(self):
        with HTTPServer() as http, Gateway("--password-file", self.password_file) as gateway:
            self.post_through(gateway, ["--proxy", f"socks5h://{USER}:{PASSWORD}@{gateway.address}"],
                              url_host="localhost", http=http)

    def test_wrong_password_is_refused_and_nothing_relayed(self):
        with HTTPServer() as http, Gateway("--password-file", self.password_file) as gateway:
            result = run(["curl", "-sS", "--max-time", "10", "--proxy",
                          f"socks5h://{USER}:wrong@{gateway.address}", f"http://127.0.0.1:{http.port}/"])
            self.assertEqual(result.returncode, 97, "curl: proxy handshake error")
            result = run(["curl", "-sS", "--max-time", "10", "--proxy",
                          f"socks5h://{gateway.address}", f"http://127.0.0.1:{http.port}/"])
            self.assertEqual(result.returncode, 97, "no password offered: no acceptable method")
            self.assertEqual(http.server.received, [])
            self.assertIn("password authentication failed", gateway.output())

    def test_ipv6_listener_and_destination(self):
        with HTTPServer(host="::1") as http, Gateway(host="::1") as gateway:
            for proxy in [f"socks5://{gateway.address}", f"socks5h://{gateway.address}"]:
                with self.subTest(proxy=proxy):
                    self.post_through(gateway, ["--proxy", proxy], url_host="[::1]", http=http)


class NcatTests(Workspace):
    def relay(self, gateway_arguments, ncat_arguments):
        with TCPServer(echo) as server, Gateway(*gateway_arguments) as gateway:
            result = run(["ncat", "--proxy", gateway.address, *ncat_arguments, "127.0.0.1", str(server.port)],
                         input=self.payload)
            self.assertEqual(result.returncode, 0, result.stderr.decode() + gateway.output())
            self.assertEqual(server.bytes_received, len(self.payload), "the server got every byte")
            self.assertEqual(sha256(result.stdout), sha256(self.payload), "ncat got the echo back")

    def test_ncat_socks4_with_userid(self):
        self.relay([], ["--proxy-type", "socks4", "--proxy-auth", USER])

    def test_ncat_socks5_with_password(self):
        self.relay(["--password-file", self.password_file],
                   ["--proxy-type", "socks5", "--proxy-auth", f"{USER}:{PASSWORD}"])

    def test_ncat_socks5_wrong_password_relays_nothing(self):
        with TCPServer(echo) as server, Gateway("--password-file", self.password_file) as gateway:
            result = run(["ncat", "--proxy", gateway.address, "--proxy-type", "socks5",
                          "--proxy-auth", f"{USER}:nope", "127.0.0.1", str(server.port)], input=b"secret")
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(server.connections, 0)


class BackpressureTest(unittest.TestCase):
    """64 MiB from a fast server to a client that does not read: the gateway must stop
    reading from the server rather than buffer, and later deliver every byte."""

    TOTAL = 64 * MIB
    CHUNK = 64 * 1024
    # Allowed growth of the gateway's resident memory while the client stalls.
    BOUND_KIB = 8 * 1024

    def test_gateway_memory_stays_bounded(self):
        block = os.urandom(self.CHUNK)
        sent = [0]
        done = threading.Event()

        def flood(server, connection):
            for _ in range(self.TOTAL // self.CHUNK):
                connection.sendall(block)
                sent[0] += len(block)
            done.set()

        with TCPServer(flood) as server, Gateway() as gateway:
            client = socks5_connect(gateway, "127.0.0.1", server.port)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            time.sleep(0.5)
            before = rss_kib(gateway.process.pid)
            time.sleep(3)  # the client reads nothing
            stalled_at = sent[0]
            after = rss_kib(gateway.process.pid)
            growth = after - before
            print(f"\n  backpressure: server had sent {stalled_at / MIB:.1f} MiB of {self.TOTAL // MIB} MiB "
                  f"while the client read nothing; gateway RSS {before} KiB -> {after} KiB (+{growth} KiB)")
            self.assertFalse(done.is_set(), "the server could not finish: the stall reached it")
            self.assertLess(stalled_at, 32 * MIB)
            self.assertLess(growth, self.BOUND_KIB)

            # Now read everything: no byte may be lost.
            client.settimeout(30)
            digest = hashlib.sha256()
            received = 0
            while received < self.TOTAL:
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
            client.close()
            self.assertEqual(received, self.TOTAL)
            expected = hashlib.sha256()
            for _ in range(self.TOTAL // self.CHUNK):
                expected.update(block)
            self.assertEqual(digest.hexdigest(), expected.hexdigest())


class HalfCloseTest(unittest.TestCase):
    """The client shuts down its sending side; the server answers only after that EOF."""

    def test_response_after_client_eof(self):
        def answer_after_eof(server, connection):
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
            connection.sendall(hashlib.sha256(data).digest() * 1000)

        with TCPServer(answer_after_eof) as server, Gateway() as gateway:
            client = socks5_connect(gateway, "127.0.0.1", server.port)
            client.sendall(b"question")
            client.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            client.close()
            self.assertEqual(answer, hashlib.sha256(b"question").digest() * 1000)


class EarlyBytesTest(unittest.TestCase):
    """Bytes a client sends right behind its request, before the reply (pipelining
    clients, a TLS ClientHello after CONNECT), reach the destination and are counted in
    the session-end record like every later byte."""

    def test_bytes_sent_with_the_request_are_relayed_and_counted(self):
        payload = b"sent-with-the-request"
        with TCPServer(echo) as server, Gateway() as gateway:
            for kind in ("socks4", "http"):
                if kind == "socks4":
                    request = struct.pack("!BBH4s", 4, 1, server.port, socket.inet_aton("127.0.0.1")) + b"u\0"
                    reply_length = 8
                else:
                    request = f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
                    reply_length = len(b"HTTP/1.1 200 Connection established\r\n\r\n")
                with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                    client.sendall(request + payload)
                    answer = recv_exactly(client, reply_length + len(payload))
                    self.assertEqual(answer[reply_length:], payload, kind)
            self.assertEqual(gateway.stop(), 0)
            ends = [record for record in gateway.audit_records() if record["event"] == "session-end"]
        self.assertEqual([end.get("bytesFromClient") for end in ends], [len(payload)] * 2, ends)
        self.assertEqual([end.get("bytesToClient") for end in ends], [len(payload)] * 2, ends)


class StartupErrorTests(unittest.TestCase):
    def test_bad_listen_address_is_a_clear_error(self):
        result = run([BINARY, "run", "--listen", "localhost:1080"])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"--listen", result.stderr)

    def test_missing_password_file_is_a_clear_error(self):
        result = run([BINARY, "run", *STAY_ROOT, "--audit-log", "-", "--listen", "127.0.0.1:0", "--password-file", "/nonexistent/users"])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"/nonexistent/users", result.stderr)

    def test_port_in_use_is_a_clear_error(self):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            result = run([BINARY, "run", *STAY_ROOT, "--audit-log", "-", "--listen", f"127.0.0.1:{port}"], timeout=20)
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"cannot listen", result.stderr)


if __name__ == "__main__":
    unittest.main()
