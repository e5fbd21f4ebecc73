"""`identgate import dante` with Dante as the oracle: a real danted runs each configuration
and identgate runs the policy imported from it, side by side, and the same requests (SOCKS4
and SOCKS5, allowed and refused clients, destinations and ports) must meet the same verdict
from both, for every rule the import did not warn about. Debian's example configurations
must import without an error.

Run by scripts/test as root; IDENTGATE_BIN names the binary under test."""

import glob
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import unittest

from peers import BINARY, Gateway, HTTPServer, TCPServer, dante_settings, echo, free_port, wait_for_port

# Each configuration: its text, with {port} for Dante's, {dest} for a listening destination's.
CONFIGS = {
    "office": """
client pass {{ from: 127.0.0.0/8 to: 0/0 }}
client block {{ from: 0/0 to: 0/0 }}
socks block {{ from: 0/0 to: 127.0.0.3/32 }}
socks block {{ from: 0/0 to: 0/0 port = 22 }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 port 1024 - 65535 command: connect }}
socks pass {{ from: 127.0.0.0/8 to: 0/0 port = http command: connect }}
""",
    "one-client": """
client pass {{ from: 127.0.0.1/32 to: 0/0 }}
socks pass {{ from: 0/0 to: 127.0.0.2/32 port = {dest} }}
socks block {{ from: 0/0 to: 127.0.0.0/8 port gt 2000 }}
socks pass {{ from: 0/0 to: 127.0.0.0/8 port lt 2000 }}
""",
    "ports": """
client pass {{ from: 0/0 to: 0/0 }}
socks block {{ from: 127.0.0.4/32 to: 0/0 }}
socks pass {{ from: 0/0 to: 127.0.0.1/32 port = {dest} protocol: tcp }}
socks pass {{ from: 0/0 to: 0/0 port ne 443 command: connect }}
""",
}



def socks5(port, source, host, dest_port, user=None, password=None):
    """The reply code, or 'reset' when the server closes without one; with a user, RFC
    1929 first ('refused password' when the server says no)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as client:
            client.sendall(b"\x05\x01\x02" if user else b"\x05\x01\x00")
            if client.recv(2) != (b"\x05\x02" if user else b"\x05\x00"):
                return "refused method"
            if user:
                client.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode())
                if client.recv(2) != b"\x01\x00":
                    return "refused password"
            client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", dest_port))
            reply = client.recv(10)
            return reply[1] if len(reply) > 1 else "reset"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"


def socks4(port, source, host, dest_port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as client:
            client.sendall(b"\x04\x01" + struct.pack(">H", dest_port) + socket.inet_aton(host) + b"u\x00")
            reply = client.recv(8)
            return reply[1] if len(reply) > 1 else "reset"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"


def verdict(reply, listening):
    """allowed or refused: a refusal is 0x02, a reset (Dante's client block), or 91 where
    the destination listens (for SOCKS4 91 also means the connect failed)."""
    if reply in (0x00, 90):
        return "allowed"
    if reply in (0x02, "reset", "refused method", "refused password") or (reply == 91 and listening):
        return "refused"
    return "allowed"  # 0x05, 0x04, 91 to a closed port: allowed, then the connect failed


@unittest.skipUnless(shutil.which("danted") and os.geteuid() == 0, "needs dante-server and root")
class ImportDanteTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-import-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.server = TCPServer(echo)
        self.addCleanup(self.server.__exit__, None, None, None)

    def dante(self, text):
        port = free_port()
        config = os.path.join(self.folder, f"danted-{port}.conf")
        with open(config, "w") as out:
            out.write(dante_settings(port) + text)
        process = subprocess.Popen(["danted", "-f", config, "-p", os.path.join(self.folder, f"{port}.pid")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (process.terminate(), process.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        return port, config

    def imported(self, config):
        result = subprocess.run([BINARY, "import", "dante", config], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        policy = os.path.join(self.folder, os.path.basename(config) + ".policy")
        with open(policy, "w") as out:
            out.write(result.stdout)
        check = subprocess.run([BINARY, "check", policy], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + result.stdout)
        return policy, result.stderr

    def test_the_same_verdicts_as_dante(self):
        dest = self.server.port
        requests = [(source, host, port) for source in ("127.0.0.1", "127.0.0.2", "127.0.0.4")
                    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
                    for port in (dest, 22, 80, 443, 1500, 3000)]
        compared = 0
        seen = set()
        for name, template in CONFIGS.items():
            with self.subTest(config=name):
                port, config = self.dante(template.format(dest=dest, port=0))
                policy, warnings = self.imported(config)
                with open(policy) as text:
                    policy_text = text.read()
                warned = {int(line) for line in re.findall(r":(\d+): warning:", warnings)}
                with Gateway("--policy", policy) as gateway:
                    for source, host, dest_port in requests:
                        listening = dest_port == dest and host == "127.0.0.1"
                        for client in (socks5, socks4):
                            if client is socks4 and not listening:
                                continue  # Dante's 91 would not tell a refusal from a failed connect
                            theirs = verdict(client(port, source, host, dest_port), listening)
                            ours = verdict(client(gateway.port, source, host, dest_port), listening)
                            decided = [r for r in gateway.audit_records() if r.get("event") == "decision"]
                            line = decided[-1].get("ruleLabel", "") if decided else ""
                            rule_line = int(line.rsplit(":", 1)[1]) if re.search(r":\d+$", line) else None
                            if rule_line in warned:
                                continue
                            compared += 1
                            seen.add(theirs)
                            self.assertEqual(ours, theirs, f"{name}: {client.__name__} from {source} to {host}:{dest_port}"
                                                           f" (identgate by {line or 'no rule'})\n{policy_text}")
        self.assertGreater(compared, 150)
        self.assertEqual(seen, {"allowed", "refused"}, "both verdicts were put to the test")

    def test_debian_example_configurations_import_and_decide_as_dante(self):
        """Debian's examples, with this test's server settings in place of theirs (they
        name interfaces and users of their own): imported, checked, and run beside Dante."""
        examples = sorted(glob.glob("/usr/share/doc/dante-server/examples/*.conf"))
        self.assertGreaterEqual(len(examples), 2)
        settings = re.compile(r"^\s*(logoutput|internal|external|user\.\w+|socksmethod|clientmethod|errorlog|debug|timeout\.\w+):")
        for example in examples:
            with self.subTest(example=os.path.basename(example)):
                policy, _ = self.imported(example)
                with open(policy) as text:
                    self.assertIn("# Imported from", text.read())
                with open(example) as source:
                    rules = "".join(line for line in source if not settings.match(line))
                port, config = self.dante(rules)
                policy, _ = self.imported(config)
                with Gateway("--policy", policy) as gateway:
                    for host in ("127.0.0.1", "127.0.0.2"):
                        theirs = verdict(socks5(port, "127.0.0.1", host, self.server.port), True)
                        ours = verdict(socks5(gateway.port, "127.0.0.1", host, self.server.port), True)
                        self.assertEqual(ours, theirs, f"to {host}")

    @unittest.skipUnless(shutil.which("unshare"), "needs unshare (a mount namespace for Dante's /etc/shadow)")
    def test_passwords_and_users_as_dante(self):
        """`socksmethod: username` and `user:`: Dante checks the system's passwords, here a
        shadow file of the test's bind-mounted in Dante's mount namespace; identgate gets the
        same passwords in --password-file."""
        passwords = {"alice": "alice-dante-pw", "bob": "bob-dante-pw"}
        hashes = {user: subprocess.run([BINARY, "passwd", user], input=(pw + "\n").encode(), capture_output=True,
                                       check=True).stdout.decode().strip() for user, pw in passwords.items()}
        shadow = os.path.join(self.folder, "shadow")
        passwd = os.path.join(self.folder, "passwd")
        with open("/etc/passwd") as real, open(passwd, "w") as out:
            out.writelines(line for line in real if line.split(":")[0] not in passwords)
            for uid, user in enumerate(passwords, start=4301):
                out.write(f"{user}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n")
        with open(shadow, "w") as out:
            for line in hashes.values():
                out.write(line + ":19000:0:99999:7:::\n")
        os.chmod(shadow, 0o600)
        file = os.path.join(self.folder, "identgate-passwords")
        with open(file, "w") as out:
            out.write("\n".join(hashes.values()) + "\n")
        dest = self.server.port
        rules = (f"client pass {{ from: 0/0 to: 0/0 }}\nsocks pass {{\n from: 0/0 to: 127.0.0.1/32 port = {dest}\n user: alice\n}}\n"
                 "socks pass {\n from: 0/0 to: 127.0.0.2/32\n socksmethod: none\n}\n")
        port = free_port()
        config = os.path.join(self.folder, "users.conf")
        with open(config, "w") as out:
            out.write(dante_settings(port).replace("socksmethod: none", "socksmethod: username none") + rules)
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                  f"mount --bind {passwd} /etc/passwd && mount --bind {shadow} /etc/shadow && exec \"$@\"", "sh"]
        dante = subprocess.Popen([*prefix, "danted", "-f", config, "-p", os.path.join(self.folder, "users.pid")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (dante.terminate(), dante.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        policy, _ = self.imported(config)
        cases = [("alice", passwords["alice"], "127.0.0.1"), ("alice", "wrong", "127.0.0.1"), ("bob", passwords["bob"], "127.0.0.1"),
                 (None, None, "127.0.0.1"), (None, None, "127.0.0.2"), ("bob", passwords["bob"], "127.0.0.2")]
        with Gateway("--policy", policy, "--methods", "password,none", "--password-file", file) as gateway:
            seen = set()
            for user, password, host in cases:
                theirs = verdict(socks5(port, "127.0.0.1", host, dest, user, password), host == "127.0.0.1")
                ours = verdict(socks5(gateway.port, "127.0.0.1", host, dest, user, password), host == "127.0.0.1")
                seen.add(theirs)
                self.assertEqual(ours, theirs, f"{user or 'no user'} to {host}")
            self.assertEqual(seen, {"allowed", "refused"})

    @unittest.skipUnless(shutil.which("oidentd") and subprocess.run(["id", "alice"], capture_output=True).returncode == 0,
                         "needs oidentd and the local user alice (scripts/test makes her)")
    def test_rfc931_as_dante(self):
        """`socksmethod: rfc931`: curl run as the local user alice over SOCKS5 (no USERID, so
        the import's warning about SOCKS4 does not apply), with oidentd answering and without."""
        http = HTTPServer()
        self.addCleanup(http.__exit__, None, None, None)
        rules = ("client pass { from: 0/0 to: 0/0 }\nsocks pass {\n from: 0/0 to: 127.0.0.1/32\n socksmethod: rfc931\n}\n")
        port = free_port()
        config = os.path.join(self.folder, "rfc931.conf")
        with open(config, "w") as out:
            out.write(dante_settings(port).replace("socksmethod: none", "socksmethod: rfc931 none") + rules)
        dante = subprocess.Popen(["danted", "-f", config, "-p", os.path.join(self.folder, "rfc931.pid")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (dante.terminate(), dante.wait(timeout=10)))
        wait_for_port("127.0.0.1", port)
        policy, warnings = self.imported(config)
        self.assertIn("rfc931", warnings)

        def curl(proxy_port):
            return subprocess.run(["runuser", "-u", "alice", "--", "curl", "-sS", "--max-time", "20", "--socks5",
                                   f"127.0.0.1:{proxy_port}", f"http://127.0.0.1:{http.port}/"], capture_output=True,
                                  timeout=40).returncode

        identd = subprocess.Popen(["oidentd", "-i", "-S", "-q", "-a", "127.0.0.1", "-p", "113", "-l", "2000", "-t", "10"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: identd.poll() is None and (identd.terminate(), identd.wait(10)))
        wait_for_port("127.0.0.1", 113)
        with Gateway("--policy", policy) as gateway:
            answered = (curl(port), curl(gateway.port))
            self.assertEqual(answered, (0, 0), "identd names alice, a local user: both pass")
            identd.terminate()
            identd.wait(10)
            silent = (curl(port), curl(gateway.port))
            self.assertEqual(silent, (97, 97), "no identd: both refuse")

    @unittest.skipUnless(shutil.which("microsocks"), "needs microsocks (the parent)")
    def test_a_route_through_a_parent_as_dante(self):
        """`route { from: 0/0 to: 0/0 via: … }` as `via` on every allow rule: through a
        microsocks parent both get there, and with the parent gone neither does."""
        http = HTTPServer()
        self.addCleanup(http.__exit__, None, None, None)
        parent_port = free_port()
        parent = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(parent_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: parent.poll() is None and (parent.terminate(), parent.wait(10)))
        wait_for_port("127.0.0.1", parent_port)
        port, config = self.dante("client pass { from: 0/0 to: 0/0 }\nsocks pass { from: 0/0 to: 0/0 }\n"
                                  f"route {{ from: 0/0 to: 0/0 via: 127.0.0.1 port = {parent_port} proxyprotocol: socks_v5 }}\n")
        policy, _ = self.imported(config)
        with open(policy) as text:
            self.assertIn(f"via socks5://127.0.0.1:{parent_port}", text.read())

        def curl(proxy_port):
            return subprocess.run(["curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{proxy_port}",
                                   f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=40).returncode

        with Gateway("--policy", policy) as gateway:
            self.assertEqual((curl(port), curl(gateway.port)), (0, 0), "through the parent")
            parent.terminate()
            parent.wait(10)
            dante_rc, identgate_rc = curl(port), curl(gateway.port)
            self.assertTrue(dante_rc != 0 and identgate_rc != 0, f"the parent gone: {dante_rc}, {identgate_rc}")

    def test_warnings_name_the_line_and_bad_syntax_is_an_error(self):
        config = os.path.join(self.folder, "odd.conf")
        with open(config, "w") as out:
            out.write("internal: eth0 port = 1080\nsocks pass {\n  from: 0/0 to: 0/0\n  bandwidth: 10000\n}\n"
                      "route { from: 10.0.0.0/8 to: 0/0 via: 192.0.2.1 port = 1080 }\n")
        result = subprocess.run([BINARY, "import", "dante", config], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("odd.conf:1: warning: internal: eth0", result.stderr)
        self.assertIn("odd.conf:2: warning: bandwidth: not translated", result.stderr)
        self.assertIn("odd.conf:6: warning: route for some clients", result.stderr)
        self.assertIn("# warning (line 2): bandwidth", result.stdout)
        # --output: the policy in the file, the run line to start it on standard output.
        written = os.path.join(self.folder, "odd.policy")
        saved = subprocess.run([BINARY, "import", "dante", config, "--output", written], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(saved.returncode, 0, saved.stderr)
        self.assertTrue(saved.stdout.startswith(f"identgate run --policy {written} --listen 0.0.0.0:1080"), saved.stdout)
        with open(written) as text:
            self.assertEqual(text.read(), result.stdout)
        with open(config, "w") as out:
            out.write("socks pass {\n  from: 0/0\n")
        broken = subprocess.run([BINARY, "import", "dante", config], capture_output=True, text=True, timeout=30)
        self.assertEqual(broken.returncode, 2)
        self.assertIn("odd.conf:1: error: the block is never closed", broken.stderr)


if __name__ == "__main__":
    unittest.main()
