"""The README's first command: scripts/run serves the embedded default on
127.0.0.1:1080, and curl fetches a page through it."""

import os
import signal
import socket
import subprocess
import unittest

from peers import ROOT, HTTPServer, wait_for_port


class RunScriptTest(unittest.TestCase):
    def test_scripts_run_serves_on_1080(self):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 1080)) == 0:
                self.skipTest("something already listens on 127.0.0.1:1080")
        # A debug build is already there from scripts/test; release would build again.
        environment = dict(os.environ, IDENTGATE_BUILD="debug")
        process = subprocess.Popen([os.path.join(ROOT, "scripts", "run")], env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", 1080, deadline=300)
            with HTTPServer() as http:
                page = subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5-hostname", "127.0.0.1:1080",
                                       f"http://localhost:{http.port}/"], capture_output=True, timeout=30)
            self.assertEqual(page.returncode, 0, page.stderr)
            self.assertEqual(page.stdout, b"hello through identgate\n")
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, output.decode(errors="replace"))
        self.assertIn(b"listen=127.0.0.1:1080", output)
        if os.geteuid() == 0:
            self.assertIn(b"privileges dropped", output, "as root, scripts/run drops to the identgate user")


if __name__ == "__main__":
    unittest.main()
