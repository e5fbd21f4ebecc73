"""Privileges, for real (CI runs as root): bind below 1024 as root, drop to nobody with
every capability gone, verified from outside in /proc for every thread; clients, BIND,
UDP and SIGHUP reload still work after the drop; wrong set-ups are refused clearly."""

import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import socks

from peers import BINARY, Gateway, HTTPServer, free_port, recv_exactly
from test_bind_udp import UDPEcho


def status(path):
    fields = {}
    with open(path) as lines:
        for line in lines:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def low_port():
    """A free port below 1024, which only root may bind."""
    for port in range(900, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below 1024")


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class PrivilegeDropTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-priv-")
        os.chmod(self.folder, 0o755)  # the policy must stay readable by nobody
        self.policy = os.path.join(self.folder, "gate.policy")
        self.write_policy('allow connect, bind, udp from 127.0.0.0/8 label "loopback"\n')
        self.nobody = pwd.getpwnam("nobody")

    def tearDown(self):
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)

    def write_policy(self, text):
        with open(self.policy, "w") as out:
            out.write(text)
        os.chmod(self.policy, 0o644)

    def test_drop_to_nobody_with_no_capabilities_on_every_thread(self):
        port = low_port()
        with HTTPServer() as http, Gateway("--user", "nobody", "--policy", self.policy, port=port) as gateway:
            pid = gateway.process.pid
            tasks = os.listdir(f"/proc/{pid}/task")
            self.assertGreater(len(tasks), 1, "NIO's threads exist by now")
            for task in [None, *tasks]:
                path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
                fields = status(path)
                with self.subTest(thread=task):
                    self.assertEqual(set(fields["Uid"]), {str(self.nobody.pw_uid)})
                    self.assertEqual(set(fields["Gid"]), {str(self.nobody.pw_gid)})
                    for capability in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
                        self.assertEqual(int(fields[capability][0], 16), 0, capability)
                    self.assertEqual(fields["NoNewPrivs"], ["1"])

            page = subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5-hostname", gateway.address,
                                   f"http://localhost:{http.port}/"], capture_output=True, timeout=30)
            self.assertEqual(page.stdout, b"hello through identgate\n", page.stderr)
            self.assertIn("privileges dropped", gateway.output())
            self.assertIn("CapEff 0000000000000000", gateway.output())

            # BIND still works: ephemeral ports need no privilege.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"\x05\x01\x00" + b"\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x14")
                self.assertEqual(recv_exactly(client, 2), b"\x05\x00")
                first = recv_exactly(client, 10)
                self.assertEqual(first[:2], b"\x05\x00")
                with socket.create_connection(("127.0.0.1", int.from_bytes(first[8:10], "big")), timeout=5) as peer:
                    self.assertEqual(recv_exactly(client, 10)[:2], b"\x05\x00")
                    peer.sendall(b"call-back")
                    self.assertEqual(recv_exactly(client, 9), b"call-back")

            # UDP ASSOCIATE still works.
            with UDPEcho() as echo:
                udp = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.set_proxy(socks.SOCKS5, "127.0.0.1", port)
                udp.settimeout(5)
                udp.sendto(b"datagram", ("127.0.0.1", echo.port))
                self.assertEqual(udp.recvfrom(100)[0], b"datagram")
                udp.close()

            # SIGHUP still reloads: the policy is readable by nobody.
            self.write_policy('deny from any label "closed"\n')
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "policy reloaded" not in gateway.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertIn("policy reloaded", gateway.output())
            refused = subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5", gateway.address,
                                      f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=30)
            self.assertEqual(refused.returncode, 97)
            self.assertEqual(gateway.stop(), 0)

    def run_identgate(self, *args):
        return subprocess.run([BINARY, "run", "--audit-log", "-", "--listen", f"127.0.0.1:{free_port()}", *args],
                              capture_output=True, timeout=30)

    def test_unknown_user_is_refused_before_binding(self):
        result = self.run_identgate("--user", "no-such-user-here")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"unknown user 'no-such-user-here'", result.stderr)

    def test_unknown_group_is_refused(self):
        result = self.run_identgate("--user", "nobody", "--group", "no-such-group-here")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"unknown group 'no-such-group-here'", result.stderr)

    def test_root_without_user_is_refused(self):
        result = self.run_identgate()
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"--user", result.stderr)
        self.assertIn(b"--stay-root", result.stderr)

    def test_policy_unreadable_by_the_user_is_refused(self):
        os.chmod(self.policy, 0o600)
        result = self.run_identgate("--user", "nobody", "--policy", self.policy)
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"is not readable by nobody", result.stderr)


if __name__ == "__main__":
    unittest.main()
