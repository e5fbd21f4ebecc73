"""The audit log of a real gateway: schema, tamper evidence, losslessness under load,
failing closed on a full disk, rotation under load, and replay."""

import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import jsonschema

from peers import BINARY, ROOT, FullDisk, Gateway, HTTPServer, TCPServer, echo, recv_exactly, socks5_connect

SCHEMA = json.load(open(os.path.join(ROOT, "docs", "audit-log.schema.json")))


def socks5_exchange(gateway_port, destination_port, payload=b"x"):
    """One SOCKS5 CONNECT with a small echo; returns the reply code."""
    with socket.create_connection(("127.0.0.1", gateway_port), timeout=20) as client:
        client.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + destination_port.to_bytes(2, "big"))
        recv_exactly(client, 2)
        reply = recv_exactly(client, 10)
        if reply[1] == 0:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload
        return reply[1]


def verify(*files, last=None):
    arguments = [BINARY, "audit", "verify", *files] + (["--last", last] if last else [])
    return subprocess.run(arguments, capture_output=True, text=True, timeout=120)


def gateway_records(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines]


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


class AuditLogTests(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-audit-test-")
        os.chmod(self.folder, 0o755)
        self.policy = os.path.join(self.folder, "gate.policy")

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def write_policy(self, text):
        with open(self.policy, "w") as out:
            out.write(text)

    def test_every_event_type_validates_against_the_schema(self):
        self.write_policy(
            "ident from 127.0.0.0/8 timeout 500ms\n"
            'allow connect from 127.0.0.0/8 user alice ident label "verified"\n'
            'allow connect from 127.0.0.0/8 port 1-20000 label "low ports"\n'
            "allow connect from 127.0.0.0/8\n")
        # With a signing key, so that checkpoints are among the events.
        key = os.path.join(self.folder, "audit.key")
        subprocess.run([BINARY, "audit", "keygen", "--private", key, "--public", key + ".pub"], capture_output=True,
                       check=True, timeout=30)
        with HTTPServer() as http, TCPServer(echo) as server, \
                Gateway("--policy", self.policy, "--ident-port", "1", "--audit-signing-key", key) as gateway:
            subprocess.run(["curl", "-sS", "--socks5", gateway.address, f"http://127.0.0.1:{http.port}/"],
                           capture_output=True, timeout=30)
            # A SOCKS4 request with a user: identd is asked (and cannot be reached).
            subprocess.run(["curl", "-sS", "-x", f"socks4://alice@{gateway.address}", f"http://127.0.0.1:{http.port}/"],
                           capture_output=True, timeout=30)
            self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            self.write_policy("deny from any\nexpect deny from 127.0.0.1 to a.b:1\n")
            gateway.process.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "policy reloaded" in gateway.output()))
            self.assertNotEqual(socks5_exchange(gateway.port, server.port), 0)
            self.write_policy("deny from any\nexpect allow from 127.0.0.1 to a.b:1\n")
            gateway.process.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "policy reload rejected" in gateway.output()))
            os.rename(gateway.audit_log, gateway.audit_log + ".1")
            gateway.process.send_signal(signal.SIGUSR1)
            self.assertTrue(wait_for(lambda: os.path.exists(gateway.audit_log)))
            self.assertEqual(gateway.stop(), 0)
            records = []
            for path in (gateway.audit_log + ".1", gateway.audit_log):
                with open(path) as lines:
                    records += [json.loads(line) for line in lines]
            result = verify(gateway.audit_log + ".1", gateway.audit_log)
        self.assertEqual(result.returncode, 0, result.stdout)
        for record in records:
            jsonschema.validate(record, SCHEMA)
        events = {record["event"] for record in records}
        # audit-gap is written only after a failure: the full-disk test checks it.
        self.assertEqual(events, set(SCHEMA["properties"]["event"]["enum"]) - {"audit-gap"})
        identified = [r for r in records if r["event"] == "decision" and "ident" in r]
        self.assertTrue(identified, "the SOCKS4 request with a user asked identd")
        self.assertEqual(identified[0]["ident"]["outcome"], "unreachable")
        self.assertEqual(identified[0]["claimedUser"], "alice")

    def make_log(self, requests=10):
        with TCPServer(echo) as server, Gateway() as gateway:
            for _ in range(requests):
                self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            self.assertEqual(gateway.stop(), 0)
            path = os.path.join(self.folder, "audit.jsonl")
            shutil.copy(gateway.audit_log, path)
        with open(path) as lines:
            return path, lines.readlines()

    def tampered(self, lines, name):
        path = os.path.join(self.folder, name)
        with open(path, "w") as out:
            out.writelines(lines)
        return path

    def test_tampering_is_found_with_its_line(self):
        path, lines = self.make_log()
        intact = verify(path)
        self.assertEqual(intact.returncode, 0, intact.stdout)
        last = intact.stdout.split("last hash: ")[1].split()[0]

        edited = list(lines)
        edited[6] = edited[6].replace('"seq":', '"seq": ')  # any change to the bytes
        inserted = lines[:7] + [lines[2]] + lines[7:]
        reordered = lines[:6] + [lines[7], lines[6]] + lines[8:]
        deleted = lines[:6] + lines[7:]
        for name, version, line in [("edited", edited, 7), ("inserted", inserted, 8), ("reordered", reordered, 7),
                                    ("deleted", deleted, 7)]:
            with self.subTest(name):
                result = verify(self.tampered(version, name))
                self.assertEqual(result.returncode, 1, result.stdout)
                self.assertIn(f"{name}:{line}", result.stdout, "names the line where the chain breaks")
        # Cut from the end: the chain is intact, only the kept last hash tells.
        cut = self.tampered(lines[:-2], "cut")
        self.assertEqual(verify(cut).returncode, 0)
        result = verify(cut, last=last)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cut from the end", result.stdout)

    def test_10000_requests_10000_records(self):
        count = 10_000
        with TCPServer(echo) as server, Gateway() as gateway:
            with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
                replies = list(pool.map(lambda _: socks5_exchange(gateway.port, server.port), range(count)))
            self.assertEqual(replies, [0] * count)
            self.assertEqual(gateway.stop(), 0)
            records = gateway.audit_records()
            result = verify(gateway.audit_log)
        decisions = [r for r in records if r["event"] == "decision"]
        ends = [r for r in records if r["event"] == "session-end"]
        self.assertEqual(len(decisions), count)
        self.assertEqual(len(ends), count)
        self.assertEqual({r["session"] for r in decisions}, {r["session"] for r in ends})
        self.assertEqual(result.returncode, 0, result.stdout)

    @unittest.skipUnless(os.geteuid() == 0, "mounting a small tmpfs needs root")
    def test_full_disk_fails_closed(self):
        full = FullDisk(self.folder)
        self.addCleanup(full.unmount)
        disk = full.path
        with TCPServer(echo) as server, Gateway("--audit-log", os.path.join(disk, "audit.jsonl")) as gateway:
            self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            served = server.bytes_received
            full.fill()
            # A few records may still fit in the log's last page; then requests are refused.
            replies = []
            while len(replies) < 200 and (not replies or replies[-1] == 0):
                replies.append(socks5_exchange(gateway.port, server.port))
            self.assertEqual(replies[-1], 1, "general failure once the log cannot be written")
            self.assertEqual([socks5_exchange(gateway.port, server.port) for _ in range(5)], [1] * 5)
            # The connect to the destination may start while the record is written, but
            # no byte is relayed until it is: each served request relayed its one byte.
            self.assertEqual(server.bytes_received, served + replies.count(0), "nothing relayed unlogged")
            self.assertIn("refusing new requests", gateway.output())
            refusals = sum(replies[-1:]) + 5
            self.assertEqual(gateway.output().count("requests refused"), 1, f"one line for {refusals} refusals")
            # Room again: requests are served again.
            full.empty()
            self.assertTrue(wait_for(lambda: socks5_exchange(gateway.port, server.port) == 0, seconds=10))
            # Each episode of refusals is logged at its start and its end, not per request
            # (a disk at its last block may let a record through between two episodes).
            starts, ends = gateway.output().count("requests refused"), gateway.output().count("requests are served again")
            self.assertEqual(starts, ends, gateway.output()[-3000:])
            self.assertTrue(1 <= ends <= 3, f"{ends} episodes")
            self.assertEqual(gateway.stop(), 0)
            result = verify(os.path.join(disk, "audit.jsonl"))
            self.assertEqual(result.returncode, 0, "no partial line was left: " + result.stdout)
            records = gateway_records(os.path.join(disk, "audit.jsonl"))
            for record in records:
                jsonschema.validate(record, SCHEMA)
            self.assertEqual(len([r for r in records if r["event"] == "audit-gap"]), 1, "the log says it had a gap")
            allowed = [r for r in records if r.get("verdict") == "allow"]
            self.assertEqual(len(allowed), server.bytes_received, "every relayed request is in the log")

    def test_rotation_under_load_loses_and_repeats_nothing(self):
        count = 2_000
        with TCPServer(echo) as server, Gateway() as gateway:
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
                futures = [pool.submit(socks5_exchange, gateway.port, server.port) for _ in range(count)]
                time.sleep(0.3)
                os.rename(gateway.audit_log, gateway.audit_log + ".1")
                gateway.process.send_signal(signal.SIGUSR1)
                replies = [future.result() for future in futures]
            self.assertEqual(replies, [0] * count)
            self.assertEqual(gateway.stop(), 0)
            files = [gateway.audit_log + ".1", gateway.audit_log]
            result = verify(*files)
            records = []
            for path in files:
                with open(path) as lines:
                    records += [json.loads(line) for line in lines]
        self.assertEqual(result.returncode, 0, result.stdout)
        decisions = [r["session"] for r in records if r["event"] == "decision"]
        self.assertEqual(len(decisions), count)
        self.assertEqual(len(set(decisions)), count, "no record written twice")
        self.assertGreater(len([r for r in records if r["event"] == "chain-continue"]), 0)

    def test_replay_lists_exactly_the_requests_that_change(self):
        with TCPServer(echo) as kept, TCPServer(echo) as closed, Gateway() as gateway:
            for port, times in ((kept.port, 3), (closed.port, 4)):
                for _ in range(times):
                    self.assertEqual(socks5_exchange(gateway.port, port), 0)
            self.assertEqual(gateway.stop(), 0)
            self.write_policy(f"deny to any port {closed.port}\nallow from 127.0.0.0/8\n")
            result = subprocess.run([BINARY, "audit", "replay", "--policy", self.policy, gateway.audit_log],
                                    capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        changes = [line for line in result.stdout.splitlines() if "->" in line and "allow 0" in line]
        self.assertEqual(len(changes), 4)
        self.assertTrue(all(f":{closed.port}:" in line and "deny 2 (line 1)" in line for line in changes))
        self.assertIn("7 decisions replayed", result.stdout)
        self.assertIn("4 would change", result.stdout)

    def test_server_that_speaks_first_loses_nothing_with_sync_always(self):
        """With --audit-sync always the relay waits for the record on disk; what the
        destination sends at once must wait too, not be lost."""
        banner = os.urandom(1 << 20)

        def speak_first(server, connection):
            connection.sendall(banner)

        with TCPServer(speak_first) as server, Gateway("--audit-sync", "always") as gateway:
            for _ in range(3):
                client = socks5_connect(gateway, "127.0.0.1", server.port)
                received = b""
                while chunk := client.recv(1 << 16):
                    received += chunk
                client.close()
                self.assertEqual(received, banner)
            self.assertEqual(gateway.stop(), 0)

    def test_show_and_summary(self):
        with TCPServer(echo) as server, Gateway() as gateway:
            for _ in range(3):
                socks5_exchange(gateway.port, server.port, payload=b"12345")
            self.assertEqual(gateway.stop(), 0)
            subprocess.run(["gzip", "-k", gateway.audit_log], check=True)
            show = subprocess.run([BINARY, "audit", "show", gateway.audit_log, "--port", str(server.port), "--verdict", "allow"],
                                  capture_output=True, text=True, timeout=60)
            shown_json = subprocess.run([BINARY, "audit", "show", gateway.audit_log, "--json", "--from", "127.0.0.0/8"],
                                        capture_output=True, text=True, timeout=60)
            summary = subprocess.run([BINARY, "audit", "summary", gateway.audit_log], capture_output=True, text=True, timeout=60)
            from_gzip = subprocess.run([BINARY, "audit", "summary", gateway.audit_log + ".gz"], capture_output=True, text=True,
                                       timeout=60)
        self.assertIn("3 decisions", show.stdout)
        self.assertIn("5/5", show.stdout, "bytes up/down from the session's end")
        rows = [json.loads(line) for line in shown_json.stdout.splitlines()]
        self.assertEqual(len(rows), 3)
        self.assertTrue(all(row["bytesFromClient"] == 5 for row in rows))
        self.assertIn("decisions: 3, allowed 3, denied 0", summary.stdout)
        self.assertIn(f"127.0.0.1:{server.port}", summary.stdout)
        self.assertEqual(from_gzip.stdout, summary.stdout, "a gzip-compressed log reads the same")


if __name__ == "__main__":
    unittest.main()


class SignedCheckpointTests(unittest.TestCase):
    """The gateway signs checkpoints with --audit-signing-key; verify --public-key checks
    them. A tail rewritten with every hash recomputed passes the chain alone, not the key."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-keys-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.private = os.path.join(self.folder, "audit.key")
        self.public = os.path.join(self.folder, "audit.pub")
        made = subprocess.run([BINARY, "audit", "keygen", "--private", self.private, "--public", self.public],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(os.stat(self.private).st_mode & 0o777, 0o600)
        again = subprocess.run([BINARY, "audit", "keygen", "--private", self.private, "--public", self.public],
                               capture_output=True, text=True, timeout=30)
        self.assertNotEqual(again.returncode, 0, "an existing key is never overwritten")

    def verify_with_key(self, path, key=None):
        return subprocess.run([BINARY, "audit", "verify", "--public-key", key or self.public, path],
                              capture_output=True, text=True, timeout=60)

    def test_checkpoints_catch_a_rewritten_tail(self):
        with TCPServer(echo) as server, Gateway("--audit-signing-key", self.private) as gateway:
            for _ in range(5):
                self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            self.assertEqual(gateway.stop(), 0)
            records = gateway_records(gateway.audit_log)
            checkpoints = [r for r in records if r["event"] == "checkpoint"]
            self.assertEqual(len(checkpoints), 1, "one at shutdown (fewer than 1,000 records, under a minute)")
            self.assertEqual(records[-1]["event"], "checkpoint", "the last record is signed")
            for record in records:
                jsonschema.validate(record, SCHEMA)
            good = self.verify_with_key(gateway.audit_log)
            self.assertEqual(good.returncode, 0, good.stdout)
            self.assertIn("1 checkpoints verified", good.stdout)
            self.assertNotIn("not covered", good.stdout)
            report = os.path.join(self.folder, "report.html")
            subprocess.run([BINARY, "audit", "report", "--public-key", self.public, "--html", report, gateway.audit_log],
                           capture_output=True, check=True, timeout=60)
            with open(report) as html:
                self.assertIn("1 signed checkpoints verified", html.read())

            # Rewrite a decision and recompute every hash after it, as someone who can
            # write the file but has no key would.
            with open(gateway.audit_log, "rb") as log:
                lines = log.read().splitlines()
            index = next(i for i, line in enumerate(lines) if b'"event":"decision"' in line)
            rewritten = lines[:index]
            for line in lines[index:]:
                record = json.loads(line)
                if len(rewritten) == index:
                    record["client"] = "10.6.6.6:1234"
                record["prev"] = hashlib.sha256(rewritten[-1]).hexdigest()
                rewritten.append(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
            with open(gateway.audit_log, "wb") as log:
                log.write(b"\n".join(rewritten) + b"\n")
            self.assertEqual(verify(gateway.audit_log).returncode, 0, "the chain alone is fooled")
            caught = self.verify_with_key(gateway.audit_log)
            self.assertEqual(caught.returncode, 1)
            self.assertRegex(caught.stdout, rf"audit\.jsonl:{len(lines)}: checkpoint signature does not verify")
            # And another key's public half names the mismatch.
            other_private, other_public = self.private + "2", self.public + "2"
            subprocess.run([BINARY, "audit", "keygen", "--private", other_private, "--public", other_public],
                           capture_output=True, check=True, timeout=30)
            self.assertIn("not by the given key", self.verify_with_key(gateway.audit_log, other_public).stdout)

    def test_a_rotated_file_ends_with_a_checkpoint(self):
        with TCPServer(echo) as server, Gateway("--audit-signing-key", self.private) as gateway:
            self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            self.assertTrue(wait_for(lambda: len(gateway_records(gateway.audit_log)) >= 6))
            os.rename(gateway.audit_log, gateway.audit_log + ".1")
            gateway.process.send_signal(signal.SIGUSR1)
            self.assertTrue(wait_for(lambda: os.path.exists(gateway.audit_log)))
            self.assertEqual(socks5_exchange(gateway.port, server.port), 0)
            self.assertEqual(gateway.stop(), 0)
            rotated = gateway_records(gateway.audit_log + ".1")
            self.assertEqual(rotated[-1]["event"], "checkpoint", "the old file is signed to its end")
            both = self.verify_with_key(gateway.audit_log + ".1")
            self.assertEqual(both.returncode, 0, both.stdout)
            self.assertNotIn("not covered", both.stdout)
            result = subprocess.run([BINARY, "audit", "verify", "--public-key", self.public, gateway.audit_log + ".1",
                                     gateway.audit_log], capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stdout)
            self.assertIn("2 checkpoints verified", result.stdout)
