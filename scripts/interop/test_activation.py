"""systemd socket activation with systemd's own systemd-socket-activate: identgate adopts
the sockets it passes (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) instead of binding. A
connection made before identgate runs waits in the kernel's queue and is served once it
starts (nothing refused); a 'metrics' socket serves the metrics; a socket identgate cannot
serve, and a --listen other than the sockets passed, are refused with a clear message.

Run by scripts/test; IDENTGATE_BIN names the binary under test."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from peers import BINARY, STAY_ROOT, HTTPServer, free_port, wait_for_port

ACTIVATE = shutil.which("systemd-socket-activate")


@unittest.skipUnless(ACTIVATE, "needs systemd-socket-activate (Debian's systemd package)")
class SocketActivationTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-activation-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.policy = os.path.join(self.folder, "loopback.policy")
        with open(self.policy, "w") as out:
            out.write("allow from 127.0.0.0/8\n")
        self.log = os.path.join(self.folder, "identgate.log")

    def activate(self, *listen, names, extra=()):
        arguments = [ACTIVATE]
        for address in listen:
            arguments += ["-l", address]
        arguments += [f"--fdname={':'.join(names)}", BINARY, "run", *STAY_ROOT, "--policy", self.policy,
                      "--audit-log", os.path.join(self.folder, "audit.jsonl"), *extra]
        with open(self.log, "w") as log:
            process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def stop():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.addCleanup(stop)
        return process

    def output(self):
        with open(self.log, errors="replace") as log:
            return log.read()

    def test_a_connection_before_the_start_is_served_and_metrics_come_from_their_socket(self):
        port, metrics = free_port(), free_port()
        with HTTPServer() as http:
            self.activate(f"127.0.0.1:{port}", f"127.0.0.1:{metrics}", names=["socks", "metrics"])
            wait_for_port("127.0.0.1", port)
            # systemd-socket-activate starts identgate on this first connection: it waits
            # in the listening socket's queue meanwhile.
            first = subprocess.run(["curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{port}",
                                    f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=40)
            self.assertEqual(first.returncode, 0, first.stderr.decode() + self.output())
            self.assertEqual(first.stdout, b"hello through identgate\n")
            self.assertIn(f"socket activation: socks=127.0.0.1:{port} metrics=127.0.0.1:{metrics}", self.output())
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=10) as answer:
                self.assertEqual(answer.status, 200)

    def test_sockets_identgate_cannot_serve_are_refused_clearly(self):
        port = free_port()
        process = self.activate(f"127.0.0.1:{port}", names=["socks"], extra=("--listen", f"127.0.0.1:{free_port()}"))
        wait_for_port("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        self.assertNotEqual(process.wait(timeout=20), 0)
        self.assertIn("is not what socket activation passed", self.output())

        udp = free_port()
        datagram = subprocess.Popen([ACTIVATE, "--datagram", "-l", f"127.0.0.1:{udp}", "--fdname=socks", BINARY, "run",
                                     *STAY_ROOT, "--policy", self.policy, "--audit-log", "off"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(lambda: datagram.poll() is None and (os.killpg(datagram.pid, signal.SIGKILL), datagram.wait()))
        deadline = time.monotonic() + 20
        while datagram.poll() is None and time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"x", ("127.0.0.1", udp))
            time.sleep(0.2)
        output = datagram.communicate(timeout=20)[0].decode(errors="replace")
        self.assertNotEqual(datagram.returncode, 0)
        self.assertIn("is not a stream socket", output)


if __name__ == "__main__":
    unittest.main()
