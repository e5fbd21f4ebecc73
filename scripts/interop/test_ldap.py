"""Identities from a real LDAP directory: OpenLDAP's slapd and nslcd (directory.py), with
the gateway, oidentd and nslcd in mount namespaces that see the test's nsswitch.conf, PAM
service and nslcd socket (the machine's files untouched). Passwords through pam_ldap after
the drop to `nobody`, groups through NSS for password users, identd-confirmed users and
Kerberos principals; a membership change seen after the cache time; a directory that stops
answering fails closed for `group` rules only, within the deadline, with no stall of the
requests that need no group.

Run by scripts/test as root; IDENTGATE_BIN names the binary under test."""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import directory
from directory import PASSWORDS, STAFF, USERS
from peers import BINARY, Gateway, HTTPServer, TCPServer, echo, wait_for_port

HELLO = b"hello through identgate\n"


@unittest.skipUnless(directory.available(), "needs root, slapd, ldap-utils, nslcd and libnss-ldapd (scripts/test installs them)")
class LDAPDirectoryTest(unittest.TestCase):
    def setUp(self):
        self.directory = directory.Directory()
        self.addCleanup(self.directory.close)
        self.folder = tempfile.mkdtemp(prefix="identgate-ldap-test-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.http = HTTPServer()
        self.addCleanup(self.http.__exit__, None, None, None)
        # A destination every client may reach, no group needed.
        self.open_http = HTTPServer()
        self.addCleanup(self.open_http.__exit__, None, None, None)

    def policy(self, *lines):
        path = os.path.join(self.folder, "ldap.policy")
        with open(path, "w") as out:
            out.write(f'allow to 127.0.0.1 port {self.open_http.port} label "open to all"\n')
            out.write("".join(line + "\n" for line in lines))
        return path

    def gateway(self, *args):
        gateway = Gateway(*args, prefix=self.directory.prefix)
        self.addCleanup(gateway.__exit__, None, None, None)
        return gateway

    def curl(self, proxy, server=None, *extra, **run):
        server = server or self.http
        return subprocess.run(["curl", "-sS", "--max-time", "20", *extra, "--proxy", proxy, f"http://127.0.0.1:{server.port}/"],
                              capture_output=True, timeout=30, **run)

    def decisions(self, gateway):
        return [r for r in gateway.audit_records() if r.get("event") == "decision"]

    def test_pam_ldap_passwords_and_groups_unprivileged(self):
        gateway = self.gateway("--policy", self.policy(f'allow group {STAFF} label "staff"'), "--pam-service",
                               directory.PAM_SERVICE, "--methods", "password,none", "--directory-cache", "1s", "--user", "nobody")
        address = gateway.address
        alice = self.curl(f"socks5h://alice:{PASSWORDS['alice']}@{address}")
        self.assertEqual(alice.stdout, HELLO, alice.stderr.decode() + gateway.output())
        for user, password, why in [("alice", "wrong", "a wrong password"), ("carol", PASSWORDS["carol"], "locked in LDAP"),
                                    ("mallory", "x", "no such user")]:
            with self.subTest(why=why):
                refused = self.curl(f"socks5h://{user}:{password}@{address}")
                self.assertEqual(refused.returncode, 97, f"{why}: {refused.stderr.decode()}")
        self.assertEqual(self.curl(f"socks5h://bob:{PASSWORDS['bob']}@{address}").returncode, 97, "bob is not in the group")
        # A SOCKS4 USERID is only claimed: alice's name gets no groups, the open port serves it.
        self.assertEqual(self.curl(f"socks4a://alice@{address}").returncode, 97)
        self.assertEqual(self.curl(f"socks4a://alice@{address}", self.open_http).stdout, HELLO)
        # bob joins the group in LDAP: seen once the cached answer (1 s) has expired.
        self.directory.add_member("bob")
        time.sleep(1.2)
        bob = self.curl(f"socks5h://bob:{PASSWORDS['bob']}@{address}")
        self.assertEqual(bob.stdout, HELLO, bob.stderr.decode() + gateway.output())
        gateway.stop()
        seen = [(d.get("claimedUser"), d.get("passwordSource"), d["verdict"], d.get("groupsUser"), d.get("groups"))
                for d in self.decisions(gateway)]
        self.assertEqual(seen, [("alice", "pam", "allow", "alice", [STAFF, "ldapusers"]),
                                ("bob", "pam", "deny", "bob", ["ldapusers"]),
                                ("alice", None, "deny", None, None),
                                ("alice", None, "allow", None, None),
                                ("bob", "pam", "allow", "bob", [STAFF, "ldapusers"])])

    def test_identd_confirmed_ldap_user_gets_groups(self):
        oidentd = subprocess.Popen([*self.directory.prefix, "oidentd", "-i", "-S", "-q", "-a", "127.0.0.1", "-p", "113",
                                    "-l", "2000", "-t", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (oidentd.terminate(), oidentd.wait(10)))
        wait_for_port("127.0.0.1", 113)
        gateway = self.gateway("--policy", self.policy("ident from 127.0.0.0/8 timeout 5s",
                                                       f'allow group {STAFF} ident label "staff, by identd"'))

        def as_user(name):
            # A local process of the directory's user: only the uid is set, and oidentd
            # names it through NSS, that is through LDAP.
            uid = USERS[name]
            return ["setpriv", f"--reuid={uid}", "--regid=5100", "--clear-groups"]

        dave = subprocess.run([*as_user("dave"), "curl", "-sS", "--max-time", "20", "--proxy", f"socks4://dave@{gateway.address}",
                               f"http://127.0.0.1:{self.http.port}/"], capture_output=True, timeout=30)
        self.assertEqual(dave.stdout, HELLO, dave.stderr.decode() + gateway.output())
        bob = subprocess.run([*as_user("bob"), "curl", "-sS", "--max-time", "20", "--proxy", f"socks4://bob@{gateway.address}",
                              f"http://127.0.0.1:{self.http.port}/"], capture_output=True, timeout=30)
        self.assertEqual(bob.returncode, 97, "bob is confirmed by identd but not in the group")
        gateway.stop()
        seen = [(d.get("ident", {}).get("userID"), d["verdict"], d.get("groupsUser"), STAFF in d.get("groups", [])) for d in self.decisions(gateway)]
        self.assertEqual(seen, [("dave", "allow", "dave", True), ("bob", "deny", "bob", False)])

    def test_kerberos_principal_gets_groups_by_short_name(self):
        try:
            import gssapi  # noqa: F401
            from kerberos import REALM, GSSSocksClient, Realm
        except ImportError:
            self.skipTest("python-gssapi is missing")
        realm = Realm()
        self.addCleanup(realm.close)
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update({k: v for k, v in realm.env.items() if k.startswith("KRB5")})
        gateway = self.gateway("--policy", self.policy(f"gssapi local-realm {REALM}", f'allow group {STAFF} label "staff"'),
                               "--gssapi-keytab", realm.keytab)
        with TCPServer(echo) as server:
            for user, reply in [("alice", 0), ("bob", 2)]:
                with self.subTest(user=user):
                    client = GSSSocksClient(gateway, realm.ticket(user))
                    self.addCleanup(client.close)
                    self.assertEqual(client.connect("127.0.0.1", server.port), reply, gateway.output())
        gateway.stop()
        seen = [(d.get("claimedUser"), d["verdict"], d.get("groupsUser")) for d in self.decisions(gateway)]
        self.assertEqual(seen, [(f"alice@{REALM}", "allow", "alice"), (f"bob@{REALM}", "deny", "bob")])

    def test_directory_outage_fails_closed_within_the_deadline_without_a_stall(self):
        passwords = os.path.join(self.folder, "passwords")
        with open(passwords, "w") as out:
            line = subprocess.run([BINARY, "passwd", "alice"], input=b"file-pw\n", capture_output=True, check=True)
            out.write(line.stdout.decode())
        gateway = self.gateway("--policy", self.policy(f'allow group {STAFF} label "staff"'), "--password-file", passwords,
                               "--methods", "password,none", "--directory-cache", "1s", "--negotiate-timeout", "10s")
        alice = f"socks5h://alice:file-pw@{gateway.address}"
        self.assertEqual(self.curl(alice).stdout, HELLO, gateway.output())
        # slapd stops answering (frozen: nslcd's queries wait for its time limits).
        self.directory.slapd.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: self.directory.slapd.poll() is None and self.directory.slapd.send_signal(signal.SIGCONT))
        time.sleep(1.2)
        refused = {}

        def group_request():
            started = time.monotonic()
            refused["result"] = self.curl(alice)
            refused["seconds"] = time.monotonic() - started

        waiting = threading.Thread(target=group_request)
        waiting.start()
        # Meanwhile requests that need no group keep their usual time.
        slowest = 0.0
        while waiting.is_alive():
            started = time.monotonic()
            open_request = self.curl(f"socks4a://anyone@{gateway.address}", self.open_http)
            slowest = max(slowest, time.monotonic() - started)
            self.assertEqual(open_request.stdout, HELLO)
        waiting.join()
        self.assertEqual(refused["result"].returncode, 97, "a directory that does not answer grants no group")
        self.assertLess(refused["seconds"], 10, "refused within the decision deadline")
        self.assertLess(slowest, 1.0, "no stall for requests that need no group")
        # The directory is back: so is alice, once the unavailable answer has expired.
        self.directory.slapd.send_signal(signal.SIGCONT)
        self.assert_served_again(alice, gateway)
        # slapd stopped outright: nslcd is refused at once, and so is the group request.
        self.directory.stop_slapd()
        time.sleep(1.2)
        started = time.monotonic()
        self.assertEqual(self.curl(alice).returncode, 97)
        stopped_seconds = time.monotonic() - started
        self.assertEqual(self.curl(f"socks4a://anyone@{gateway.address}", self.open_http).stdout, HELLO)
        self.directory.start_slapd()
        self.assert_served_again(alice, gateway)
        gateway.stop()
        notes = [d.get("groupsNote") for d in self.decisions(gateway) if d.get("claimedUser") == "alice"]
        unavailable = [note for note in notes if note and note.startswith("unavailable")]
        self.assertGreaterEqual(len(unavailable), 2, notes)
        self.assertEqual(len(unavailable), len([note for note in notes if note]), notes)
        self.assertEqual((notes[0], notes[-1]), (None, None), "groups before the outage and after it")
        print(f"\n  directory outage: frozen slapd, group request refused after {refused['seconds']:.2f}s "
              f"(slowest open request meanwhile {slowest * 1000:.0f} ms); stopped slapd, refused after "
              f"{stopped_seconds:.2f}s; records: {unavailable[0]!r}")

    def assert_served_again(self, proxy, gateway):
        deadline = time.monotonic() + 15
        while (back := self.curl(proxy)).stdout != HELLO and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual(back.stdout, HELLO, gateway.output())


if __name__ == "__main__":
    unittest.main()
