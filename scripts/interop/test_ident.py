"""IDENT with the real oidentd on 127.0.0.1:113 and real local users (alice, bob,
created by scripts/test): replies 90, 93 and 92 to real clients run as those users,
SOCKS5 with a password user, and 500 concurrent lookups."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from peers import BINARY, Gateway, HTTPServer, TCPServer, echo, wait_for_port

POLICY = """
ident from 127.0.0.0/8 timeout 5s
allow connect from 127.0.0.0/8 ident                       label "verified by identd"
expect allow from 127.0.0.1 to 127.0.0.1:80 user alice ident alice
expect 93    from 127.0.0.1 to 127.0.0.1:80 user bob ident alice version socks4
expect 92    from 127.0.0.1 to 127.0.0.1:80 user alice version socks4
"""

USERS = ("alice", "bob")


def user_exists(name):
    return subprocess.run(["id", name], capture_output=True).returncode == 0


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("oidentd") and all(map(user_exists, USERS)),
                     "needs root, oidentd and the users alice and bob (scripts/test sets them up)")
class IdentInteropTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.TemporaryDirectory(prefix="identgate-ident-")
        cls.policy = os.path.join(cls.folder.name, "ident.policy")
        with open(cls.policy, "w") as out:
            out.write(POLICY)
        line = subprocess.run([BINARY, "passwd", "alice"], input=b"wonderland\n", capture_output=True, check=True)
        cls.passwords = os.path.join(cls.folder.name, "passwords")
        with open(cls.passwords, "wb") as out:
            out.write(line.stdout)
        # The interpreter must be one a plain user may run.
        cls.python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

    @classmethod
    def tearDownClass(cls):
        cls.folder.cleanup()

    def start_oidentd(self):
        process = subprocess.Popen(["oidentd", "-i", "-S", "-q", "-a", "127.0.0.1", "-p", "113", "-l", "2000", "-t", "10"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (process.terminate(), process.wait(10)))
        wait_for_port("127.0.0.1", 113)
        return process

    def curl_as(self, user, proxy, http):
        return subprocess.run(["runuser", "-u", user, "--", "curl", "-sS", "--max-time", "15", "-x", proxy,
                               f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=60)

    def test_replies_90_93_92_with_real_oidentd(self):
        oidentd = self.start_oidentd()
        with HTTPServer() as http, Gateway("--policy", self.policy) as gateway:
            granted = self.curl_as("alice", f"socks4://alice@{gateway.address}", http)
            self.assertEqual(granted.returncode, 0, granted.stderr + gateway.output().encode())
            self.assertEqual(granted.stdout, b"hello through identgate\n")

            differ = self.curl_as("alice", f"socks4://bob@{gateway.address}", http)
            self.assertEqual(differ.returncode, 97)
            self.assertIn(b"(93)", differ.stderr)

            bob = self.curl_as("bob", f"socks4a://bob@{gateway.address}", http)
            self.assertEqual(bob.returncode, 0, bob.stderr)

            oidentd.terminate()
            oidentd.wait(10)
            unreachable = self.curl_as("alice", f"socks4://alice@{gateway.address}", http)
            self.assertEqual(unreachable.returncode, 97)
            self.assertIn(b"(92)", unreachable.stderr)
            log = gateway.output()
            self.assertIn("reply=", log)
            self.assertIn("USERID:UNIX:alice", log)

    def test_socks5_password_user_verified_by_identd(self):
        self.start_oidentd()
        with HTTPServer() as http, Gateway("--policy", self.policy, "--password-file", self.passwords) as gateway:
            ok = self.curl_as("alice", f"socks5h://alice:wonderland@{gateway.address}", http)
            self.assertEqual(ok.returncode, 0, ok.stderr + gateway.output().encode())
            # bob knows alice's password, but identd says bob: SOCKS5 gets 0x02.
            impostor = self.curl_as("bob", f"socks5h://alice:wonderland@{gateway.address}", http)
            self.assertEqual(impostor.returncode, 97)
            self.assertIn(b"(2)", impostor.stderr, "SOCKS5 reply 0x02: not allowed by ruleset")
            self.assertIn("outcome=user-id bob", gateway.output())

    def test_500_concurrent_lookups(self):
        self.start_oidentd()
        with TCPServer(echo) as server, Gateway("--policy", self.policy) as gateway:
            # alice runs a copy: the checkout may be where only root can enter (a clone in
            # root's home, mode 700), and no test may need it readable by others.
            folder = tempfile.mkdtemp(prefix="identgate-load-")
            self.addCleanup(shutil.rmtree, folder, True)
            os.chmod(folder, 0o755)
            script = shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ident_load.py"), folder)
            os.chmod(script, 0o644)
            started = time.monotonic()
            load = subprocess.run(["runuser", "-u", "alice", "--", self.python, script,
                                   str(gateway.port), str(server.port), "500", "alice", "bob"],
                                  capture_output=True, timeout=120)
            elapsed = time.monotonic() - started
            self.assertEqual(load.returncode, 0, load.stderr)
            summary = json.loads(load.stdout)
            print(f"\n  ident load: 500 SOCKS4 requests in {elapsed:.2f}s, slowest reply {summary['slowest']:.2f}s: "
                  f"{summary['codes']}")
            self.assertEqual(summary["errors"], [])
            self.assertEqual(summary["codes"], {"alice:90": 250, "bob:93": 250})
            self.assertLess(summary["slowest"], 5, "no lookup waited for the others")


if __name__ == "__main__":
    unittest.main()
