"""The policy in the running gateway: --policy, refusal to start on a bad policy, and
SIGHUP reload both ways (a good policy swapped in, a bad one kept out), with curl."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from peers import BINARY, STAY_ROOT, HTTPServer, Gateway, free_port

ALLOW_LOOPBACK = """
net loopback = 127.0.0.0/8
allow connect from @loopback to 127.0.0.1 label "loopback to loopback"
expect allow from 127.0.0.1 to 127.0.0.1:80
"""

DENY_ALL = """
deny from any label "closed for maintenance"
expect deny from 127.0.0.1 to 127.0.0.1:80
"""

BROKEN = """
allow connect from 127.0.0.0/33
"""

FAILING_TESTS = """
deny from any
expect allow from 127.0.0.1 to 127.0.0.1:80
"""


class PolicyReloadTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.TemporaryDirectory(prefix="identgate-policy-")
        self.policy = os.path.join(self.folder.name, "gate.policy")

    def tearDown(self):
        self.folder.cleanup()

    def write(self, text):
        with open(self.policy, "w") as out:
            out.write(text)

    def fetch(self, gateway, http):
        return subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5", gateway.address,
                               f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=30)

    def reload(self, gateway, expected_log, before):
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if gateway.output().count(expected_log) > before:
                return
            time.sleep(0.05)
        self.fail(f"no '{expected_log}' in the log:\n{gateway.output()}")

    def test_sighup_swaps_a_good_policy_and_keeps_out_a_bad_one(self):
        self.write(ALLOW_LOOPBACK)
        with HTTPServer() as http, Gateway("--policy", self.policy) as gateway:
            self.assertEqual(self.fetch(gateway, http).returncode, 0, gateway.output())

            self.write(DENY_ALL)
            self.reload(gateway, "policy reloaded", 0)
            refused = self.fetch(gateway, http)
            self.assertEqual(refused.returncode, 97, "curl: the proxy refused the connection")

            self.write(ALLOW_LOOPBACK)
            self.reload(gateway, "policy reloaded", 1)
            self.assertEqual(self.fetch(gateway, http).returncode, 0)

            for bad in (BROKEN, FAILING_TESTS):
                self.write(bad)
                before = gateway.output().count("policy reload rejected")
                self.reload(gateway, "policy reload rejected", before)
                self.assertEqual(self.fetch(gateway, http).returncode, 0, "the previous policy still serves")
            self.assertIn("gate.policy:2:20: error", gateway.output())
            self.assertIn("1 of its tests failed", gateway.output())
            self.assertEqual(gateway.stop(), 0)

    def test_refuses_to_start_on_a_bad_policy(self):
        for text, message in ((BROKEN, b"error: '127.0.0.0/33' is not an address"),
                              (FAILING_TESTS, b"1 of its tests failed")):
            self.write(text)
            result = subprocess.run([BINARY, "run", *STAY_ROOT, "--audit-log", "-", "--listen", f"127.0.0.1:{free_port()}", "--policy", self.policy],
                                    capture_output=True, timeout=30)
            self.assertEqual(result.returncode, 1)
            self.assertIn(message, result.stderr)

    def test_shipped_policies_pass_check_strict_and_test(self):
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "policies")
        names = sorted(name for name in os.listdir(folder) if name.endswith(".policy"))
        self.assertGreaterEqual(len(names), 3)
        for name in names:
            path = os.path.join(folder, name)
            check = subprocess.run([BINARY, "check", "--strict", path], capture_output=True, timeout=30)
            self.assertEqual(check.returncode, 0, check.stdout)
            test = subprocess.run([BINARY, "test", path], capture_output=True, timeout=30)
            self.assertEqual(test.returncode, 0, test.stdout)
            self.assertRegex(test.stdout.decode(), r"\d+ passed, 0 failed")
            explain = subprocess.run([BINARY, "explain", path, "--from", "127.0.0.1", "--to", "example.com:443"],
                                     capture_output=True, timeout=30)
            self.assertEqual(explain.returncode, 0, explain.stderr)
            self.assertIn(b"decided by", explain.stdout)
            layout = subprocess.run([BINARY, "fmt", "--check", path], capture_output=True, timeout=30)
            self.assertEqual(layout.returncode, 0, f"{name} is laid out as `identgate fmt` writes it:\n{layout.stdout.decode()}")

    def test_diff_finds_a_change_that_explain_reproduces_and_is_a_ci_gate(self):
        """`identgate diff` on the shipped corporate policy and a one-line change of it:
        exit 1, the region in words, and `explain` commands that decide its example
        differently on the two sides; the file against itself exits 0; errors exit 2."""
        folder = tempfile.mkdtemp(prefix="identgate-diff-")
        self.addCleanup(shutil.rmtree, folder, True)
        old = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "policies", "corporate-egress.policy")
        with open(old) as source:
            lines = source.read().split("\n")
        first = next(i for i, line in enumerate(lines) if line.startswith(("allow", "deny")))
        lines.insert(first, 'deny port 5432 label "no databases"')
        new = os.path.join(folder, "changed.policy")
        with open(new, "w") as out:
            out.write("\n".join(lines))
        same = subprocess.run([BINARY, "diff", old, old], capture_output=True, text=True, timeout=60)
        self.assertEqual((same.returncode, same.stdout.startswith("no request is decided differently")), (0, True), same.stdout)
        changed = subprocess.run([BINARY, "diff", old, new], capture_output=True, text=True, timeout=60)
        self.assertEqual(changed.returncode, 1, changed.stdout + changed.stderr)
        self.assertRegex(changed.stdout, r':5432 .*: allow .*\(line \d+ "admins, verified by identd"\) → deny \(line \d+ "no databases"\)')
        commands = [line.strip().split() for line in changed.stdout.splitlines() if line.strip().startswith("identgate explain")]
        self.assertGreaterEqual(len(commands), 2)
        verdicts = []
        for command in commands[:2]:
            explained = subprocess.run([BINARY, *command[1:]], capture_output=True, text=True, timeout=30)
            self.assertEqual(explained.returncode, 0, explained.stderr)
            verdicts.append(explained.stdout.strip().splitlines()[-1])
        self.assertNotEqual(verdicts[0], verdicts[1], "the example is decided differently on the two sides")
        as_json = subprocess.run([BINARY, "diff", "--json", old, new], capture_output=True, text=True, timeout=60)
        report = json.loads(as_json.stdout)
        self.assertEqual((as_json.returncode, report["equivalent"]), (1, False))
        self.assertEqual(report["differences"][0]["new"]["rule"]["label"], "no databases")
        broken = os.path.join(folder, "broken.policy")
        with open(broken, "w") as out:
            out.write("allow from 10.0.0.0/33\n")
        error = subprocess.run([BINARY, "diff", old, broken], capture_output=True, text=True, timeout=60)
        self.assertEqual(error.returncode, 2, error.stdout)
        self.assertIn("broken.policy:1:", error.stdout)

    def test_fmt_check_and_write(self):
        folder = tempfile.mkdtemp(prefix="identgate-fmt-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "messy.policy")
        with open(path, "w") as out:
            out.write('allow   from 10.0.0.0/8 label "lab"  # ok\n\n\n\ndeny to 192.0.2.1\nexpect deny from 10.1.1.1 to 192.0.2.1:80\n')
        check = subprocess.run([BINARY, "fmt", "--check", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 1)
        self.assertIn("-allow   from 10.0.0.0/8", check.stdout)
        self.assertIn("+allow from 10.0.0.0/8 label \"lab\"  # ok", check.stdout)
        write = subprocess.run([BINARY, "fmt", "--write", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(write.returncode, 0, write.stdout)
        with open(path) as formatted:
            self.assertEqual(formatted.read(), 'allow from 10.0.0.0/8 label "lab"  # ok\n\ndeny  to 192.0.2.1\n'
                                               'expect deny  from 10.1.1.1 to 192.0.2.1:80\n')
        self.assertEqual(subprocess.run([BINARY, "fmt", "--check", path], capture_output=True, timeout=30).returncode, 0)


if __name__ == "__main__":
    unittest.main()
