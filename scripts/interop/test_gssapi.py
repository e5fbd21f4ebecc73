"""RFC 1961 GSS-API against a real MIT KDC on loopback and a client on the real MIT
library (python-gssapi): every protection level with 1 MiB each way, SHA-256 checked;
a frame altered on the wire; no ticket, an expired ticket, a ticket for another
service; principals, realms and short names in the policy; the audit record."""

import hashlib
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from peers import BINARY, Gateway, HTTPServer, TCPServer, echo, recv_exactly
from test_bind_udp import UDPEcho

try:
    import gssapi  # noqa: F401
    from kerberos import REALM, GSSAPIError, GSSSocksClient, Realm
    HAVE_KERBEROS = True
except ImportError:
    HAVE_KERBEROS = False

POLICY = f"""
net loopback = 127.0.0.0/8
gssapi local-realm {REALM}
deny  auth gssapi user bob                       label "bob is not allowed out"
allow auth gssapi from @loopback user alice      label "alice by her short name"
allow auth gssapi from @loopback user *@{REALM}  label "any principal of the realm"
ident from @loopback timeout 2s
allow auth none from @loopback user alice ident  label "alice from a host whose identd says so"

expect allow from 127.0.0.1 to 127.0.0.1:80 auth gssapi user alice@{REALM}
expect allow from 127.0.0.1 to 127.0.0.1:80 auth gssapi user carol@{REALM}
expect deny  from 127.0.0.1 to 127.0.0.1:80 auth gssapi user bob@{REALM}
expect deny  from 127.0.0.1 to 127.0.0.1:80 auth gssapi user alice@OTHER.EXAMPLE
expect allow from 127.0.0.1 to 127.0.0.1:80 user alice ident alice
expect deny  from 127.0.0.1 to 127.0.0.1:80 user alice
"""


def one_mib():
    return os.urandom(1 << 20)


class Tamperer:
    """A TCP forwarder to the gateway that flips the last bit of the client's third
    RFC 1961 message of type 3 (the request is the first)."""

    def __init__(self, gateway):
        self.target = (gateway.host, gateway.port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.host, self.port = self.listener.getsockname()
        self.tampered = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with client, socket.create_connection(self.target) as upstream:
            threading.Thread(target=self.pipe, args=(upstream, client), daemon=True).start()
            stream = b""
            wrapped = 0
            while True:
                data = client.recv(65536)
                if not data:
                    break
                stream += data
                # The greeting (3 bytes), then whole messages: forward each, altering one.
                while True:
                    if stream[:1] == b"\x05" and len(stream) >= 3:
                        upstream.sendall(stream[:3])
                        stream = stream[3:]
                        continue
                    if len(stream) < 4:
                        break
                    length = struct.unpack("!H", stream[2:4])[0]
                    if len(stream) < 4 + length:
                        break
                    message, stream = bytearray(stream[:4 + length]), stream[4 + length:]
                    if message[1] == 3:
                        wrapped += 1
                        if wrapped == 3:
                            message[-1] ^= 0x01
                            self.tampered = True
                    upstream.sendall(bytes(message))
            upstream.shutdown(socket.SHUT_WR)

    def pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.listener.close()
        self.thread.join(timeout=10)


class GSSAPITest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not HAVE_KERBEROS:
            raise unittest.SkipTest("python-gssapi or MIT Kerberos is missing")
        cls.realm = Realm()
        cls.saved = dict(os.environ)
        os.environ.update({k: v for k, v in cls.realm.env.items() if k.startswith("KRB5")})
        cls.folder = tempfile.mkdtemp(prefix="identgate-gss-")
        cls.policy = os.path.join(cls.folder, "gss.policy")
        with open(cls.policy, "w") as out:
            out.write(POLICY)

    @classmethod
    def tearDownClass(cls):
        os.environ.clear()
        os.environ.update(cls.saved)
        cls.realm.close()

    def setUp(self):
        self.server = TCPServer(echo)
        self.addCleanup(self.server.__exit__, None, None, None)
        self.gateway = Gateway("--policy", self.policy, "--gssapi-keytab", self.realm.keytab)
        self.addCleanup(self.gateway.__exit__, None, None, None)

    def client(self, user="alice", **options):
        client = GSSSocksClient(self.gateway, self.realm.ticket(user), **options)
        self.addCleanup(client.close)
        return client

    def records(self, count=1):
        """The decision records, once at least `count` are written."""
        deadline = time.monotonic() + 5
        while True:
            decisions = [r for r in self.gateway.audit_records() if r.get("event") == "decision"]
            if len(decisions) >= count or time.monotonic() > deadline:
                return decisions
            time.sleep(0.05)

    def round_trip(self, client):
        """1 MiB to the echo server and back through the gateway, SHA-256 compared."""
        self.assertEqual(client.connect("127.0.0.1", self.server.port), 0)
        data = one_mib()
        sender = threading.Thread(target=client.send, args=(data,))
        sender.start()
        back = client.receive(len(data))
        sender.join()
        self.assertEqual(hashlib.sha256(back).hexdigest(), hashlib.sha256(data).hexdigest())

    def test_every_protection_level_relays_a_mebibyte_each_way(self):
        for level, name in [(0, "none"), (1, "integrity"), (2, "confidentiality")]:
            for nec in (False, True):
                with self.subTest(level=level, nec=nec):
                    client = self.client(level=level, nec=nec)
                    self.assertEqual(client.level, level)
                    self.round_trip(client)
                    client.close()
        record = self.records()[0]
        self.assertEqual(record["auth"], "gssapi")
        self.assertEqual(record["authOutcome"], "verified")
        self.assertEqual(record["claimedUser"], f"alice@{REALM}")
        self.assertEqual(record["gssMechanism"], "krb5")
        self.assertEqual(record["protection"], "none")
        self.assertEqual(record["ruleLine"], 5, "alice by her short name")
        self.assertEqual({r["protection"] for r in self.records(6)}, {"none", "integrity", "confidentiality"})

    def test_udp_datagrams_are_wrapped_both_ways(self):
        with UDPEcho() as destination:
            for level in (0, 1, 2):
                with self.subTest(level=level):
                    client = self.client(level=level)
                    client.send(b"\x05\x03\x00\x01" + bytes(6))
                    reply = client.receive(10)
                    self.assertEqual(reply[1], 0)
                    relay = (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))
                    header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + destination.port.to_bytes(2, "big")
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        udp.bind(("127.0.0.1", 0))
                        udp.settimeout(5)
                        payload = os.urandom(3000)
                        for _ in range(2):
                            datagram = header + payload
                            if level:
                                token = client.context.wrap(datagram, level == 2).message
                                datagram = struct.pack("!BBH", 1, 3, len(token)) + token
                            udp.sendto(datagram, relay)
                            back, _ = udp.recvfrom(65535)
                            if level:
                                self.assertEqual(back[:2], b"\x01\x03")
                                unwrapped = client.context.unwrap(back[4:])
                                self.assertEqual(unwrapped.encrypted, level == 2)
                                back = unwrapped.message
                            self.assertEqual(back[10:], payload)
                        if level:
                            # The same token again is a replay: dropped.
                            udp.sendto(datagram, relay)
                            udp.settimeout(0.5)
                            with self.assertRaises(socket.timeout):
                                udp.recvfrom(65535)
                    client.close()

    def test_a_half_sent_frame_meets_the_negotiation_deadline(self):
        with Gateway("--policy", self.policy, "--gssapi-keytab", self.realm.keytab, "--negotiate-timeout", "3s") as gateway:
            with socket.create_connection((gateway.host, gateway.port), timeout=10) as raw:
                raw.sendall(b"\x05\x01\x01")
                self.assertEqual(recv_exactly(raw, 2), b"\x05\x01")
                raw.sendall(b"\x01\x01\x00\x40abc")  # a 64-byte token, three bytes of it
                started = time.monotonic()
                self.assertEqual(recv_exactly(raw, 2), b"\x01\xff", "RFC 1961's abort")
                self.assertEqual(raw.recv(10), b"")
                self.assertLess(time.monotonic() - started, 8)

    def test_the_policy_raises_the_level_to_its_minimum(self):
        strict = os.path.join(self.folder, "strict.policy")
        with open(strict, "w") as out:
            out.write(POLICY + "gssapi require confidentiality\n")
        with Gateway("--policy", strict, "--gssapi-keytab", self.realm.keytab) as gateway:
            client = GSSSocksClient(gateway, self.realm.ticket("alice"), level=0)
            self.addCleanup(client.close)
            self.assertEqual(client.level, 2, "asked for none, granted confidentiality")
            self.assertEqual(client.connect("127.0.0.1", self.server.port), 0)
            client.send(b"ping")
            self.assertEqual(client.receive(4), b"ping")

    @unittest.skipUnless(os.geteuid() == 0, "needs root to drop privileges")
    def test_a_root_only_keytab_serves_after_the_privilege_drop(self):
        # The keytab stays root's (0600): its keys were copied before the drop. The
        # replay cache is written by the unprivileged user, in a directory it may write.
        os.chmod(self.realm.folder, 0o755)
        os.chmod(self.realm.keytab, 0o600)
        os.chmod(self.policy, 0o644)
        os.chmod(self.folder, 0o755)
        replay = os.path.join(self.realm.folder, "rcache")
        os.makedirs(replay, mode=0o1777, exist_ok=True)
        os.chmod(replay, 0o1777)
        saved = os.environ["KRB5RCACHEDIR"]
        os.environ["KRB5RCACHEDIR"] = replay
        try:
            with Gateway("--policy", self.policy, "--gssapi-keytab", self.realm.keytab, "--user", "nobody") as gateway:
                self.assertIn("privileges dropped", gateway.output())
                client = GSSSocksClient(gateway, self.realm.ticket("alice"), level=2)
                self.addCleanup(client.close)
                self.assertEqual(client.connect("127.0.0.1", self.server.port), 0)
                client.send(b"after the drop")
                self.assertEqual(client.receive(14), b"after the drop")
        finally:
            os.environ["KRB5RCACHEDIR"] = saved

    def test_a_man_in_the_middle_altering_a_frame_ends_the_session(self):
        """A forwarder between client and gateway flips one bit in the second wrapped
        message after the request: the gateway refuses it and closes, for each level."""
        for level in (1, 2):
            with self.subTest(level=level), Tamperer(self.gateway) as middle:
                client = GSSSocksClient(middle, self.realm.ticket("alice"), level=level)
                self.addCleanup(client.close)
                self.assertEqual(client.connect("127.0.0.1", self.server.port), 0)
                client.send(b"first")
                self.assertEqual(client.receive(5), b"first", "untouched: relayed")
                before = self.server.bytes_received
                client.send(b"second")
                client.socket.settimeout(5)
                self.assertEqual(client.socket.recv(100), b"", "the gateway closed the connection")
                self.assertEqual(self.server.bytes_received, before, "the altered message was not relayed")
                self.assertTrue(middle.tampered)
                client.close()

    def test_an_altered_frame_closes_the_session(self):
        client = self.client(level=1)
        self.assertEqual(client.connect("127.0.0.1", self.server.port), 0)
        wrapped = bytearray(client.context.wrap(b"x" * 100, False).message)
        wrapped[-1] ^= 0x01
        client.send_message(3, bytes(wrapped))
        client.socket.settimeout(5)
        self.assertEqual(client.socket.recv(100), b"", "the gateway closed the connection")
        self.assertEqual(self.server.bytes_received, 0, "nothing was relayed")
        deadline = time.monotonic() + 5
        while "per-message protection failed" not in self.gateway.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("per-message protection failed", self.gateway.output())
        # The session's one end record says why, and names the session (issue 24: the
        # record written by the protection handler had none, and came beside the relay's).
        decision = self.records(1)[-1]
        deadline = time.monotonic() + 5
        while True:
            ends = [r for r in self.gateway.audit_records()
                    if r.get("event") == "session-end" and r.get("session") == decision["session"]]
            if ends or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(ends), 1, ends)
        self.assertIn("GSS-API per-message protection failed", ends[0]["reason"])
        self.assertGreaterEqual(decision["session"], 1)

    def test_principals_short_names_and_realms_in_the_policy(self):
        client = self.client(user="bob")
        self.assertEqual(client.connect("127.0.0.1", self.server.port), 0x02, "bob is denied by his short name")
        carol = self.client(user="carol", level=1)
        self.round_trip(carol)
        lines = {r["claimedUser"]: r.get("ruleLine") for r in self.records(2)}
        self.assertEqual(lines[f"bob@{REALM}"], 4)
        self.assertEqual(lines[f"carol@{REALM}"], 6, "the realm rule")
        shown = subprocess.run([BINARY, "audit", "show", self.gateway.audit_log], capture_output=True, text=True, timeout=30)
        self.assertIn(f"carol@{REALM}", shown.stdout)

    def test_http_negotiate_with_curl(self):
        """curl --proxy-negotiate (SPNEGO, RFC 4559) with a ticket from the test KDC: the
        same keytab's HTTP/localhost keys, the same policy (auth gssapi, the principal),
        for a forwarded request and a CONNECT; bob is refused, no ticket is challenged."""
        hello = b"hello through identgate\n"
        with HTTPServer() as http:
            def curl(user, *extra):
                ccache = self.realm.ticket(user) if user else os.path.join(self.folder, "empty.ccache")
                return subprocess.run(
                    ["curl", "-sS", "--max-time", "20", "--proxy-negotiate", "-U", ":", "-x",
                     f"http://localhost:{self.gateway.port}", "-w", "|%{http_code}|%{http_connect}", *extra,
                     f"http://127.0.0.1:{http.port}/"],
                    env=dict(os.environ, KRB5CCNAME=ccache), capture_output=True, timeout=30)
            for tunnel in ([], ["-p"]):
                with self.subTest(tunnel=tunnel):
                    result = curl("alice", *tunnel)
                    self.assertEqual(result.stdout, hello + (b"|200|200" if tunnel else b"|200|000"),
                                     result.stderr.decode() + self.gateway.output())
            self.assertTrue(curl("bob").stdout.endswith(b"|403|000"), "bob: refused by the policy")
            # The listener also takes anonymous clients (none is offered): the policy refuses.
            self.assertTrue(curl(None).stdout.endswith(b"|403|000"))
            with Gateway("--policy", self.policy, "--gssapi-keytab", self.realm.keytab, "--methods", "gssapi") as strict:
                with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as client:
                    client.sendall(f"GET http://127.0.0.1:{http.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    answer = client.recv(4096)
                self.assertTrue(answer.startswith(b"HTTP/1.1 407 "), answer)
                self.assertIn(b"Proxy-Authenticate: Negotiate\r\n", answer)
                self.assertNotIn(b"Basic", answer, "no password file: Basic is not offered")
        decisions = [r for r in self.records(4) if r.get("socks") == "http"]
        self.assertEqual([(d["auth"], d.get("claimedUser"), d["verdict"]) for d in decisions],
                         [("gssapi", f"alice@{REALM}", "allow")] * 2 + [("gssapi", f"bob@{REALM}", "deny"),
                                                                         ("none", None, "deny")])

    def test_without_a_valid_ticket_nothing_is_relayed(self):
        # No ticket at all: the client library cannot even start.
        with self.assertRaises(gssapi.exceptions.GSSError):
            GSSSocksClient(self.gateway, os.path.join(self.realm.folder, "empty.ccache"))
        # A ticket for another service: the gateway's keytab has no key for it.
        with self.assertRaises((GSSAPIError, EOFError, ConnectionError)):
            GSSSocksClient(self.gateway, self.realm.ticket("carol"), service="other@localhost")
        # An expired ticket (a lifetime of one second, then waited out).
        expired = self.realm.ticket("carol", lifetime="1s")
        time.sleep(2.5)
        with self.assertRaises((gssapi.exceptions.GSSError, GSSAPIError, EOFError, ConnectionError)):
            GSSSocksClient(self.gateway, expired)
        self.assertEqual(self.server.connections, 0)
        self.assertIn("GSS-API authentication failed", self.gateway.output())


if __name__ == "__main__":
    unittest.main()
