"""`group` rules against NSS, with the test's own /etc/group (and /etc/passwd) bind-mounted
in a mount namespace of the gateway's (the machine's files untouched): a verified member
allowed, a non-member denied, a change of membership seen after --directory-cache, a name
that is only claimed given no groups, and what the audit log and `audit show` say.

Run by scripts/test as root; IDENTGATE_BIN names the binary under test."""

import os
import shutil
import subprocess
import tempfile
import time
import unittest

from peers import BINARY, Gateway, HTTPServer

HELLO = b"hello through identgate\n"
USERS = {"gina": 4201, "hal": 4202}


def write_groups(path, staff):
    """Every real group, then the test's: `staff` with these members."""
    with open("/etc/group") as real:
        lines = [line for line in real if line.split(":")[0] not in ("staff-test", *USERS)]
    with open(path + ".new", "w") as out:
        out.writelines(lines)
        for user, uid in USERS.items():
            out.write(f"{user}:x:{uid}:\n")
        out.write(f"staff-test:x:4299:{','.join(staff)}\n")
    # In place: the bind mount shows the file's inode, so the new text goes into it.
    with open(path + ".new") as new, open(path, "w") as out:
        out.write(new.read())
    os.unlink(path + ".new")


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare (a mount namespace)")
class GroupTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-groups-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.group = os.path.join(self.folder, "group")
        write_groups(self.group, staff=["gina"])
        passwd = os.path.join(self.folder, "passwd")
        with open("/etc/passwd") as real, open(passwd, "w") as out:
            out.writelines(line for line in real if line.split(":")[0] not in USERS)
            for user, uid in USERS.items():
                out.write(f"{user}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n")
        passwords = os.path.join(self.folder, "passwords")
        with open(passwords, "w") as out:
            for user in USERS:
                line = subprocess.run([BINARY, "passwd", user], input=b"pw\n", capture_output=True, check=True)
                out.write(line.stdout.decode())
        self.policy = os.path.join(self.folder, "groups.policy")
        with open(self.policy, "w") as out:
            out.write('allow group staff-test label "staff"\n')
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                  f"mount --bind {self.group} /etc/group && mount --bind {passwd} /etc/passwd && exec \"$@\"", "sh"]
        self.http = HTTPServer()
        self.addCleanup(self.http.__exit__, None, None, None)
        self.gateway = Gateway("--policy", self.policy, "--password-file", passwords, "--methods", "password,none",
                               "--directory-cache", "1s", prefix=prefix)
        self.addCleanup(self.gateway.__exit__, None, None, None)

    def curl(self, proxy):
        return subprocess.run(["curl", "-sS", "--max-time", "20", "--proxy", proxy, f"http://127.0.0.1:{self.http.port}/"],
                              capture_output=True, timeout=30)

    def test_members_non_members_changes_and_claimed_names(self):
        address = self.gateway.address
        self.assertEqual(self.curl(f"socks5h://gina:pw@{address}").stdout, HELLO, self.gateway.output())
        self.assertEqual(self.curl(f"socks5h://hal:pw@{address}").returncode, 97, "hal is not in staff-test")
        # A SOCKS4 USERID is only claimed: gina's name gets no groups.
        self.assertEqual(self.curl(f"socks4a://gina@{address}").returncode, 97)
        # hal joins; seen once the cached answer (1 s) has expired.
        write_groups(self.group, staff=["gina", "hal"])
        time.sleep(1.5)
        self.assertEqual(self.curl(f"socks5h://hal:pw@{address}").stdout, HELLO, self.gateway.output())
        self.gateway.stop()
        decisions = [r for r in self.gateway.audit_records() if r.get("event") == "decision"]
        self.assertEqual([(d.get("claimedUser"), d["verdict"], d.get("groupsUser"), d.get("groups")) for d in decisions],
                         [("gina", "allow", "gina", ["gina", "staff-test"]), ("hal", "deny", "hal", ["hal"]),
                          ("gina", "deny", None, None), ("hal", "allow", "hal", ["hal", "staff-test"])])
        shown = subprocess.run([BINARY, "audit", "show", self.gateway.audit_log], capture_output=True, text=True)
        self.assertIn("groups of gina: gina,staff-test", shown.stdout)


if __name__ == "__main__":
    unittest.main()
