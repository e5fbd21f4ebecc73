"""`limit` lines in the running gateway, with curl and raw SOCKS clients from several
loopback addresses: sessions per client, per user and per UDP association, new sessions
per minute, the refusal codes (SOCKS4 91, SOCKS5 0x02), the audit record naming the
limit, a session's place given back when its client leaves, and counts kept across a
reload."""

import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from peers import BINARY, Gateway, TCPServer, echo, recv_exactly

POLICY = """
net loopback = 127.0.0.0/8
allow from @loopback label "loopback"
limit sessions 2 per client from 127.0.0.2, 127.0.0.5 label "two each"
limit rate 3/m per client from 127.0.0.3 label "three a minute"
limit sessions 1 per user version socks4 label "one per user"
limit udp sessions 1 per client label "one association each"
"""


def socks5_request(gateway, source, host, port, command=1):
    """A SOCKS5 request (CONNECT by default) from `source`; returns the socket and the reply code."""
    client = socket.socket()
    client.settimeout(10)
    client.bind((source, 0))
    client.connect((gateway.host, gateway.port))
    client.sendall(b"\x05\x01\x00")
    assert recv_exactly(client, 2) == b"\x05\x00"
    client.sendall(bytes([5, command, 0, 1]) + socket.inet_aton(host) + port.to_bytes(2, "big"))
    reply = recv_exactly(client, 10)
    return client, reply[1]


def socks4_request(gateway, source, host, port, user):
    client = socket.socket()
    client.settimeout(10)
    client.bind((source, 0))
    client.connect((gateway.host, gateway.port))
    client.sendall(b"\x04\x01" + port.to_bytes(2, "big") + socket.inet_aton(host) + user + b"\x00")
    reply = recv_exactly(client, 8)
    return client, reply[1]


class LimitsTest(unittest.TestCase):
    def setUp(self):
        # Cleanups run last first, also when a later step of setUp fails.
        self.folder = tempfile.TemporaryDirectory(prefix="identgate-limits-")
        self.addCleanup(self.folder.cleanup)
        self.policy = os.path.join(self.folder.name, "limits.policy")
        with open(self.policy, "w") as out:
            out.write(POLICY)
        self.server = TCPServer(echo)
        self.addCleanup(self.server.__exit__, None, None, None)
        self.gateway = Gateway("--policy", self.policy)
        self.addCleanup(self.gateway.__exit__, None, None, None)
        self.held = []
        self.addCleanup(lambda: [connection.close() for connection in self.held])

    def hold(self, connection, code):
        self.held.append(connection)
        self.assertIn(code, (0, 90), "an admitted session is granted")
        connection.sendall(b"ping")
        self.assertEqual(recv_exactly(connection, 4), b"ping")

    def limit_records(self, line, count=1):
        """The decision records naming the limit on `line`, once the writer has written
        `count` of them (it writes in batches, a little after the refusal)."""
        deadline = time.monotonic() + 5
        while True:
            records = [r for r in self.gateway.audit_records() if r.get("limitLine") == line]
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def test_sessions_per_client_refuse_with_the_ruleset_code_and_come_back_when_a_client_leaves(self):
        for _ in range(2):
            self.hold(*socks5_request(self.gateway, "127.0.0.2", "127.0.0.1", self.server.port))
        refused, code = socks5_request(self.gateway, "127.0.0.2", "127.0.0.1", self.server.port)
        refused.close()
        self.assertEqual(code, 0x02, "SOCKS5: connection not allowed by ruleset")
        # curl says why, too.
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--interface", "127.0.0.2", "--socks5", self.gateway.address,
             f"http://127.0.0.1:{self.server.port}/"], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 97, result.stderr)
        self.assertIn("(2)", result.stderr, "curl names the reply code")
        # Another client has its own count.
        self.hold(*socks5_request(self.gateway, "127.0.0.5", "127.0.0.1", self.server.port))

        # One client leaves: its place comes back within a second or so.
        self.held.pop(0).close()
        deadline = time.monotonic() + 5
        while True:
            connection, code = socks5_request(self.gateway, "127.0.0.2", "127.0.0.1", self.server.port)
            if code == 0:
                self.hold(connection, code)
                break
            connection.close()
            self.assertLess(time.monotonic(), deadline, "the departed client's session was given back")
            time.sleep(0.05)

        records = self.limit_records(4, count=2)
        self.assertGreaterEqual(len(records), 2)
        record = records[0]
        self.assertEqual(record["verdict"], "deny")
        self.assertEqual(record["reply"], 2)
        self.assertEqual(record["ruleLine"], 3, "the allowing rule stays named")
        self.assertEqual(record["limitLabel"], "two each")
        self.assertEqual(record["client"].split(":")[0], "127.0.0.2")
        self.assertIn("limit reached: 2 open sessions per client (client 127.0.0.2)", record["reason"])
        shown = subprocess.run([BINARY, "audit", "show", "--verdict", "deny", self.gateway.audit_log],
                               capture_output=True, text=True, timeout=30)
        self.assertIn('limit line 4 "two each"', shown.stdout)
        # Replay asks what the rules decide: a limit's refusal depends on a load the log
        # does not hold, so the same policy changes nothing.
        replayed = subprocess.run([BINARY, "audit", "replay", "--policy", self.policy, self.gateway.audit_log],
                                  capture_output=True, text=True, timeout=30)
        self.assertRegex(replayed.stdout, r"\d+ decisions replayed under .*; 0 would change")

    def test_socks4_gets_91_and_claimed_names_are_counted_per_client(self):
        """A SOCKS4 USERID is only claimed: under a per-user limit it counts against the
        claiming client's share of unverified names, never against the named user's."""
        self.hold(*socks4_request(self.gateway, "127.0.0.7", "127.0.0.1", self.server.port, b"alice"))
        self.hold(*socks4_request(self.gateway, "127.0.0.8", "127.0.0.1", self.server.port, b"alice"))
        refused, code = socks4_request(self.gateway, "127.0.0.8", "127.0.0.1", self.server.port, b"bob")
        refused.close()
        self.assertEqual(code, 91)
        record = self.limit_records(6)[0]
        self.assertEqual(record["claimedUser"], "bob")
        self.assertIn("(unverified names from client 127.0.0.8)", record["reason"])

    def test_new_sessions_per_minute(self):
        for _ in range(3):
            connection, code = socks5_request(self.gateway, "127.0.0.3", "127.0.0.1", self.server.port)
            connection.close()
            self.assertEqual(code, 0)
        refused, code = socks5_request(self.gateway, "127.0.0.3", "127.0.0.1", self.server.port)
        refused.close()
        self.assertEqual(code, 0x02)
        self.assertIn("3 new sessions a minute per client", self.limit_records(5)[0]["reason"])

    def test_udp_associations_per_client(self):
        self.held.append(socks5_request(self.gateway, "127.0.0.9", "0.0.0.0", 0, command=3)[0])
        refused, code = socks5_request(self.gateway, "127.0.0.9", "0.0.0.0", 0, command=3)
        refused.close()
        self.assertEqual(code, 0x02)
        record = self.limit_records(7)[0]
        self.assertEqual(record["command"], "udp")
        self.assertNotIn("ruleLine", record, "no rule decides an ASSOCIATE")

    def test_explain_shows_each_limit_at_a_posed_load(self):
        result = subprocess.run([BINARY, "explain", self.policy, "--from", "127.0.0.2", "--to", "127.0.0.1:80",
                                 "--open", "2"], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("limits, with 2 open and 0 just started", result.stdout)
        self.assertRegex(result.stdout, r"line 4 +reached +2 open sessions per client \(client 127.0.0.2\) \"two each\"")
        self.assertRegex(result.stdout, r"line 7 +not counted +1 open session per client: command connect is not udp")
        self.assertIn('decided by line 3 "loopback", refused by the limit on line 4 "two each": deny (reply 0x02', result.stdout)

    def test_open_sessions_stay_counted_across_a_reload(self):
        for _ in range(2):
            self.hold(*socks5_request(self.gateway, "127.0.0.2", "127.0.0.1", self.server.port))
        self.gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "policy reloaded" not in self.gateway.output():
            self.assertLess(time.monotonic(), deadline, self.gateway.output())
            time.sleep(0.05)
        refused, code = socks5_request(self.gateway, "127.0.0.2", "127.0.0.1", self.server.port)
        refused.close()
        self.assertEqual(code, 0x02, "the two sessions opened before the reload still count")


if __name__ == "__main__":
    unittest.main()
