"""Passwords checked by PAM (`--pam-service`), with Debian's own pam_unix against users of
the test's making: the gateway runs in a mount namespace of its own, where the test's
/etc/pam.d, /etc/shadow and /etc/passwd are bind-mounted over the machine's (which are
never changed). alice has a password, bob's account is locked, carol's has expired.

Run by scripts/test as root (a mount namespace needs it); IDENTGATE_BIN names the binary."""

import os
import shutil
import subprocess
import tempfile
import unittest

from peers import BINARY, Gateway, HTTPServer

PASSWORDS = {"alice": "alice-pam-pw", "bob": "bob-pam-pw", "carol": "carol-pam-pw"}
HELLO = b"hello through identgate\n"


def hash_of(user, password):
    line = subprocess.run([BINARY, "passwd", user], input=(password + "\n").encode(), capture_output=True, check=True)
    return line.stdout.decode().strip().split(":", 1)[1]


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare (a mount namespace)")
class PAMTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="identgate-pam-")
        os.chmod(cls.folder, 0o755)
        pam_d = os.path.join(cls.folder, "pam.d")
        os.mkdir(pam_d)
        with open(os.path.join(pam_d, "identgate-test"), "w") as out:
            out.write("auth    required pam_unix.so\naccount required pam_unix.so\n")
        cls.passwd = os.path.join(cls.folder, "passwd")
        with open("/etc/passwd") as real, open(cls.passwd, "w") as out:
            lines = [line for line in real if line.split(":")[0] not in PASSWORDS]
            out.writelines(lines)
            for uid, user in enumerate(PASSWORDS, start=4101):
                out.write(f"{user}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n")
        cls.shadow = os.path.join(cls.folder, "shadow")
        with open(cls.shadow, "w") as out:
            out.write(f"alice:{hash_of('alice', PASSWORDS['alice'])}:19000:0:99999:7:::\n")
            out.write(f"bob:!{hash_of('bob', PASSWORDS['bob'])}:19000:0:99999:7:::\n")
            # Expired on day 1 (1970-01-02).
            out.write(f"carol:{hash_of('carol', PASSWORDS['carol'])}:19000:0:99999:7::1:\n")
        os.chmod(cls.shadow, 0o640)
        cls.prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                      f"mount --bind {pam_d} /etc/pam.d && mount --bind {cls.shadow} /etc/shadow && "
                      f"mount --bind {cls.passwd} /etc/passwd && exec \"$@\"", "sh"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder, ignore_errors=True)

    def curl(self, gateway, http, user, password, *extra):
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--proxy", f"socks5h://{user}:{password}@{gateway.address}", *extra,
             f"http://127.0.0.1:{http.port}/"], capture_output=True, timeout=30)

    def test_pam_checks_passwords_and_accounts(self):
        with HTTPServer() as http, Gateway("--pam-service", "identgate-test", prefix=self.prefix) as gateway:
            allowed = self.curl(gateway, http, "alice", PASSWORDS["alice"])
            self.assertEqual((allowed.returncode, allowed.stdout), (0, HELLO), allowed.stderr.decode() + gateway.output())
            for user, password, why in [("alice", "wrong", "a wrong password"), ("bob", PASSWORDS["bob"], "a locked account"),
                                        ("carol", PASSWORDS["carol"], "an expired account"), ("mallory", "x", "no such user")]:
                with self.subTest(why=why):
                    refused = self.curl(gateway, http, user, password)
                    self.assertEqual(refused.returncode, 97, f"{why}: {refused.stderr.decode()}")
            # HTTP Basic goes through the same check.
            basic = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", f"http://{gateway.address}", "--proxy-user",
                                    f"alice:{PASSWORDS['alice']}", f"http://127.0.0.1:{http.port}/"], capture_output=True)
            self.assertEqual(basic.stdout, HELLO, basic.stderr.decode())
            gateway.stop()
            allowed = [r for r in gateway.audit_records() if r.get("event") == "decision"]
            self.assertEqual([(r["auth"], r.get("passwordSource"), r["claimedUser"]) for r in allowed],
                             [("password", "pam", "alice")] * 2)
            self.assertNotIn(PASSWORDS["alice"], gateway.output(), "no password in the log")

    def test_the_password_file_wins_for_the_users_it_lists(self):
        passwords = os.path.join(self.folder, "file-passwords")
        with open(passwords, "w") as out:
            out.write(f"alice:{hash_of('alice', 'file-pw')}\n")
        with HTTPServer() as http, Gateway("--pam-service", "identgate-test", "--password-file", passwords,
                                           prefix=self.prefix) as gateway:
            self.assertEqual(self.curl(gateway, http, "alice", "file-pw").returncode, 0)
            self.assertEqual(self.curl(gateway, http, "alice", PASSWORDS["alice"]).returncode, 97,
                             "alice is the file's: PAM is not asked")
            gateway.stop()
            decisions = [r for r in gateway.audit_records() if r.get("event") == "decision"]
            self.assertEqual([r.get("passwordSource") for r in decisions], ["file"])

    def test_unprivileged_pam_unix_says_why(self):
        with HTTPServer() as http, Gateway("--pam-service", "identgate-test", "--user", "nobody",
                                           prefix=self.prefix) as gateway:
            refused = self.curl(gateway, http, "alice", PASSWORDS["alice"])
            self.assertEqual(refused.returncode, 97, "pam_unix cannot read /etc/shadow as nobody")
            gateway.stop()
            self.assertIn("pam_unix cannot read /etc/shadow", gateway.output())


if __name__ == "__main__":
    unittest.main()
