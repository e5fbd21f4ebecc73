"""Seamless upgrades (--upgrade-socket): a new identgate takes the listening sockets over
from the running one (SCM_RIGHTS), which stops accepting and drains its sessions.

Under continuous load from the project's load generator (SOCKS5 and SOCKS4 at once) and
with 20 long-lived tunnels streaming data, 10 consecutive upgrades: no connection fails
or is reset, every tunnel's bytes arrive whole (SHA-256), every draining process exits
once its tunnels end, `audit verify` passes over the shared log and the draining
processes' files, and the decision records count exactly the connections made. A
takeover asked by a user who is neither root nor the gateway's is refused and logged; a
process killed mid-drain loses only its own sessions.

Run by scripts/test; IDENTGATE_BIN names the binary under test."""

import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from peers import BINARY, ROOT, free_port, wait_for_port

ROOT_USER = os.geteuid() == 0
# As root the gateway drops to nobody, as in production; the folder must let it write
# its draining file beside the shared log.
DROP = ("--user", "nobody") if ROOT_USER else ()
GCC = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")


def socks5_connect(port, destination_port, timeout=10.0):
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    connection.sendall(b"\x05\x01\x00")
    assert connection.recv(2) == b"\x05\x00"
    connection.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + destination_port.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = connection.recv(10 - len(reply))
        if not chunk:
            raise ConnectionError("closed during the SOCKS5 reply")
        reply += chunk
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    return connection


def read_to_end(connection):
    """Reads until the peer closes or the connection fails (10 s per read), then closes."""
    connection.settimeout(10)
    try:
        while connection.recv(65536):
            pass
    except OSError:
        pass
    connection.close()


def running(pid):
    """Alive, and not a zombie waiting for a parent that is not this test."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class StreamSource:
    """A destination that streams `size` random bytes to each connection, slowly, and
    keeps the SHA-256 of what it sent under the tunnel number the client sent first."""

    def __init__(self, size, chunk, pause):
        self.size, self.chunk, self.pause = size, chunk, pause
        self.sent = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, connection):
        with connection:
            try:
                number = int(connection.recv(16).decode().strip())
                digest = hashlib.sha256()
                left = self.size
                while left > 0:
                    data = os.urandom(min(self.chunk, left))
                    connection.sendall(data)
                    digest.update(data)
                    left -= len(data)
                    time.sleep(self.pause)
                self.sent[number] = digest.hexdigest()
            except (OSError, ValueError):
                return  # the client went (a test that kills the gateway): nothing sent counts

    def close(self):
        self.listener.close()


class UpgradeTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-upgrade-")
        os.chmod(self.folder, 0o777)
        if not os.environ.get("UPGRADE_KEEP"):
            self.addCleanup(shutil.rmtree, self.folder, True)
        self.policy = os.path.join(self.folder, "loopback.policy")
        with open(self.policy, "w") as out:
            out.write("allow from 127.0.0.0/8 to 127.0.0.0/8\n")
        os.chmod(self.policy, 0o644)
        self.port = free_port()
        self.metrics = free_port()
        self.socket_path = os.path.join(self.folder, "upgrade.sock")
        self.audit = os.path.join(self.folder, "audit.jsonl")
        self.processes = []
        self.addCleanup(self.stop_all)

    def start(self, wait_serving=True):
        """One more identgate with the same command line: the first binds, each later one
        takes over from the one running."""
        number = len(self.processes)
        log = open(os.path.join(self.folder, f"gateway-{number}.log"), "w")
        process = subprocess.Popen(
            [BINARY, "run", "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", f"127.0.0.1:{self.metrics}",
             "--policy", self.policy, "--audit-log", self.audit, "--upgrade-socket", self.socket_path,
             "--shutdown-grace", "2s", *DROP, *getattr(self, "extra", ())],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes.append(process)
        if wait_serving:
            deadline = time.monotonic() + 30
            while "identgate serving" not in self.output(number):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.fail(f"gateway {number} did not start:\n{self.output(number)[-3000:]}")
                time.sleep(0.02)
            if number > 0:
                # Serving, and the one before it has stopped accepting and said so.
                while "took the listeners over" not in self.output(number):
                    if process.poll() is not None or time.monotonic() > deadline:
                        self.fail(f"gateway {number} did not take over:\n{self.output(number)[-3000:]}\n"
                                  f"gateway {number - 1}:\n{self.output(number - 1)[-3000:]}")
                    time.sleep(0.02)
        return process

    def output(self, number):
        with open(os.path.join(self.folder, f"gateway-{number}.log"), errors="replace") as log:
            return log.read()

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def audit_files(self):
        return [self.audit] + sorted(glob.glob(self.audit + ".drain-*"))

    def records(self):
        found = []
        for path in self.audit_files():
            with open(path) as lines:
                found += [json.loads(line) for line in lines if line.strip()]
        return found

    def slow_tunnel_then_upgrade(self):
        """A tunnel through the first gateway from a source that streams slowly (about 20 s),
        its first bytes read, then a successor started: (first, tunnel, source)."""
        source = StreamSource(size=4_000_000, chunk=4096, pause=0.05)
        self.addCleanup(source.close)
        first = self.start()
        tunnel = socks5_connect(self.port, source.port, timeout=30)
        tunnel.sendall(b"1\n")
        self.assertTrue(tunnel.recv(4096))
        self.start()
        return first, tunnel, source

    def verify(self):
        result = subprocess.run([BINARY, "audit", "verify", *self.audit_files()], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    @unittest.skipUnless(GCC, "needs a C compiler for the load generator")
    def test_ten_upgrades_under_load_lose_nothing(self):
        loadgen = os.path.join(self.folder, "loadgen")
        subprocess.run([GCC, "-O2", "-o", loadgen, os.path.join(ROOT, "Benchmarks", "loadgen", "loadgen.c")], check=True)
        reply_port = free_port()
        reply = subprocess.Popen([loadgen, "reply", str(reply_port)])
        self.addCleanup(lambda: (reply.kill(), reply.wait()))
        wait_for_port("127.0.0.1", reply_port)
        source = StreamSource(size=1_200_000, chunk=8192, pause=0.05)
        self.addCleanup(source.close)
        self.start()

        # 20 long-lived tunnels, each ~7 s, opened before the first upgrade.
        received = {}
        failures = []

        def tunnel(number):
            try:
                with socks5_connect(self.port, source.port, timeout=60) as connection:
                    connection.sendall(f"{number}\n".encode())
                    digest, total = hashlib.sha256(), 0
                    while True:
                        data = connection.recv(65536)
                        if not data:
                            break
                        digest.update(data)
                        total += len(data)
                    received[number] = (digest.hexdigest(), total)
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(f"tunnel {number}: {error!r}")

        tunnels = [threading.Thread(target=tunnel, args=(n,)) for n in range(20)]
        for thread in tunnels:
            thread.start()
        # Continuous load for the whole run: SOCKS5 and SOCKS4 at once, 8 in flight each.
        load = [subprocess.Popen([loadgen, "rate", mode, str(self.port), str(reply_port), "8", "10000000", "11"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for mode in ("socks5", "socks4")]
        self.addCleanup(lambda: [p.kill() for p in load if p.poll() is None])
        time.sleep(1.0)
        for _ in range(10):
            self.start()
            time.sleep(0.6)
        counted = []
        for process in load:
            out, err = process.communicate(timeout=60)
            fields = out.split()
            self.assertEqual(len(fields), 6, out + err)
            connections, failed = int(fields[0]), int(fields[5])
            self.assertEqual(failed, 0, f"{failed} failed connections during the upgrades: {out} {err}")
            self.assertGreater(connections, 1000, out)
            counted.append(connections)
        print(f"\nupgrades under load: {counted[0]} SOCKS5 and {counted[1]} SOCKS4 connections in 11 s "
              f"({sum(counted) / 11:.0f}/s), 10 upgrades, none failed", flush=True)
        for thread in tunnels:
            thread.join(timeout=60)
        self.assertEqual(failures, [])
        self.assertEqual(len(received), 20)
        for number, (digest, total) in received.items():
            self.assertEqual(total, source.size, f"tunnel {number}")
            self.assertEqual(digest, source.sent.get(number), f"tunnel {number}: the bytes differ")

        # Every process taken over exits once its tunnels have ended; the last one serves.
        deadline = time.monotonic() + 20
        while any(p.poll() is None for p in self.processes[:-1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for number, process in enumerate(self.processes[:-1]):
            self.assertEqual(process.poll(), 0, f"gateway {number} still running or failed:\n{self.output(number)[-2000:]}")
        self.assertIsNone(self.processes[-1].poll())
        # The draining gauge of the last process: nothing left anywhere.
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as answer:
            self.assertIn("identgate_draining_sessions 0", answer.read().decode())
        self.stop_all()

        verified = self.verify()
        self.assertIn("10 files of draining processes", verified)
        records = self.records()
        decisions = [r for r in records if r["event"] == "decision"]
        self.assertEqual(len(decisions), sum(counted) + 20)
        self.assertTrue(all(d["verdict"] == "allow" for d in decisions))
        # One session-end per allowed session, session numbers unique across the processes.
        sessions = [d["session"] for d in decisions]
        self.assertEqual(len(set(sessions)), len(sessions))
        ends = [r["session"] for r in records if r["event"] == "session-end"]
        self.assertEqual(sorted(ends), sorted(sessions))
        self.assertEqual(len([r for r in records if r["event"] == "takeover"]), 10)

    def test_a_takeover_by_another_user_is_refused_and_logged(self):
        if not ROOT_USER:
            self.skipTest("needs root to act as another user")
        self.start()
        # 50 attempts in a row: each refused, the log and the audit log spared the flood.
        probe = (
            "import socket, sys\n"
            "for _ in range(50):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            f"    s.connect({self.socket_path!r})\n"
            "    s.send(b'takeover v1 pid=1')\n"
            "    s.settimeout(10)\n"
            "    print(s.recv(4096).decode())\n"
            "    s.close()\n")
        result = subprocess.run(
            ["setpriv", "--reuid", "12345", "--regid", "12345", "--clear-groups", "python3", "-c", probe],
            capture_output=True, text=True, timeout=60)
        answers = result.stdout.splitlines()
        self.assertEqual(len(answers), 50, result.stdout + result.stderr)
        self.assertTrue(all(answer.startswith("refused uid 12345") for answer in answers), result.stdout)
        self.assertIn("takeover refused", self.output(0))
        # The gateway serves on, and the refusal is on record.
        destination = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(destination.close)
        with socks5_connect(self.port, destination.getsockname()[1]):
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r["event"] == "takeover-refused" for r in self.records()):
            time.sleep(0.1)
        refused = [r for r in self.records() if r["event"] == "takeover-refused"]
        self.assertGreaterEqual(len(refused), 1)
        self.assertLess(len(refused), 10, "at most one a second")
        self.assertIn("uid 12345", refused[0]["reason"])
        self.assertLess(self.output(0).count("takeover refused"), 10)

    def test_identgate_upgrade_as_systemd_reload_runs_it(self):
        """ExecReload=identgate upgrade: the new process, started with the running one's
        command line in a session of its own, says READY=1 with MAINPID=<its pid> (the
        unit's NotifyAccess=all makes it the main process), and `upgrade` returns 0 once it
        serves; a binary that cannot serve returns 1 and leaves the gateway serving."""
        from test_service import NotifySocket
        notify = NotifySocket()
        self.addCleanup(notify.close)
        first = self.start()
        environment = dict(os.environ, NOTIFY_SOCKET=notify.path)

        def upgrade(name, **options):
            # To files, as to the journal: the new gateway keeps the output it inherits.
            path = os.path.join(self.folder, name)
            with open(path, "w") as out:
                code = subprocess.run([BINARY, "upgrade", "--upgrade-socket", self.socket_path], stdout=out,
                                      stderr=subprocess.STDOUT, timeout=60, **options).returncode
            with open(path, errors="replace") as out:
                return code, out.read()

        code, output = upgrade("upgrade.log", env=environment)
        self.assertEqual(code, 0, output)
        self.assertIn("identgate upgraded: pid", output)
        new_pid = int(output.split("identgate upgraded: pid ")[1].split()[0])
        self.addCleanup(lambda: os.kill(new_pid, signal.SIGTERM) if running(new_pid) else None)
        self.assertTrue(notify.collect(f"MAINPID={new_pid}"), notify.messages)
        self.assertIn("READY=1", next(m for m in notify.messages if f"MAINPID={new_pid}" in m))
        self.assertEqual(os.getsid(new_pid), new_pid, "a session of its own: it outlives the reload command")
        first.wait(timeout=20)
        self.assertEqual(first.returncode, 0)
        destination = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(destination.close)
        with socks5_connect(self.port, destination.getsockname()[1]):
            pass
        # A policy that no longer compiles: the new binary says why, the gateway serves on.
        with open(self.policy, "w") as out:
            out.write("allow from nowhere-at-all\n")
        code, output = upgrade("failed.log")
        self.assertEqual(code, 1, output)
        self.assertIn("did not start", output)
        self.assertIn("nowhere-at-all", output)
        with socks5_connect(self.port, destination.getsockname()[1]):
            pass
        os.kill(new_pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while running(new_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.verify()

    def test_a_signal_during_a_takeover_keeps_the_listeners_where_they_were(self):
        """SIGTERM between the handing and the successor's `serving`: the successor (this
        test, by hand) is refused before it accepts anything, and the gateway stops as
        asked, its log one chain without a takeover record."""
        first = self.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as successor:
            successor.settimeout(10)
            successor.connect(self.socket_path)
            successor.send(b"takeover v1 pid=1")
            text, descriptors, _, _ = socket.recv_fds(successor, 16384, 64)
            self.assertTrue(text.startswith(b"sockets v1"), text)
            self.assertGreaterEqual(len(descriptors), 3, "SOCKS, metrics and the upgrade socket")
            for descriptor in descriptors:
                os.close(descriptor)
            first.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            try:
                successor.send(b"serving")
                answer = successor.recv(4096)
            except OSError:
                answer = b""
            # Refused, or the gateway already gone: either way it is not taken over.
            self.assertTrue(answer.startswith(b"refused") or answer == b"", answer)
        self.assertEqual(first.wait(timeout=20), 0)
        records = self.records()
        self.assertFalse([r for r in records if r["event"] == "takeover"])
        self.assertEqual(records[-1]["event"], "gateway-stop")
        self.verify()

    def test_the_drain_timeout_ends_a_tunnel_with_its_record(self):
        """--drain-timeout: a tunnel still running when it passes is closed, and its one
        session-end record is in the draining file; the process exits 0."""
        self.extra = ("--drain-timeout", "1s")
        first, tunnel, _ = self.slow_tunnel_then_upgrade()
        started = time.monotonic()
        self.assertEqual(first.wait(timeout=20), 0)
        self.assertLess(time.monotonic() - started, 10, "gone after the drain time-out, not when the tunnel ends")
        read_to_end(tunnel)
        self.stop_all()
        drained = glob.glob(self.audit + ".drain-*")
        self.assertEqual(len(drained), 1)
        with open(drained[0]) as lines:
            records = [json.loads(line) for line in lines]
        decision = next(r for r in self.records() if r["event"] == "decision")
        ends = [r for r in records if r["event"] == "session-end" and r["session"] == decision["session"]]
        self.assertEqual(len(ends), 1, records)
        self.verify()

    def test_a_process_killed_mid_drain_loses_only_its_own_sessions(self):
        first, tunnel, source = self.slow_tunnel_then_upgrade()
        # The first drains its tunnel; killed, only that tunnel ends.
        time.sleep(0.5)
        first.kill()
        first.wait(timeout=10)
        read_to_end(tunnel)
        # The successor serves on.
        with socks5_connect(self.port, source.port) as connection:
            connection.sendall(b"2\n")
            self.assertTrue(connection.recv(4096))
        self.stop_all()
        self.verify()
        # A kill in the middle of a write leaves a cut last line: verify names its place.
        drained = glob.glob(self.audit + ".drain-*")
        self.assertEqual(len(drained), 1)
        with open(drained[0], "a") as torn:
            torn.write('{"event":"session-end","instance":"cut sh')
        lines = sum(1 for _ in open(drained[0]))
        result = subprocess.run([BINARY, "audit", "verify", *self.audit_files()], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(f"{drained[0]}:{lines}: not an audit record", result.stdout)


if __name__ == "__main__":
    unittest.main()
