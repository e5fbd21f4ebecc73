"""Hostile and careless clients against the real binary: what one client does must not
cost the others a core, descriptors or service."""

import os
import resource
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from peers import BINARY, Gateway, TCPServer, UnansweringListener, echo, recv_exactly, socks5_connect


def cpu_seconds(pid):
    """User plus system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / 100.0


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class DepartedClientTest(unittest.TestCase):
    def test_a_client_that_leaves_ends_its_connect_attempt(self):
        """A CONNECT whose client leaves while the destination does not answer: the
        outbound attempt ends with the client, not at --connect-timeout (60 s here)."""
        with UnansweringListener() as destination, Gateway("--connect-timeout", "60s") as gateway:
            pid = gateway.process.pid
            before = open_descriptors(pid)
            for _ in range(20):
                with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                    client.sendall(b"\x05\x01\x00")
                    self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                    client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + destination.port.to_bytes(2, "big"))
                    time.sleep(0.05)
            deadline = time.monotonic() + 1.0
            while open_descriptors(pid) > before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertLessEqual(open_descriptors(pid), before + 2, "descriptors held after the clients left")
            gateway.stop()
            # Each request was allowed: the audit log says how each session ended.
            departed = [r for r in gateway.audit_records()
                        if r.get("event") == "session-end" and r.get("reason") == "client left before the reply"]
            self.assertEqual(len(departed), 20)


class DescriptorExhaustionTest(unittest.TestCase):
    def test_accept_pauses_at_the_descriptor_limit_and_service_resumes(self):
        """At the descriptor limit accept fails with EMFILE on a socket that stays
        readable; without a pause that spins a core. The gateway must idle while
        exhausted, say so once, and serve again when descriptors come back."""
        with TCPServer(echo) as server, Gateway(nofile=96) as gateway:
            held = []
            try:
                # More connections than descriptors: the rest wait in the listen backlog.
                for _ in range(150):
                    held.append(socket.create_connection((gateway.host, gateway.port), timeout=5))
                time.sleep(1.0)
                before = cpu_seconds(gateway.process.pid)
                time.sleep(3.0)
                spent = cpu_seconds(gateway.process.pid) - before
                self.assertLess(spent, 0.6, f"{spent:.2f} s of CPU in 3 s while exhausted")
            finally:
                for connection in held:
                    connection.close()
            # Descriptors come back as the gateway sees those clients leave.
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = socks5_connect(gateway, "127.0.0.1", server.port)
                    break
                except (OSError, AssertionError, EOFError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            with client:
                client.sendall(b"still serving")
                self.assertEqual(recv_exactly(client, 13), b"still serving")
            # The episode ends, in the log, once accepts have worked for a second.
            deadline = time.monotonic() + 5
            while "accepting connections again" not in gateway.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            output = gateway.output()
            self.assertEqual(output.count("cannot accept new connections"), 1, output[-2000:])
            self.assertEqual(output.count("accepting connections again"), 1, output[-2000:])


if __name__ == "__main__":
    unittest.main()


class ClientChosenTextTest(unittest.TestCase):
    """Text a client chose reaches the logs and the reviewer's terminal escaped: no raw
    escape sequences, no forged lines."""

    HOSTILE = "evil\x1b[31mRED\x07\nFORGED line\u202e"

    def test_socks4_userid_is_escaped_in_audit_show_and_summary(self):
        with TCPServer(echo) as server, Gateway() as gateway:
            with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                request = b"\x04\x01" + server.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1")
                client.sendall(request + self.HOSTILE.encode() + b"\x00")
                self.assertEqual(recv_exactly(client, 8)[1], 90)
            gateway.stop()
            for command in (["show"], ["summary"]):
                shown = subprocess.run(
                    [BINARY, "audit", *command, gateway.audit_log], capture_output=True, timeout=30, check=True
                ).stdout
                self.assertNotIn(b"\x1b", shown, command)
                self.assertNotIn(b"\x07", shown, command)
                self.assertNotIn("\u202e".encode(), shown, command)
                self.assertFalse(any(line.startswith(b"FORGED") for line in shown.splitlines()), shown)
                self.assertIn(b"evil\\u{1B}[31mRED\\u{7}\\nFORGED line\\u{202E}", shown, command)

    def test_failed_username_is_escaped_in_the_log(self):
        with tempfile.TemporaryDirectory() as folder:
            passwords = os.path.join(folder, "passwords")
            line = subprocess.run(
                [BINARY, "passwd", "alice"], input=b"secret\n", capture_output=True, timeout=30, check=True
            ).stdout
            with open(passwords, "wb") as file:
                file.write(line)
            with Gateway("--password-file", passwords) as gateway:
                with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                    name = self.HOSTILE.encode()
                    client.sendall(b"\x05\x01\x02")
                    self.assertEqual(recv_exactly(client, 2), b"\x05\x02")
                    client.sendall(b"\x01" + bytes([len(name)]) + name + b"\x05wrong")
                    self.assertEqual(recv_exactly(client, 2), b"\x01\x01")
                gateway.stop()
                output = gateway.output()
            self.assertIn("password authentication failed", output)
            self.assertNotIn("\x1b", output)
            self.assertFalse(any(line.startswith("FORGED") for line in output.splitlines()), output)

    def test_passwd_refuses_control_characters(self):
        refused = subprocess.run([BINARY, "passwd", "bad\x1bname"], input=b"secret\n", capture_output=True, timeout=30)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"control characters", refused.stderr)


class SelfRelayTest(unittest.TestCase):
    """One client must not chain CONNECTs through the gateway to itself: with the default
    policy (loopback clients may go anywhere) 1,000 nested CONNECTs in one write used to
    hold 2,021 descriptors."""

    def nested_connects(self, gateway, hops):
        address = socket.inet_aton("127.0.0.1") + gateway.port.to_bytes(2, "big")
        return b"\x05\x01\x00" + b"\x05\x01\x00\x01" + address + (b"\x05\x01\x00" + b"\x05\x01\x00\x01" + address) * (hops - 1)

    def test_nested_connects_to_the_gateway_are_refused(self):
        with Gateway() as gateway:
            before = open_descriptors(gateway.process.pid)
            with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                client.sendall(self.nested_connects(gateway, 200))
                self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                reply = recv_exactly(client, 10)
                self.assertEqual(reply[1], 0x02, "the first hop is refused: not allowed by ruleset")
                self.assertLessEqual(open_descriptors(gateway.process.pid), before + 2)
            gateway.stop()
            refused = [r for r in gateway.audit_records() if r.get("event") == "decision"]
            self.assertEqual(len(refused), 1)
            self.assertEqual(refused[0]["verdict"], "deny")
            self.assertIn("gateway itself", refused[0].get("reason", ""))

    def test_a_rule_that_names_the_gateway_allows_one_hop_at_a_time(self):
        with tempfile.TemporaryDirectory() as folder:
            policy = os.path.join(folder, "loop.policy")
            port = None
            with Gateway() as probe:
                port = probe.port
            with open(policy, "w") as file:
                file.write(f'allow connect from 127.0.0.0/8 to 127.0.0.1 port {port} label "through the gateway"\n')
                file.write('allow connect from 127.0.0.0/8 to any label "anywhere"\n')
            with TCPServer(echo) as server, Gateway("--policy", policy, port=port) as gateway:
                address = socket.inet_aton("127.0.0.1") + gateway.port.to_bytes(2, "big")
                with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                    client.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + address)
                    self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                    self.assertEqual(recv_exactly(client, 10)[1], 0x00, "named explicitly: allowed")
                    # The second hop, from the gateway to an echo server.
                    client.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                                   + server.port.to_bytes(2, "big"))
                    self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                    self.assertEqual(recv_exactly(client, 10)[1], 0x00)
                    client.sendall(b"ping")
                    self.assertEqual(recv_exactly(client, 4), b"ping")


class NumbersTest(unittest.TestCase):
    """Numbers from flags are bounded: an error with the flag's name, never a trap."""

    def test_out_of_range_numbers_are_errors(self):
        for args, flag in ((["run", "--ident-port", "70000"], b"--ident-port"),
                           (["run", "--ident-port", "0"], b"--ident-port"),
                           (["audit", "summary", "--top", "-1", "/dev/null"], b"--top")):
            result = subprocess.run([BINARY, *args], capture_output=True, timeout=30)
            self.assertEqual(result.returncode, 64, (args, result.stderr))
            self.assertIn(flag, result.stderr, args)


class AuditFileTest(unittest.TestCase):
    def test_a_symlinked_audit_log_is_refused(self):
        with tempfile.TemporaryDirectory() as folder:
            target = os.path.join(folder, "elsewhere")
            link = os.path.join(folder, "audit.jsonl")
            os.symlink(target, link)
            result = subprocess.run(
                [BINARY, "run", "--stay-root", "--listen", "127.0.0.1:0", "--audit-log", link],
                capture_output=True, timeout=30)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertIn(b"symbolic link", result.stderr)
            self.assertFalse(os.path.exists(target), "nothing written through the link")

    @unittest.skipUnless(os.geteuid() == 0, "needs root")
    def test_an_audit_directory_the_user_cannot_write_is_reported(self):
        with Gateway("--user", "nobody") as gateway:
            gateway.stop()
            self.assertIn("not writable by nobody", gateway.output())
            self.assertIn(gateway.audit_folder, gateway.output(), "the path is given in full")


class StallingIdentd:
    """An identd that accepts and never answers; notes when each connection ends."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = []
        self.ended = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            threading.Thread(target=self.hold, args=(connection,), daemon=True).start()

    def hold(self, connection):
        with connection:
            while connection.recv(1024):
                pass
        self.ended.append(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.listener.close()


class DepartedIdentClientTest(unittest.TestCase):
    def test_a_client_that_leaves_ends_its_ident_lookup(self):
        """The lookup for a client that left ends at once, not at the ident time-out."""
        with StallingIdentd() as identd, tempfile.TemporaryDirectory() as folder:
            policy = os.path.join(folder, "ident.policy")
            with open(policy, "w") as file:
                file.write("ident from 127.0.0.0/8 timeout 20s\n")
                file.write('allow connect from 127.0.0.0/8 ident label "verified"\n')
            with Gateway("--policy", policy, "--ident-port", str(identd.port)) as gateway:
                with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                    client.sendall(b"\x04\x01\x00\x50" + socket.inet_aton("127.0.0.1") + b"alice\x00")
                    deadline = time.monotonic() + 5
                    while not identd.accepted and time.monotonic() < deadline:
                        time.sleep(0.02)
                    self.assertTrue(identd.accepted, "the gateway asked identd")
                left = time.monotonic()
                deadline = left + 5
                while not identd.ended and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertTrue(identd.ended, "the ident connection is still open 5 s after the client left")
                self.assertLess(identd.ended[0] - left, 1.5)


class SlowLorisTest(unittest.TestCase):
    COUNT = 2000

    def test_dribbling_clients_are_closed_by_the_negotiation_deadline(self):
        """2,000 clients that send their greeting a byte a second: all closed when
        --negotiate-timeout passes, while a normal client is served meanwhile."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = 2 * self.COUNT + 200
        if hard < needed:
            self.skipTest(f"needs {needed} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        greeting = b"\x05\x01\x00"
        with TCPServer(echo) as server, Gateway("--negotiate-timeout", "5s") as gateway:
            pid = gateway.process.pid
            before = open_descriptors(pid)
            clients = []
            try:
                for _ in range(self.COUNT):
                    clients.append(socket.create_connection((gateway.host, gateway.port), timeout=5))
                started = time.monotonic()
                served = []
                for second in range(2):
                    for client in clients:
                        try:
                            client.sendall(greeting[second:second + 1])
                        except (BrokenPipeError, ConnectionResetError):
                            pass  # already closed by the deadline: as it should be
                    began = time.monotonic()
                    with socks5_connect(gateway, "127.0.0.1", server.port) as normal:
                        normal.sendall(b"ping")
                        self.assertEqual(recv_exactly(normal, 4), b"ping")
                    served.append(time.monotonic() - began)
                    time.sleep(max(0, started + second + 1 - time.monotonic()))
                self.assertLess(max(served), 1.0, f"a normal client waited {max(served):.2f} s")
                # The deadline (5 s from each accept) closes every dribbler.
                deadline = started + 10
                open_clients = list(clients)
                while open_clients and time.monotonic() < deadline:
                    still = []
                    for client in open_clients:
                        client.setblocking(False)
                        try:
                            if client.recv(64) == b"":
                                continue
                        except BlockingIOError:
                            still.append(client)
                            continue
                        except ConnectionResetError:
                            continue
                    open_clients = still
                    time.sleep(0.1)
                self.assertEqual(len(open_clients), 0, f"{len(open_clients)} dribblers still open")
            finally:
                for client in clients:
                    client.close()
            deadline = time.monotonic() + 3
            while open_descriptors(pid) > before + 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertLessEqual(open_descriptors(pid), before + 4)
