"""Operating it: systemd's readiness protocol with a NOTIFY_SOCKET the test owns (READY=1
only once the gateway serves, after the privilege drop when root; RELOADING=1 then READY=1
around a SIGHUP reload; STOPPING=1 at SIGTERM; WATCHDOG=1 at half WATCHDOG_USEC), the unit
file verified, and `--log-format json`."""

import json

import gzip
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from peers import BINARY, ROOT, Gateway, recv_exactly


class NotifySocket:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-notify-")
        os.chmod(self.folder, 0o755)
        self.path = os.path.join(self.folder, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(0.1)
        self.messages = []

    def collect(self, until, deadline=10):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except socket.timeout:
                pass
            if any(until in message for message in self.messages):
                return True
        return False

    def close(self):
        self.socket.close()
        os.unlink(self.path)
        os.rmdir(self.folder)


class ServiceManagerTest(unittest.TestCase):
    def setUp(self):
        self.notify = NotifySocket()
        self.addCleanup(self.notify.close)
        self.saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(self.saved)))
        os.environ["NOTIFY_SOCKET"] = self.notify.path

    def test_ready_reloading_stopping(self):
        args = ("--user", "nobody") if os.geteuid() == 0 else ()
        with Gateway(*args) as gateway:
            self.assertTrue(self.notify.collect("READY=1"), self.notify.messages)
            ready = next(m for m in self.notify.messages if "READY=1" in m)
            self.assertIn(f"MAINPID={gateway.process.pid}", ready)
            self.assertIn("STATUS=serving on 127.0.0.1:", ready)
            if args:
                self.assertIn("privileges dropped", gateway.output(), "ready only after the drop")
            self.notify.messages.clear()
            gateway.process.send_signal(signal.SIGHUP)
            self.assertTrue(self.notify.collect("policy reload done"), self.notify.messages)
            self.assertTrue(self.notify.messages[0].startswith("RELOADING=1\nMONOTONIC_USEC="), self.notify.messages)
            self.notify.messages.clear()
            gateway.process.send_signal(signal.SIGTERM)
            self.assertTrue(self.notify.collect("STOPPING=1"), self.notify.messages)
            self.assertEqual(gateway.process.wait(timeout=15), 0)

    def test_watchdog(self):
        os.environ["WATCHDOG_USEC"] = "400000"
        with Gateway():
            self.assertTrue(self.notify.collect("READY=1"))
            self.notify.messages.clear()
            time.sleep(1.0)
            self.notify.collect("never", deadline=0.2)
            beats = [m for m in self.notify.messages if m == "WATCHDOG=1"]
            self.assertGreaterEqual(len(beats), 3, self.notify.messages)
            self.assertLessEqual(len(beats), 8, self.notify.messages)

    @unittest.skipUnless(shutil.which("systemd-analyze"), "needs systemd-analyze")
    def test_the_unit_files_verify(self):
        """The service and its socket unit, together (the socket names the service)."""
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for name in ("identgate.service", "identgate.socket"):
                with open(os.path.join(ROOT, "contrib", name)) as unit:
                    text = unit.read().replace("/usr/local/bin/identgate", os.path.abspath(BINARY))
                paths.append(os.path.join(folder, name))
                with open(paths[-1], "w") as out:
                    out.write(text)
            result = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True,
                                    timeout=60, cwd=folder)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stderr.strip(), "", "no complaint about the unit")

    def test_without_notify_socket_nothing_is_sent(self):
        del os.environ["NOTIFY_SOCKET"]
        with Gateway() as gateway:
            self.assertFalse(self.notify.collect("READY=1", deadline=0.5))
            self.assertIn("identgate serving", gateway.output())


class ManualTest(unittest.TestCase):
    def test_manual_page_and_completions_come_from_the_command_definitions(self):
        with tempfile.TemporaryDirectory() as folder:
            package = os.environ.get("IDENTGATE_DEB")
            if package:
                # scripts/test built the package with scripts/manual: check what it ships
                # rather than run SwiftPM's generator a second time (17 s).
                subprocess.run(["dpkg-deb", "-x", package, os.path.join(folder, "root")], check=True, timeout=60)
                shipped = os.path.join(folder, "root", "usr", "share")
                os.makedirs(os.path.join(folder, "man1"))
                with gzip.open(os.path.join(shipped, "man", "man1", "identgate.1.gz")) as page, \
                        open(os.path.join(folder, "man1", "identgate.1"), "wb") as out:
                    out.write(page.read())
                os.makedirs(os.path.join(folder, "completions"))
                for source, name in [("bash-completion/completions/identgate", "identgate.bash"),
                                     ("zsh/vendor-completions/_identgate", "_identgate"),
                                     ("fish/vendor_completions.d/identgate.fish", "identgate.fish")]:
                    shutil.copy(os.path.join(shipped, source), os.path.join(folder, "completions", name))
            else:
                result = subprocess.run([os.path.join(ROOT, "scripts", "manual"), folder, "debug"], capture_output=True,
                                        text=True, timeout=600)
                self.assertEqual(result.returncode, 0, result.stderr)
            with open(os.path.join(folder, "man1", "identgate.1")) as page:
                text = page.read()
            self.assertIn(".Dt IDENTGATE 1", text)
            for command in ("run", "check", "explain", "diff", "fmt", "import", "audit", "probe", "passwd"):
                self.assertIn(command, text)
            if shutil.which("man"):
                rendered = subprocess.run(["man", "-l", os.path.join(folder, "man1", "identgate.1")],
                                          capture_output=True, text=True, timeout=60, env=dict(os.environ, MANPAGER="cat"))
                self.assertIn("identgate", rendered.stdout)
            bash = os.path.join(folder, "completions", "identgate.bash")
            self.assertEqual(subprocess.run(["bash", "-n", bash], timeout=30).returncode, 0)
            with open(bash) as script:
                self.assertIn("probe", script.read())
            for name in ("_identgate", "identgate.fish"):
                self.assertGreater(os.path.getsize(os.path.join(folder, "completions", name)), 100)


class JSONLogTest(unittest.TestCase):
    def test_every_line_is_one_json_object_and_client_text_stays_escaped(self):
        with tempfile.TemporaryDirectory() as folder:
            passwords = os.path.join(folder, "passwords")
            line = subprocess.run([BINARY, "passwd", "alice"], input=b"secret\n", capture_output=True, timeout=30,
                                  check=True).stdout
            with open(passwords, "wb") as file:
                file.write(line)
            with Gateway("--password-file", passwords, "--log-format", "json") as gateway:
                with socket.create_connection((gateway.host, gateway.port), timeout=5) as client:
                    name = "mal\nFORGED line\x1b[31m\u2028x".encode()
                    client.sendall(b"\x05\x01\x02")
                    self.assertEqual(recv_exactly(client, 2), b"\x05\x02")
                    client.sendall(b"\x01" + bytes([len(name)]) + name + b"\x05wrong")
                    self.assertEqual(recv_exactly(client, 2), b"\x01\x01")
                gateway.stop()
                output = gateway.output()
        lines = [line for line in output.splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line parses
        self.assertTrue(all({"time", "level", "label", "message"} <= set(r) for r in records), records)
        failed = [r for r in records if r["message"] == "password authentication failed"]
        self.assertEqual(len(failed), 1, records)
        self.assertNotIn("\n", failed[0]["metadata"]["user"], "the client's newline is escaped, not decoded")
        self.assertNotIn("\x1b", output)
        self.assertNotIn("\u2028", output)
        self.assertTrue(any(r["message"] == "identgate serving" for r in records))


if __name__ == "__main__":
    unittest.main()
