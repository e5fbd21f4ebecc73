"""`identgate probe` against identgate, Dante and microsocks: every step, the reply with
its meaning, and the exit status, for every reply code each server can be made to give."""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from peers import BINARY, dante_settings, echo, FakeIdentd, free_port, Gateway, TCPServer, wait_for_port
from test_bind_udp import UDPEcho


def probe(*args, timeout=30):
    return subprocess.run([BINARY, "probe", *args], capture_output=True, text=True, timeout=timeout)


POLICY = """
net loopback = 127.0.0.0/8
ident from @loopback timeout 2s
deny  to any port 9                                  label "discard is closed"
allow version socks4 user alice ident                label "alice, verified"
allow from @loopback to any port 1-8, 10-65535 version socks5, socks4a
"""


class ProbeIdentgateTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.TemporaryDirectory(prefix="identgate-probe-")
        self.addCleanup(self.folder.cleanup)
        self.policy = os.path.join(self.folder.name, "probe.policy")
        with open(self.policy, "w") as out:
            out.write(POLICY)
        self.server = TCPServer(echo)
        self.addCleanup(self.server.__exit__, None, None, None)
        self.identd = FakeIdentd("mallory")
        self.addCleanup(self.identd.close)
        self.gateway = Gateway("--policy", self.policy, "--ident-port", str(self.identd.port))
        self.addCleanup(self.gateway.__exit__, None, None, None)
        self.url = f"socks5://{self.gateway.address}"

    def test_http_connect(self):
        """probe speaks an HTTP proxy's CONNECT too: each answer with its meaning and the
        same exit statuses as for SOCKS."""
        refused = probe(f"http://{self.gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
        self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
        self.assertIn("answer: HTTP/1.1 403 Forbidden (The gateway's policy does not allow this request.)", refused.stdout)
        line = subprocess.run([BINARY, "passwd", "alice"], input=b"pw\n", capture_output=True)
        passwords = os.path.join(self.folder.name, "passwords")
        with open(passwords, "wb") as out:
            out.write(line.stdout)
        with Gateway() as open_gateway, Gateway("--password-file", passwords) as closed_gateway:
            granted = probe(f"http://{open_gateway.address}", "--to", f"127.0.0.1:{self.server.port}", "--send", "hello")
            self.assertEqual(granted.returncode, 0, granted.stdout + granted.stderr)
            self.assertIn("answer: HTTP/1.1 200 Connection established\n", granted.stdout)
            self.assertIn("received: 5 bytes: hello", granted.stdout)
            unreachable = probe(f"http://{open_gateway.address}", "--to", f"127.0.0.1:{free_port()}")
            self.assertEqual(unreachable.returncode, 1)
            self.assertIn("502 Bad Gateway (The destination could not be reached.)", unreachable.stdout)
            challenged = probe(f"http://{closed_gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(challenged.returncode, 2, challenged.stdout)
            self.assertIn("407 Proxy Authentication Required", challenged.stdout)
            with_password = probe(f"http://alice:pw@{closed_gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(with_password.returncode, 0, with_password.stdout)

    def test_a_grant_with_every_step_and_the_echo(self):
        result = probe(self.url, "--to", f"127.0.0.1:{self.server.port}", "--send", "hello")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"\d+\.\d ms  tcp connect: ")
        self.assertIn("method: 0x00 no authentication", result.stdout)
        self.assertIn("reply: 0x00 succeeded; bound 127.0.0.1:", result.stdout)
        self.assertIn("received: 5 bytes: hello", result.stdout)
        # What the destination sent is escaped as everywhere else: a right-to-left
        # override cannot reorder the terminal's line (issue 24).
        hostile = probe(self.url, "--to", f"127.0.0.1:{self.server.port}", "--send", "ab\u202ecd\u2066e\x1b[31m")
        self.assertIn("ab\\u{202E}cd\\u{2066}e\\u{1B}[31m", hostile.stdout)
        self.assertNotIn("\u202e", hostile.stdout)
        four = probe(f"socks4a://{self.gateway.address}", "--to", f"localhost:{self.server.port}")
        self.assertEqual(four.returncode, 0, four.stdout)
        self.assertIn("reply: 90 granted", four.stdout)
        data = json.loads(probe(self.url, "--to", f"127.0.0.1:{self.server.port}", "--json").stdout)
        self.assertEqual((data["outcome"], data["exit"], data["reply"]["code"]), ("granted", 0, 0))
        self.assertEqual([s["step"] for s in data["steps"]], ["tcp connect", "method", "reply"])

    def test_every_refusal_identgate_gives(self):
        closed = free_port()
        cases = [
            (self.url, "127.0.0.1:9", 1, "0x02 connection not allowed by ruleset"),
            (self.url, f"127.0.0.1:{closed}", 1, "0x05 connection refused"),
            (f"socks5h://{self.gateway.address}", "no-such-host.invalid:80", 1, "0x04 host unreachable"),
            (f"socks4://{self.gateway.address}", "127.0.0.1:9", 1, "91 rejected or failed"),
            (f"socks4://alice@{self.gateway.address}", f"127.0.0.1:{self.server.port}", 1, "93 user-ids differ"),
        ]
        for url, target, status, meaning in cases:
            with self.subTest(url=url, target=target):
                result = probe(url, "--to", target)
                self.assertEqual(result.returncode, status, result.stdout + result.stderr)
                self.assertIn(meaning, result.stdout)

    def test_92_when_identd_cannot_be_reached(self):
        with Gateway("--policy", self.policy, "--ident-port", str(free_port())) as gateway:
            result = probe(f"socks4://alice@{gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(result.returncode, 1)
            self.assertIn("92 identd not reachable", result.stdout)

    def test_udp_through_the_relay(self):
        with UDPEcho() as destination:
            result = probe(self.url, "--command", "udp", "--to", f"127.0.0.1:{destination.port}", "--send", "ping")
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("received 4 bytes: ping", result.stdout)

    def test_bind_shows_both_replies(self):
        process = subprocess.Popen([BINARY, "probe", self.url, "--command", "bind", "--to", "127.0.0.1:10"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            first = process.stdout.readline() + process.stdout.readline() + process.stdout.readline()
            line = process.stdout.readline()
            self.assertIn("first reply (listening): 0x00 succeeded", line, first)
            host, port = re.search(r"bound ([\d.]+):(\d+)", line).groups()
            with socket.create_connection((host, int(port)), timeout=5):
                rest = process.stdout.read()
            self.assertIn("second reply (the peer): 0x00 succeeded", rest)
            self.assertEqual(process.wait(timeout=10), 0)
        finally:
            process.kill()
            process.wait()
            process.stdout.close()

    def test_authentication_and_unreachable_and_time_out(self):
        users = os.path.join(self.folder.name, "users")
        with open(users, "w") as out:
            subprocess.run([BINARY, "passwd", "alice"], input="secret\n", text=True, check=True, stdout=out, timeout=30)
        secret = os.path.join(self.folder.name, "secret")
        with open(secret, "w") as out:
            out.write("secret\n")
        with Gateway("--policy", self.policy, "--password-file", users) as gateway:
            good = probe(f"socks5://alice@{gateway.address}", "--password-file", secret, "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(good.returncode, 0, good.stdout)
            self.assertIn("username/password: accepted", good.stdout)
            wrong = probe(f"socks5://alice:wrong@{gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(wrong.returncode, 2)
            self.assertIn("username/password: refused", wrong.stdout)
            none = probe(f"socks5://{gateway.address}", "--to", f"127.0.0.1:{self.server.port}")
            self.assertEqual(none.returncode, 2)
            self.assertIn("0xFF no acceptable methods", none.stdout)
        unreachable = probe(f"socks5://127.0.0.1:{free_port()}", "--to", "127.0.0.1:80")
        self.assertEqual(unreachable.returncode, 3)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        self.addCleanup(silent.close)
        stalled = probe(f"socks5://127.0.0.1:{silent.getsockname()[1]}", "--to", "127.0.0.1:80", "--timeout", "1")
        self.assertEqual(stalled.returncode, 5)
        self.assertIn("no answer in 1.0 s", stalled.stdout)
        bad = probe("ftp://127.0.0.1:1080", "--to", "127.0.0.1:80")
        self.assertEqual(bad.returncode, 64)
        self.assertIn("at character 1: unknown scheme 'ftp'", bad.stderr)


@unittest.skipUnless(shutil.which("danted") and shutil.which("microsocks") and os.geteuid() == 0,
                     "needs dante-server and microsocks (scripts/test installs them) and root")
class ProbeOtherServersTest(unittest.TestCase):
    def setUp(self):
        self.server = TCPServer(echo)
        self.addCleanup(self.server.__exit__, None, None, None)
        self.folder = tempfile.TemporaryDirectory(prefix="identgate-peers-")
        self.addCleanup(self.folder.cleanup)

    def start(self, command, port):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (process.terminate(), process.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        return process

    def test_dante(self):
        port = free_port()
        config = os.path.join(self.folder.name, "danted.conf")
        with open(config, "w") as out:
            out.write(dante_settings(port) + """client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks block { from: 127.0.0.0/8 to: 127.0.0.1/32 port = 9 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
""")
        self.start(["danted", "-f", config, "-p", os.path.join(self.folder.name, "pid")], port)
        for scheme in ("socks5", "socks4"):
            with self.subTest(scheme=scheme):
                granted = probe(f"{scheme}://127.0.0.1:{port}", "--to", f"127.0.0.1:{self.server.port}", "--send", "hi")
                self.assertEqual(granted.returncode, 0, granted.stdout)
                self.assertIn("received: 2 bytes: hi", granted.stdout)
        blocked = probe(f"socks5://127.0.0.1:{port}", "--to", "127.0.0.1:9")
        self.assertEqual(blocked.returncode, 1)
        self.assertIn("0x02 connection not allowed by ruleset", blocked.stdout)
        refused = probe(f"socks5://127.0.0.1:{port}", "--to", f"127.0.0.1:{free_port()}")
        self.assertEqual(refused.returncode, 1)
        self.assertRegex(refused.stdout, r"reply: 0x0[1-5] ")
        rejected = probe(f"socks4://127.0.0.1:{port}", "--to", "127.0.0.1:9")
        self.assertIn("91 rejected or failed", rejected.stdout)

    def test_microsocks_with_a_password(self):
        port = free_port()
        self.start(["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", "bob", "-P", "hunter2"], port)
        good = probe(f"socks5://bob:hunter2@127.0.0.1:{port}", "--to", f"127.0.0.1:{self.server.port}", "--send", "x")
        self.assertEqual(good.returncode, 0, good.stdout)
        self.assertIn("method: 0x02 username/password", good.stdout)
        wrong = probe(f"socks5://bob:wrong@127.0.0.1:{port}", "--to", f"127.0.0.1:{self.server.port}")
        self.assertEqual(wrong.returncode, 2, wrong.stdout)
        anonymous = probe(f"socks5://127.0.0.1:{port}", "--to", f"127.0.0.1:{self.server.port}")
        self.assertEqual(anonymous.returncode, 2, anonymous.stdout)


if __name__ == "__main__":
    unittest.main()
