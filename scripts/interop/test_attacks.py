"""Issue 23's seven defects, each tried as the attacker did, against the real binary:
loops back into the gateway through any spelling of this host; the metrics endpoint
pipelined and slow-lorised; clients that reset before their reply; parents that close
mid-reply; forged names using up a user's share; and logs flooded by repeated events.
Each test failed on 64b4683."""

import fcntl
import os
import re
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from peers import BINARY, ROOT, Gateway, TCPServer, UnansweringListener, echo, free_port, recv_exactly, rss_kib


def this_hosts_addresses():
    """Every address of every interface (from `ip -o addr`), loopback included."""
    output = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    found = []
    for line in output.splitlines():
        fields = line.split()
        address = fields[3].split("/")[0]
        if not address.startswith("fe80"):
            found.append(address)
    return found


def socks5_greet(connection):
    connection.sendall(b"\x05\x01\x00")
    assert recv_exactly(connection, 2) == b"\x05\x00"


def socks5_address(host):
    """ATYP and address bytes for a literal IPv4/IPv6 address or a name."""
    try:
        return b"\x01" + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        return b"\x04" + socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return b"\x03" + bytes([len(host)]) + host.encode()


def socks5_reply(port, command, host, destination_port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        socks5_greet(client)
        client.sendall(b"\x05" + bytes([command]) + b"\x00" + socks5_address(host) + destination_port.to_bytes(2, "big"))
        return recv_exactly(client, 2)[1]


def socks4_reply(port, host, destination_port, name=None, user=b"", command=1):
    """SOCKS4 (an address) or, with `name`, SOCKS4a."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        address = socket.inet_aton("0.0.0.1") if name else socket.inet_aton(host)
        request = b"\x04" + bytes([command]) + destination_port.to_bytes(2, "big") + address + user + b"\x00"
        if name:
            request += name.encode() + b"\x00"
        client.sendall(request)
        return recv_exactly(client, 8)[1]


def metric(port, name):
    """The sum of a metric's samples whose line starts with `name`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def health(port, timeout=3):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
        return response.status


def reset(connection):
    """Close with RST rather than FIN (SO_LINGER 0), as close() with unread data does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class NoLoopBackIntoTheGateway(unittest.TestCase):
    """Defect 1: CONNECT to 0.0.0.0:<its port> was allowed, and Linux connects it to the
    local host; one connection nested 4,000 hops. Every spelling of every address of this
    host, on the SOCKS port and the metrics port, for SOCKS4, 4a and 5, CONNECT, BIND and
    UDP, is refused now."""

    def test_every_spelling_of_this_host_on_every_listening_port_is_refused(self):
        metrics_port = free_port()
        with Gateway("--metrics-listen", f"127.0.0.1:{metrics_port}") as gateway:
            spellings = ["0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:127.0.0.1", "127.0.0.1", "127.0.0.2", "::1",
                         "localhost", *this_hosts_addresses()]
            for port in (gateway.port, metrics_port):
                for host in spellings:
                    for command in (1, 2):
                        with self.subTest(port=port, host=host, command=command):
                            self.assertEqual(socks5_reply(gateway.port, command, host, port), 0x02)
                for host in ("0.0.0.0", "127.0.0.1", *[a for a in this_hosts_addresses() if ":" not in a]):
                    with self.subTest(port=port, socks4=host):
                        self.assertEqual(socks4_reply(gateway.port, host, port), 91)
                for name in ("0.0.0.0", "localhost"):
                    with self.subTest(port=port, socks4a=name):
                        self.assertEqual(socks4_reply(gateway.port, None, port, name=name), 91)
            # A UDP datagram to the gateway's port through its own relay: decided and refused.
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as control, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", 0))
                socks5_greet(control)
                control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + udp.getsockname()[1].to_bytes(2, "big"))
                reply = recv_exactly(control, 10)
                self.assertEqual(reply[1], 0)
                relay = (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))
                udp.sendto(b"\x00\x00\x00\x01" + socket.inet_aton("0.0.0.0") + gateway.port.to_bytes(2, "big") + b"x", relay)
                refused = lambda: [r for r in gateway.audit_records()
                                   if r.get("command") == "udp" and r.get("event") == "decision"
                                   and r.get("destination") == "0.0.0.0" and r.get("verdict") == "deny"]
                self.assertTrue(wait_for(refused, 5), "the UDP datagram to 0.0.0.0:<gateway port> was refused")
            # Another port on this host is still reached (the check is on listening ports).
            with TCPServer(echo) as server:
                self.assertEqual(socks5_reply(gateway.port, 1, "0.0.0.0", server.port), 0)

    def test_nested_hops_through_0_0_0_0_stop_at_the_first(self):
        """The attack: one write of 200 nested CONNECTs to 0.0.0.0:<port>. Before: each
        hop held two descriptors. Now the first is refused and nothing is held."""
        with Gateway() as gateway:
            pid = gateway.process.pid
            before = len(os.listdir(f"/proc/{pid}/fd"))
            hop = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("0.0.0.0") + gateway.port.to_bytes(2, "big")
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(hop * 200)
                answer = recv_exactly(client, 4)
                self.assertEqual(answer[:2], b"\x05\x00")
                self.assertEqual(answer[3], 0x02)
                time.sleep(0.5)
                self.assertLessEqual(len(os.listdir(f"/proc/{pid}/fd")), before + 2)


class MetricsEndpointUnderAttack(unittest.TestCase):
    def setUp(self):
        self.metrics_port = free_port()
        self.gateway = Gateway("--metrics-listen", f"127.0.0.1:{self.metrics_port}")
        self.addCleanup(self.gateway.__exit__, None, None, None)

    def test_pipelined_requests_are_read_only_as_answers_are_written(self):
        """Defect 2: ~30,000 pipelined GET /metrics (1 MB) never read grew the gateway by
        hundreds of MB, held after the close. Now one answer is in flight at a time."""
        pid = self.gateway.process.pid
        self.assertEqual(health(self.metrics_port), 200)
        baseline = rss_kib(pid)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        attacker = socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10)
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        attacker.setblocking(False)
        payload = request * 30000
        sent = 0
        deadline = time.monotonic() + 4
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += attacker.send(payload[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        # The gateway stops reading: far less than the megabyte is taken.
        self.assertLess(sent, len(payload) // 2, "the gateway kept reading pipelined requests it could not answer")
        grown = rss_kib(pid) - baseline
        self.assertLess(grown, 40 * 1024, f"grew {grown} KiB under the pipelining attack")
        self.assertEqual(health(self.metrics_port), 200, "/healthz answers meanwhile")
        self.assertEqual(socks5_reply(self.gateway.port, 1, "127.0.0.1", free_port()), 0x05, "SOCKS is served")
        attacker.close()
        time.sleep(0.5)
        self.assertLess(rss_kib(pid) - baseline, 40 * 1024)

    def test_a_slow_loris_neither_holds_the_slots_nor_silences_healthz(self):
        """Defect 3: 32 connections trickling a header byte every 2 s held every slot for
        ever; /healthz shares them. Now the longest-waiting connection gives its slot to a
        newcomer, and a request must be complete 10 s after its first byte."""
        stop = threading.Event()
        tricklers = [socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) for _ in range(40)]
        for connection in tricklers:
            try:
                connection.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            except OSError:
                pass

        def trickle():
            while not stop.is_set():
                for connection in tricklers:
                    try:
                        connection.send(b"a")
                    except OSError:
                        pass
                stop.wait(0.5)

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            time.sleep(1.0)
            started = time.monotonic()
            for _ in range(5):
                self.assertEqual(health(self.metrics_port, timeout=2), 200)
            self.assertLess(time.monotonic() - started, 5)
            # Every trickler is closed by its request deadline (10 s), however it trickles.
            def closed(connection):
                try:
                    connection.setblocking(False)
                    return connection.recv(100) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True
            self.assertTrue(wait_for(lambda: all(closed(c) for c in tricklers), 14), "tricklers held past the deadline")
        finally:
            stop.set()
            thread.join()
            for connection in tricklers:
                connection.close()

    def test_a_request_over_the_byte_cap_is_431(self):
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
            self.assertTrue(client.recv(100).startswith(b"HTTP/1.1 431"))


class ResetBeforeTheReplyIsRecorded(unittest.TestCase):
    """Defect 4: a client that sent RST while its CONNECT was pending or its BIND
    listener waited left an allow decision with no session-end record (10 of 10)."""

    def test_reset_during_connect_and_bind_each_end_with_one_record(self):
        destination = UnansweringListener()
        self.addCleanup(destination.close)
        with Gateway("--connect-timeout", "60s") as gateway:
            for _ in range(10):
                client = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                socks5_greet(client)
                client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + destination.port.to_bytes(2, "big"))
                time.sleep(0.05)
                reset(client)
            for _ in range(10):
                client = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                socks5_greet(client)
                client.sendall(b"\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") + (5000).to_bytes(2, "big"))
                self.assertEqual(recv_exactly(client, 10)[1], 0)
                reset(client)

            def paired():
                records = gateway.audit_records()
                allowed = {r["session"] for r in records if r.get("event") == "decision" and r.get("verdict") == "allow"}
                ends = [r["session"] for r in records if r.get("event") == "session-end"]
                return len(allowed) == 20 and sorted(ends) == sorted(allowed)
            self.assertTrue(wait_for(paired, 5), "every allowed session has exactly one end record")
            reasons = {r["reason"] for r in gateway.audit_records() if r.get("event") == "session-end"}
            self.assertEqual(reasons, {"client reset the connection before the reply"})


def parent_that_breaks_off(count, rst=False):
    """A SOCKS5 parent (for TCPServer) that answers the greeting, then sends `count` bytes
    of its reply to the request and closes (or resets)."""

    def serve(server, connection):
        connection.settimeout(5)
        connection.recv(3)
        connection.sendall(b"\x05\x00")
        connection.recv(262)
        connection.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50"[:count])
        if rst:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return serve


class ParentThatBreaksOffFailsAtOnce(unittest.TestCase):
    """Defect 5: a parent that closed before or during its reply was noticed only at
    --connect-timeout, reported as no answer; with fail-over each cost the whole time-out."""

    def test_eof_or_reset_at_any_byte_of_the_reply_fails_over_at_once(self):
        folder = tempfile.TemporaryDirectory(prefix="identgate-parent-")
        self.addCleanup(folder.cleanup)
        with TCPServer(echo) as server:
            for count, rst in ((0, False), (1, False), (5, False), (7, False), (3, True)):
                with self.subTest(count=count, rst=rst):
                    bad = TCPServer(parent_that_breaks_off(count, rst))
                    self.addCleanup(bad.__exit__, None, None, None)
                    good = Gateway()
                    self.addCleanup(good.__exit__, None, None, None)
                    policy = os.path.join(folder.name, f"p{count}{rst}.policy")
                    with open(policy, "w") as out:
                        out.write(f"allow from 127.0.0.1 via socks5://127.0.0.1:{bad.port}, socks5://127.0.0.1:{good.port}\n")
                    with Gateway("--connect-timeout", "20s", "--policy", policy) as child:
                        started = time.monotonic()
                        with socket.create_connection(("127.0.0.1", child.port), timeout=30) as client:
                            socks5_greet(client)
                            client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + server.port.to_bytes(2, "big"))
                            self.assertEqual(recv_exactly(client, 10)[1], 0, child.output())
                            client.sendall(b"ping")
                            self.assertEqual(recv_exactly(client, 4), b"ping")
                        self.assertLess(time.monotonic() - started, 3, "fail-over waited for --connect-timeout")
                        output = child.output()
                        self.assertNotIn("no answer within --connect-timeout", output)
                        # The greeting's answer (2 bytes) and `count` bytes of the reply.
                        if rst:
                            self.assertRegex(output, "the parent (reset|closed) the connection after \\d+ byte")
                        else:
                            self.assertIn(f"the parent closed the connection after {count + 2} bytes", output)
                    good.stop()


class ClaimedNamesDoNotUseUpAUsersShare(unittest.TestCase):
    """Defect 6: with `limit sessions 2 per user`, two SOCKS4 requests from other hosts
    claiming USERID alice used up alice's share; the real alice was refused with 0x02."""

    def test_the_real_alice_keeps_her_share(self):
        folder = tempfile.TemporaryDirectory(prefix="identgate-limit-")
        self.addCleanup(folder.cleanup)
        line = subprocess.run([BINARY, "passwd", "alice"], input=b"wonderland\n", capture_output=True, check=True).stdout
        passwords = os.path.join(folder.name, "passwords")
        with open(passwords, "wb") as out:
            out.write(line)
        policy = os.path.join(folder.name, "limit.policy")
        with open(policy, "w") as out:
            out.write("allow from 127.0.0.0/8\nlimit sessions 2 per user\n")
        with TCPServer(echo) as server, Gateway("--policy", policy, "--password-file", passwords,
                                                "--methods", "password,none") as gateway:
            held = []
            for source in ("127.0.0.2", "127.0.0.3"):
                forger = socket.socket()
                forger.bind((source, 0))
                forger.settimeout(10)
                forger.connect(("127.0.0.1", gateway.port))
                forger.sendall(b"\x04\x01" + server.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"alice\x00")
                self.assertEqual(recv_exactly(forger, 8)[1], 90)
                held.append(forger)
            try:
                for _ in range(2):
                    alice = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                    held.append(alice)
                    alice.sendall(b"\x05\x01\x02")
                    self.assertEqual(recv_exactly(alice, 2), b"\x05\x02")
                    alice.sendall(b"\x01\x05alice\x0awonderland")
                    self.assertEqual(recv_exactly(alice, 2), b"\x01\x00")
                    alice.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + server.port.to_bytes(2, "big"))
                    self.assertEqual(recv_exactly(alice, 10)[1], 0, "the real alice has her share")
            finally:
                for connection in held:
                    connection.close()
        # And check says what the shipped corporate policy would do: nothing to warn of.
        corporate = os.path.join(ROOT, "policies", "corporate-egress.policy")
        self.assertEqual(subprocess.run([BINARY, "check", "--strict", corporate], capture_output=True).returncode, 0)


class RepeatedEventsAreLoggedOncePerEpisode(unittest.TestCase):
    """Defect 7: each untrusted PROXY header wrote a notice line (~14,500 in 3 s from one
    client); each negotiation time-out an info line. Now: one line per episode and a
    count every 10 s, and a metric counts each."""

    def test_untrusted_proxy_headers_and_negotiation_timeouts(self):
        metrics_port = free_port()
        with Gateway("--proxy-protocol-from", "192.0.2.0/24", "--negotiate-timeout", "1s",
                     "--metrics-listen", f"127.0.0.1:{metrics_port}") as gateway:
            for _ in range(1000):
                with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                    client.sendall(b"PROXY TCP4 10.0.0.1 10.0.0.2 1234 1080\r\n")
                    client.recv(10)
            idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(50)]
            time.sleep(1.8)
            for connection in idle:
                connection.close()
            self.assertEqual(metric(metrics_port, 'identgate_peer_events_total{event="untrusted_proxy_header"}'), 1000)
            self.assertEqual(metric(metrics_port, 'identgate_peer_events_total{event="negotiation_timeout"}'), 50)
            output = gateway.output()
            self.assertLessEqual(output.count("PROXY protocol header from a peer outside"), 3, output[-3000:])
            self.assertLessEqual(output.count("negotiation timed out"), 3, output[-3000:])


class ClientTextIsEscapedInJSON(unittest.TestCase):
    """Minor of issue 23: `audit show --json` printed U+009B (a CSI to many terminals)
    from a SOCKS4 USERID raw."""

    def test_c1_and_bidirectional_controls_in_a_userid(self):
        with TCPServer(echo) as server, Gateway() as gateway:
            user = "x\u009b31mevil\u202e".encode()
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
                client.sendall(b"\x04\x01" + server.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + user + b"\x00")
                self.assertEqual(recv_exactly(client, 8)[1], 90)
            gateway.stop()
            with open(gateway.audit_log, "rb") as log:
                written = log.read()
            shown = subprocess.run([BINARY, "audit", "show", "--json", gateway.audit_log], capture_output=True, check=True).stdout
            for output in (written, shown):
                self.assertNotIn("\u009b".encode(), output)
                self.assertNotIn("\u202e".encode(), output)
                self.assertIn(b"x\\u009b31mevil\\u202e", output)


if __name__ == "__main__":
    unittest.main()
