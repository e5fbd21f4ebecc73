"""A fleet of two gateways in a multi-host network built from namespaces: two client
hosts (oidentd, the local users alice and bob), a router, two gateway hosts, a
destination host. Two shapes:

  HAProxy (TCP mode, send-proxy-v2, health checks) on the router in front of both
  gateways: the policy and the audit log see the real client (PROXY protocol), passwords
  work, ident is a documented 92, a PROXY header from anyone else is refused, and a
  gateway killed mid-run is taken out by the health check.

  ECMP: the service address on both gateways, a two-way multipath route on the router
  (hashing on addresses): every flow of a client address, the identd's answer included,
  reaches one gateway, so ident answers 90/93 as the users dictate; a next hop removed,
  new flows go to the other.

  c1 10.1.0.2-9 ─┐                ┌─ g1 10.3.0.2 (+ 10.99.0.1 on lo)
                 ├─ r (HAProxy, ──┤
  c2 10.2.0.2-9 ─┘   ECMP route)  └─ g2 10.4.0.2 (+ 10.99.0.1 on lo)
                       │
                       d 10.5.0.2 (HTTP)

Every audit record lands exactly once across both gateways' logs; `audit verify` and
`audit summary` read both."""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import netns
from peers import BINARY

POLICY = """
ident from 10.1.0.0/24, 10.2.0.0/24 timeout 3s
allow connect from 10.1.0.0/24 version socks4 ident          label "c1 ident"
allow connect from 10.1.0.0/24 version socks5                label "c1"
allow connect from 10.2.0.0/24 version socks5 auth password user carol label "c2 carol"
allow connect from 10.2.0.0/24 version socks4 ident          label "c2 ident"
"""

HAPROXY = """
global
    maxconn 4000
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend socks
    bind 10.1.0.1:1080
    bind 10.2.0.1:1080
    default_backend gateways
backend gateways
    balance roundrobin
    server g1 10.3.0.2:1080 send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 2
    server g2 10.4.0.2:1080 send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 2
"""

USERS = ("alice", "bob")
BLOB = os.urandom(64 * 1024)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


def user_exists(name):
    return subprocess.run(["id", name], capture_output=True).returncode == 0


@unittest.skipUnless(netns.available() and all(shutil.which(t) for t in ("haproxy", "oidentd", "curl"))
                     and all(map(user_exists, USERS)),
                     "needs root, iproute2, haproxy, oidentd, curl and the users alice and bob (scripts/test)")
class FleetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="identgate-fleet-")
        os.chmod(cls.folder, 0o755)
        cls.net = netns.Topology()
        try:
            cls.build()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.net.close()
        shutil.rmtree(cls.folder, ignore_errors=True)

    @classmethod
    def build(cls):
        net = cls.net
        for host in ("c1", "c2", "r", "g1", "g2", "d"):
            net.add_host(host)
        net.link("c1", "10.1.0.2/24", "r", "10.1.0.1/24")
        net.link("c2", "10.2.0.2/24", "r", "10.2.0.1/24")
        g1_end = net.link("g1", "10.3.0.2/24", "r", "10.3.0.1/24")
        net.link("g2", "10.4.0.2/24", "r", "10.4.0.1/24")
        net.link("d", "10.5.0.2/24", "r", "10.5.0.1/24")
        for client, network in (("c1", "10.1.0"), ("c2", "10.2.0")):
            device = net.run(client, "ip", "-o", "-4", "addr", "show", "to", f"{network}.2").stdout.split()[1]
            for last in range(3, 10):
                net.run(client, "ip", "addr", "add", f"{network}.{last}/24", "dev", device)
        for host, router in (("c1", "10.1.0.1"), ("c2", "10.2.0.1"), ("g1", "10.3.0.1"), ("g2", "10.4.0.1"), ("d", "10.5.0.1")):
            net.run(host, "ip", "route", "add", "default", "via", router)
        # The service address of the layer-3 fleet, on both gateways.
        for gateway in ("g1", "g2"):
            net.run(gateway, "ip", "addr", "add", "10.99.0.1/32", "dev", "lo")
        # The router forwards, with no reverse-path filter (replies from the service
        # address come from either next hop), and spreads the service address over both
        # gateways, hashing on source and destination address (policy 0, the default).
        net.run("r", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        net.run("r", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        net.run("r", "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=0")
        net.run("r", "ip", "route", "add", "10.99.0.1/32", "nexthop", "via", "10.3.0.2", "nexthop", "via", "10.4.0.2")

        # The destination: a fixed blob over HTTP.
        web = os.path.join(cls.folder, "web")
        os.mkdir(web)
        with open(os.path.join(web, "blob"), "wb") as out:
            out.write(BLOB)
        net.start("d", "python3", "-m", "http.server", "8080", "--bind", "10.5.0.2", "--directory", web)
        for client in ("c1", "c2"):
            net.start(client, "oidentd", "-i", "-q", "-a", "0.0.0.0", "-p", "113", "-l", "2000", "-t", "10")

        # The gateways: the policy, carol's password, PROXY headers from the router's two
        # addresses only; each its own audit log and instance name.
        policy = os.path.join(cls.folder, "fleet.policy")
        with open(policy, "w") as out:
            out.write(POLICY)
        line = subprocess.run([BINARY, "passwd", "carol"], input=b"carol-secret\n", capture_output=True, check=True)
        passwords = os.path.join(cls.folder, "passwords")
        with open(passwords, "wb") as out:
            out.write(line.stdout)
        cls.gateways = {}
        for gateway, address in (("g1", "10.3.0.2"), ("g2", "10.4.0.2")):
            log = open(os.path.join(cls.folder, f"{gateway}.log"), "w")
            process = net.start(
                gateway, BINARY, "run", "--stay-root", "--listen", f"{address}:1080", "--listen", "10.99.0.1:1080",
                "--proxy-protocol-from", "10.3.0.1/32", "--proxy-protocol-from", "10.4.0.1/32",
                "--policy", policy, "--password-file", passwords, "--methods", "password,none",
                "--audit-log", os.path.join(cls.folder, f"{gateway}.jsonl"), "--instance", gateway,
                stdout=log, stderr=subprocess.STDOUT)
            cls.gateways[gateway] = process
        net.wait_for_port("g1", "10.3.0.2", 1080)
        net.wait_for_port("g2", "10.4.0.2", 1080)
        net.wait_for_port("d", "10.5.0.2", 8080)

        cls.haproxy_socket = os.path.join(cls.folder, "haproxy.sock")
        config = os.path.join(cls.folder, "haproxy.cfg")
        with open(config, "w") as out:
            out.write(HAPROXY.format(socket=cls.haproxy_socket))
        net.start("r", "haproxy", "-f", config, "-db")
        net.wait_for_port("c1", "10.1.0.1", 1080)
        cls.wait_for_servers({"g1": "UP", "g2": "UP"})

    # MARK: helpers

    @classmethod
    def server_states(cls):
        with socket.socket(socket.AF_UNIX) as stats:
            stats.settimeout(5)
            stats.connect(cls.haproxy_socket)
            stats.sendall(b"show stat\n")
            text = b""
            while chunk := stats.recv(65536):
                text += chunk
        states = {}
        for line in text.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "gateways" and fields[1] in ("g1", "g2"):
                states[fields[1]] = fields[17].split()[0]
        return states

    @classmethod
    def wait_for_servers(cls, expected, deadline=20):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if cls.server_states() == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"HAProxy's servers are {cls.server_states()}, not {expected}")

    def fetch(self, client, user, proxy, count, sources=8, parallel=8):
        """`count` downloads of the blob with curl as `user` on `client`, each from one of
        the client's first `sources` addresses in turn; returns how many were byte-exact."""
        network = "10.1.0" if client == "c1" else "10.2.0"
        script = (
            f"seq 0 {count - 1} | xargs -P {parallel} -I{{}} sh -c "
            f"'curl -sS --max-time 15 --interface {network}.$((2 + {{}} % {sources})) -x {proxy} "
            f"http://10.5.0.2:8080/blob | sha256sum'")
        result = self.net.run(client, "runuser", "-u", user, "--", "bash", "-c", script, check=False, timeout=300, text=True)
        return sum(1 for line in result.stdout.splitlines() if line.startswith(BLOB_SHA))

    def decisions(self, gateway):
        path = os.path.join(self.folder, f"{gateway}.jsonl")
        deadline = time.monotonic() + 5
        records = []
        while time.monotonic() < deadline:
            with open(path) as lines:
                records = [json.loads(line) for line in lines if line.strip()]
            time.sleep(0.2)
            with open(path) as lines:
                if sum(1 for _ in lines) == len(records):
                    break
        return [r for r in records if r["event"] == "decision"]

    def gateway_output(self, gateway):
        with open(os.path.join(self.folder, f"{gateway}.log"), errors="replace") as log:
            return log.read()

    # MARK: the tests (in name order: HAProxy first, then ECMP, then the audit review,
    # then the fail-over tests that stop a gateway or a route)

    def test_1_haproxy_carries_the_real_client(self):
        before = {g: len(self.decisions(g)) for g in ("g1", "g2")}
        self.assertEqual(self.fetch("c1", "alice", "socks5://10.1.0.1:1080", 200), 200)
        self.assertEqual(self.fetch("c2", "bob", "socks5://carol:carol-secret@10.2.0.1:1080", 200), 200)
        # Without carol's password, c2 is refused: decided on the real client, not the balancer.
        self.assertEqual(self.fetch("c2", "bob", "socks5://10.2.0.1:1080", 1), 0)
        # Ident cannot work through a TCP proxy: a documented 92, never a guess.
        self.assertEqual(self.fetch("c1", "alice", "socks4://alice@10.1.0.1:1080", 1), 0)
        new = {g: self.decisions(g)[before[g]:] for g in ("g1", "g2")}
        records = new["g1"] + new["g2"]
        self.assertGreater(len(new["g1"]), 50, "both gateways served")
        self.assertGreater(len(new["g2"]), 50, "both gateways served")
        allowed = [r for r in records if r["verdict"] == "allow"]
        self.assertEqual(len(allowed), 400)
        for record in records:
            self.assertRegex(record["client"], r"^10\.[12]\.0\.[2-9]:\d+$", "the real client")
            self.assertRegex(record["balancer"], r"^10\.[34]\.0\.1:\d+$", "the balancer hop")
            self.assertIn(record["listener"], ("10.1.0.1:1080", "10.2.0.1:1080"), "the address the client reached")
        self.assertEqual({r["ruleLabel"] for r in allowed if r["client"].startswith("10.2.")}, {"c2 carol"})
        self.assertEqual({r["ruleLabel"] for r in allowed if r["client"].startswith("10.1.")}, {"c1"})
        self.assertEqual(sorted(r["reply"] for r in records if r["verdict"] == "deny"), [2, 92])
        refused_ident = next(r for r in records if r["reply"] == 92)
        self.assertIn("load balancer", refused_ident["ident"]["detail"])
        self.assertIn("cannot be asked", self.gateway_output("g1"), "the start-up warning for ident lines")
        check = subprocess.run([BINARY, "check", os.path.join(self.folder, "fleet.policy"), "--proxy-protocol-from", "10.3.0.1/32"],
                               capture_output=True, text=True, timeout=60)
        self.assertRegex(check.stdout, r"fleet\.policy:2:1: warning: clients that come through the load balancers \(10\.3\.0\.1/32\)")

    def test_2_proxy_header_from_anyone_else_is_refused(self):
        before = len(self.decisions("g1"))
        forged = b"PROXY TCP4 10.2.0.2 10.3.0.2 40000 1080\r\n\x05\x01\x00"
        probe = self.net.run("c1", "python3", "-c", f"""
import socket
s = socket.create_connection(("10.3.0.2", 1080), timeout=5)
s.sendall({forged!r})
print(repr(s.recv(10)))
""", text=True)
        self.assertEqual(probe.stdout.strip(), "b''", "closed without a SOCKS reply")
        self.assertIn("PROXY protocol header from a peer outside --proxy-protocol-from", self.gateway_output("g1"))
        # From the balancer's own address a header is required: plain SOCKS is refused too.
        bare = self.net.run("r", "python3", "-c", """
import socket
s = socket.create_connection(("10.3.0.2", 1080), source_address=("10.3.0.1", 0), timeout=5)
s.sendall(b"\\x05\\x01\\x00" + b"\\x00" * 40)
print(repr(s.recv(10)))
""", text=True)
        self.assertEqual(bare.stdout.strip(), "b''", "closed without a SOCKS reply")
        self.assertIn("PROXY protocol header refused", self.gateway_output("g1"))
        self.assertEqual(len(self.decisions("g1")), before, "nothing was decided for either")

    def test_3_ecmp_keeps_ident_working(self):
        before = {g: len(self.decisions(g)) for g in ("g1", "g2")}
        self.assertEqual(self.fetch("c1", "alice", "socks4://alice@10.99.0.1:1080", 200), 200, "90 for alice")
        self.assertEqual(self.fetch("c2", "bob", "socks4://bob@10.99.0.1:1080", 100), 100, "90 for bob")
        self.assertEqual(self.fetch("c2", "bob", "socks4://alice@10.99.0.1:1080", 100), 0, "93: bob claims alice")
        new = {g: self.decisions(g)[before[g]:] for g in ("g1", "g2")}
        records = new["g1"] + new["g2"]
        self.assertEqual(len(records), 400)
        self.assertGreater(len(new["g1"]), 20, "both gateways served")
        self.assertGreater(len(new["g2"]), 20, "both gateways served")
        for record in records:
            self.assertNotIn("balancer", record, "no balancer in this shape")
            self.assertEqual(record["listener"], "10.99.0.1:1080")
            expected = 93 if record["claimedUser"] == "alice" and record["client"].startswith("10.2.") else 90
            self.assertEqual(record["reply"], expected, record)
            self.assertEqual(record["ident"]["outcome"], "user-id", record)
            self.assertEqual(record["ident"]["userID"], "alice" if record["client"].startswith("10.1.") else "bob")
        # Every flow of one client address went to one gateway: its identd answered there.
        by_address = {}
        for gateway, items in new.items():
            for record in items:
                by_address.setdefault(record["client"].rsplit(":", 1)[0], set()).add(gateway)
        self.assertTrue(all(len(gateways) == 1 for gateways in by_address.values()), by_address)

    def test_4_audit_review_reads_both_instances(self):
        g1, g2 = (os.path.join(self.folder, f"{g}.jsonl") for g in ("g1", "g2"))
        # The gateways still run: wait until their writers have written the last batches
        # (unchanged for half a second), so that the review and the counts below read
        # the same records.
        deadline = time.monotonic() + 10
        sizes = None
        while time.monotonic() < deadline:
            now = (os.path.getsize(g1), os.path.getsize(g2))
            if now == sizes:
                break
            sizes = now
            time.sleep(0.5)
        verify = subprocess.run([BINARY, "audit", "verify", g1, g2], capture_output=True, text=True, timeout=60)
        self.assertEqual(verify.returncode, 0, verify.stdout)
        self.assertIn("instance g1:", verify.stdout)
        self.assertIn("instance g2:", verify.stdout)
        summary = subprocess.run([BINARY, "audit", "summary", "--top", "5", g1, g2], capture_output=True, text=True, timeout=60)
        self.assertEqual(summary.returncode, 0, summary.stdout)
        counts = {name: int(count) for count, name in re.findall(r"^\s+(\d+)\s+(g[12])$", summary.stdout, re.MULTILINE)}
        self.assertEqual(counts, {"g1": len(self.decisions("g1")), "g2": len(self.decisions("g2"))}, summary.stdout)
        total = len(self.decisions("g1")) + len(self.decisions("g2"))
        decided = re.search(r"decisions: (\d+)", summary.stdout)
        self.assertEqual(int(decided.group(1)), total, "every request exactly once")
        # show merges the two logs in time order.
        shown = subprocess.run([BINARY, "audit", "show", "--json", g1, g2], capture_output=True, text=True, timeout=60)
        times = [line.split('"time":"')[1][:23] for line in shown.stdout.splitlines() if '"time":"' in line]
        self.assertEqual(len(times), total)
        self.assertEqual(times, sorted(times))

    def test_5_ecmp_fails_over_when_a_route_goes(self):
        # One next hop removed (as a routing daemon would on a failed health check): new
        # flows to the service address all take the other; then it comes back.
        self.net.run("r", "ip", "route", "replace", "10.99.0.1/32", "via", "10.4.0.2")
        try:
            before = {g: len(self.decisions(g)) for g in ("g1", "g2")}
            self.assertEqual(self.fetch("c1", "alice", "socks4://alice@10.99.0.1:1080", 50), 50)
            self.assertEqual(len(self.decisions("g2")) - before["g2"], 50)
            self.assertEqual(len(self.decisions("g1")), before["g1"], "none to the removed hop")
        finally:
            self.net.run("r", "ip", "route", "replace", "10.99.0.1/32", "nexthop", "via", "10.3.0.2", "nexthop", "via", "10.4.0.2")

    def test_6_haproxy_fails_over_when_a_gateway_dies_mid_run(self):
        served = []
        run = threading.Thread(target=lambda: served.append(self.fetch("c1", "alice", "socks5://10.1.0.1:1080", 300, parallel=4)))
        run.start()
        time.sleep(0.5)
        self.gateways["g1"].kill()
        self.gateways["g1"].wait()
        run.join(300)
        # Only the sessions g1 was relaying when it died can fail (at most the 4 in
        # flight); HAProxy redispatches the connects it refuses.
        self.assertGreaterEqual(served[0], 296, f"{served[0]} of 300 byte-exact")
        self.wait_for_servers({"g1": "DOWN", "g2": "UP"})
        before = len(self.decisions("g2"))
        self.assertEqual(self.fetch("c1", "alice", "socks5://10.1.0.1:1080", 50), 50, "all new requests served by g2")
        self.assertEqual(len(self.decisions("g2")) - before, 50)
