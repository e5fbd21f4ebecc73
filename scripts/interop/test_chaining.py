"""Chaining to parents (`via` in the policy) with real parents started by the test:
another identgate, Dante and microsocks with a password; curl and a raw client at the
front; fail-over from a dead parent; a parent's refusal passed on; 1 MiB each way
SHA-256 checked; the audit records name the route and the parent that carried it."""

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from peers import Gateway, HTTPServer, TCPServer, echo, free_port, recv_exactly, wait_for_port


def socks5_request(port, host, destination_port):
    client = socket.create_connection(("127.0.0.1", port), timeout=20)
    client.sendall(b"\x05\x01\x00")
    assert recv_exactly(client, 2) == b"\x05\x00"
    client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + destination_port.to_bytes(2, "big"))
    return client, recv_exactly(client, 10)[1]


def curl(gateway, url, flag="--socks5-hostname"):
    return subprocess.run(["curl", "-sS", "--max-time", "20", flag, gateway.address, url],
                          capture_output=True, text=True, timeout=60)


class ChainingTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.TemporaryDirectory(prefix="identgate-chain-")
        self.addCleanup(self.folder.cleanup)
        self.echo = TCPServer(echo)
        self.addCleanup(self.echo.__exit__, None, None, None)
        self.http = HTTPServer()
        self.addCleanup(self.http.__exit__, None, None, None)

    def policy(self, text):
        path = os.path.join(self.folder.name, f"p{len(os.listdir(self.folder.name))}.policy")
        with open(path, "w") as out:
            out.write(text)
        return path

    def gateway(self, *args):
        gateway = Gateway(*args)
        self.addCleanup(gateway.__exit__, None, None, None)
        return gateway

    def audit(self, gateway, event, count=1):
        deadline = time.monotonic() + 5
        while True:
            records = [r for r in gateway.audit_records() if r.get("event") == event]
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def mebibyte_each_way(self, port):
        client, code = socks5_request(port, "127.0.0.1", self.echo.port)
        self.assertEqual(code, 0)
        with client:
            data = os.urandom(1 << 20)
            sender = threading.Thread(target=client.sendall, args=(data,))
            sender.start()
            back = recv_exactly(client, len(data))
            sender.join()
        self.assertEqual(hashlib.sha256(back).digest(), hashlib.sha256(data).digest())

    def test_two_identgates_with_fail_over_and_the_route_in_the_audit_log(self):
        parent = self.gateway("--policy", self.policy("allow from 127.0.0.0/8\n"))
        dead = free_port()
        child_policy = self.policy(
            f"net loopback = 127.0.0.0/8\n"
            f"allow from @loopback to 127.0.0.1 port {self.echo.port}, {self.http.port} "
            f"via socks5://127.0.0.1:{dead}, socks5h://127.0.0.1:{parent.port} label \"via the site gateway\"\n"
            f"expect allow from 127.0.0.1 to 127.0.0.1:{self.http.port} via socks5://127.0.0.1:{dead}\n")
        child = self.gateway("--policy", child_policy)
        result = curl(child, f"http://127.0.0.1:{self.http.port}/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.mebibyte_each_way(child.port)
        from peers import BINARY
        explained = subprocess.run([BINARY, "explain", child_policy, "--from", "127.0.0.1", "--to",
                                    f"127.0.0.1:{self.http.port}"], capture_output=True, text=True, timeout=30)
        self.assertIn(f"route: via socks5://127.0.0.1:{dead}, then socks5h://127.0.0.1:{parent.port} "
                      "(the gateway resolves host names)", explained.stdout)
        decision = self.audit(child, "decision")[0]
        self.assertEqual(decision["route"], [f"socks5://127.0.0.1:{dead}", f"socks5h://127.0.0.1:{parent.port}"])
        ended = self.audit(child, "session-end", 2)
        self.assertTrue(all(r.get("parent") == f"socks5h://127.0.0.1:{parent.port} (attempt 2)" for r in ended), ended)
        self.assertGreaterEqual(len(self.audit(parent, "decision", 2)), 2, "the parent decided the requests too")

    def test_requests_a_via_rule_does_not_cover_go_direct(self):
        parent = self.gateway("--policy", self.policy("allow from 127.0.0.0/8\n"))
        child = self.gateway("--policy", self.policy(
            f"allow to 127.0.0.1 port {self.http.port} via socks5://127.0.0.1:{parent.port}\n"
            f"allow from 127.0.0.0/8\n"))
        self.assertEqual(curl(child, f"http://127.0.0.1:{self.http.port}/").returncode, 0)
        self.mebibyte_each_way(child.port)
        parent_decisions = self.audit(parent, "decision")
        self.assertEqual([d["destinationPort"] for d in parent_decisions], [self.http.port])

    def test_a_parents_refusal_is_passed_on(self):
        parent = self.gateway("--policy", self.policy("deny to any port 9\nallow from 127.0.0.0/8\n"))
        child = self.gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks5://127.0.0.1:{parent.port}\n"))
        for port, expected in [(9, 0x02), (free_port(), 0x05)]:
            with self.subTest(port=port):
                client, code = socks5_request(child.port, "127.0.0.1", port)
                client.close()
                self.assertEqual(code, expected)

    def test_a_route_through_the_gateway_itself_is_warned_about(self):
        port = free_port()
        with Gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks5://127.0.0.1:{port}\n"), port=port) as loop:
            self.assertIn("routes through this gateway itself (socks5://127.0.0.1:", loop.output())
        from peers import BINARY
        checked = subprocess.run([BINARY, "check", self.policy(f"allow from 127.0.0.0/8 via socks5://127.0.0.1:{port}\n"),
                                  "--listen", f"127.0.0.1:{port}", "--strict"], capture_output=True, text=True, timeout=30)
        self.assertEqual(checked.returncode, 1)
        self.assertRegex(checked.stdout, rf":1:24: warning: a loop: socks5://127.0.0.1:{port} is where this gateway listens")

    def bind_through(self, child_port, scheme="socks5"):
        """A BIND through the child: its first reply must be where the parent listens; a
        peer connecting there gives the second reply and a relay to the client."""
        from peers import BINARY
        probe = subprocess.Popen([BINARY, "probe", f"{scheme}://127.0.0.1:{child_port}", "--command", "bind",
                                  "--to", "127.0.0.1:10", "--timeout", "10"], stdout=subprocess.PIPE, text=True)
        try:
            lines = ""
            while "first reply" not in lines:
                line = probe.stdout.readline()
                self.assertTrue(line, lines)
                lines += line
            import re
            match = re.search(r"first reply \(listening\): (0x00|90) .*bound ([\d.]+):(\d+)", lines)
            self.assertIsNotNone(match, lines)
            host, port = match.group(2), int(match.group(3))
            if host == "0.0.0.0":
                host = "127.0.0.1"
            socket.create_connection((host, port), timeout=5).close()
            rest = probe.stdout.read()
            self.assertIn("second reply (the peer)", rest)
            self.assertEqual(probe.wait(timeout=15), 0, lines + rest)
            return port
        finally:
            probe.kill()
            probe.wait()
            probe.stdout.close()

    def test_bind_through_an_identgate_parent(self):
        parent = self.gateway("--policy", self.policy("allow from 127.0.0.0/8\n"))
        child = self.gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks5://127.0.0.1:{parent.port}\n"))
        self.bind_through(child.port)
        self.bind_through(child.port, scheme="socks4")
        binds = [r for r in self.audit(parent, "decision", 2) if r.get("command") == "bind"]
        self.assertTrue(binds, "the parent listened")
        ended = self.audit(child, "session-end", 2)
        self.assertTrue(all(r.get("parent") == f"socks5://127.0.0.1:{parent.port} (attempt 1)" for r in ended), ended)

    def test_socks4_and_socks4a_identgate_parents_for_connect_and_bind(self):
        parent = self.gateway("--policy", self.policy("allow from 127.0.0.0/8\n"))
        for scheme in ("socks4", "socks4a"):
            with self.subTest(scheme=scheme):
                with Gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via {scheme}://127.0.0.1:{parent.port}\n")) as child:
                    result = curl(child, f"http://localhost:{self.http.port}/")
                    self.assertEqual(result.returncode, 0, result.stderr)
                    self.mebibyte_each_way(child.port)
                    self.bind_through(child.port)
        # The parent's writer writes in batches: wait for the socks4a records themselves,
        # not merely for some decisions (the socks4 ones come first).
        deadline = time.monotonic() + 5
        while True:
            names = [r["destination"] for r in parent.audit_records()
                     if r.get("event") == "decision" and r.get("socks") == "socks4a"]
            if "localhost" in names or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertIn("localhost", names, "socks4a passed the name up")

    def test_udp_through_a_socks5_parent(self):
        parent = self.gateway("--policy", self.policy("allow from 127.0.0.0/8\n"))
        child = self.gateway("--policy", self.policy(
            f"allow from 127.0.0.0/8 via socks4://127.0.0.1:{free_port()}, socks5://127.0.0.1:{parent.port}\n"))
        from test_bind_udp import UDPEcho, udp_associate
        with UDPEcho() as destination:
            control, relay = udp_associate(child.port)
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + destination.port.to_bytes(2, "big")
            with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", 0))
                udp.settimeout(0.2)
                payload = os.urandom(1200)
                back = None
                # The first datagram starts the parent's association and is not sent.
                for _ in range(25):
                    udp.sendto(header + payload, relay)
                    try:
                        back = udp.recvfrom(65535)[0]
                        break
                    except socket.timeout:
                        continue
                self.assertIsNotNone(back, "a reply came back through the parent")
                self.assertEqual(back[:10], header)
                self.assertEqual(back[10:], payload)
        udp_records = [r for r in self.audit(parent, "decision") if r.get("command") == "udp"]
        self.assertTrue(udp_records, "the parent decided the destination")

    def test_udp_through_socks4_parents_only_is_refused_not_sent_direct(self):
        child = self.gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks4://127.0.0.1:{free_port()}\n"))
        from peers import BINARY
        from test_bind_udp import UDPEcho
        with UDPEcho() as destination:
            result = subprocess.run([BINARY, "probe", f"socks5://{child.address}", "--command", "udp",
                                     "--to", f"127.0.0.1:{destination.port}", "--send", "x", "--timeout", "1"],
                                    capture_output=True, text=True, timeout=30)
            self.assertIn("nothing came back", result.stdout)
        record = [r for r in self.audit(child, "decision") if r.get("command") == "udp"][0]
        self.assertIn("UDP needs a SOCKS5 parent", record["reason"])

    def test_a_parent_that_stalls_is_bounded_by_the_connect_timeout(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        self.addCleanup(silent.close)
        child = self.gateway("--connect-timeout", "1s", "--policy", self.policy(
            f"allow from 127.0.0.1 via socks5://127.0.0.1:{silent.getsockname()[1]}\n"))
        started = time.monotonic()
        client, code = socks5_request(child.port, "127.0.0.1", self.echo.port)
        client.close()
        self.assertEqual(code, 0x01)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("no answer within --connect-timeout", child.output())

    def test_no_usable_parent_is_a_general_failure(self):
        child = self.gateway("--policy", self.policy(
            f"allow from 127.0.0.0/8 via socks5://127.0.0.1:{free_port()}, socks4://127.0.0.1:{free_port()}\n"))
        client, code = socks5_request(child.port, "127.0.0.1", self.echo.port)
        client.close()
        self.assertEqual(code, 0x01)
        self.assertIn("no parent could be used", child.output())

    @unittest.skipUnless(shutil.which("danted") and os.geteuid() == 0, "needs dante-server and root")
    def test_dante_as_the_parent(self):
        port = free_port()
        config = os.path.join(self.folder.name, "danted.conf")
        with open(config, "w") as out:
            out.write(f"logoutput: /dev/null\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
                      "clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
                      "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\nsocks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
                      "socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: bindreply }\n")
        dante = subprocess.Popen(["danted", "-f", config, "-p", os.path.join(self.folder.name, "pid")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (dante.terminate(), dante.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        # Debian's Dante 1.4.2 answers SOCKS4a with 91 (curl --socks4a too): not tried.
        for scheme in ("socks5", "socks5h", "socks4"):
            with self.subTest(scheme=scheme):
                child = Gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via {scheme}://127.0.0.1:{port}\n"))
                with child:
                    result = curl(child, f"http://localhost:{self.http.port}/")
                    self.assertEqual(result.returncode, 0, result.stderr)
                    self.mebibyte_each_way(child.port)
                    if scheme == "socks5":
                        self.bind_through(child.port)
        # A parent's 91 (Dante refuses SOCKS4a) reaches our SOCKS5 client as 0x01, the code in the log.
        with Gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks4a://127.0.0.1:{port}\n")) as child:
            with socket.create_connection(("127.0.0.1", child.port), timeout=20) as client:
                client.sendall(b"\x05\x01\x00")
                self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                client.sendall(b"\x05\x01\x00\x03\x09localhost" + self.echo.port.to_bytes(2, "big"))
                self.assertEqual(recv_exactly(client, 10)[1], 0x01)
            self.assertIn("the parent answered 91 rejected or failed", child.output())

    @unittest.skipUnless(shutil.which("microsocks"), "needs microsocks")
    def test_microsocks_with_a_password_as_the_parent(self):
        port = free_port()
        micro = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", "bob", "-P", "hunter2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (micro.terminate(), micro.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        inline = self.gateway("--policy", self.policy(
            f"allow from 127.0.0.0/8 via socks5://bob:hunter2@127.0.0.1:{port}\n"))
        self.assertIn("is written in the policy", inline.output(), "check warns about an inline password")
        self.assertEqual(curl(inline, f"http://127.0.0.1:{self.http.port}/", "--socks5").returncode, 0)
        secret = os.path.join(self.folder.name, "parent.pw")
        with open(secret, "w") as out:
            out.write("hunter2\n")
        child = self.gateway("--policy", self.policy(
            f"allow from 127.0.0.0/8 via socks5://bob@127.0.0.1:{port} password-file {secret}\n"))
        self.assertNotIn("is written in the policy", child.output())
        self.assertEqual(curl(child, f"http://127.0.0.1:{self.http.port}/", "--socks5").returncode, 0)
        self.mebibyte_each_way(child.port)
        wrong = self.gateway("--policy", self.policy(f"allow from 127.0.0.0/8 via socks5://bob:nope@127.0.0.1:{port}\n"))
        client, code = socks5_request(wrong.port, "127.0.0.1", self.echo.port)
        client.close()
        self.assertEqual(code, 0x01)
        self.assertIn("refused our credentials", wrong.output())


if __name__ == "__main__":
    unittest.main()
