"""A throw-away OpenLDAP directory on loopback, reached as a company's Linux hosts reach
theirs: slapd holds the users, passwords and groups, and nslcd bridges NSS (libnss-ldapd)
and PAM (pam_ldap) to it. nslcd and every process that should see the directory run in
mount namespaces of their own (`prefix`), where the test's nsswitch.conf, nslcd.conf, PAM
service file, passwd/group copies and nslcd socket folder are bind-mounted over the
machine's; the machine's own files are never changed.

Users (uid, password, in `egress-staff`): alice 5101 (a Kerberos principal too), bob 5102
(not a member until a test adds him), carol 5103 (locked: shadowExpire 1), dave 5104 (run
as a local process for identd)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from peers import free_port, wait_for_port

BASE = "dc=example,dc=test"
ADMIN = f"cn=admin,{BASE}"
ADMIN_PASSWORD = "directory-admin"
USERS = {"alice": 5101, "bob": 5102, "carol": 5103, "dave": 5104}
PASSWORDS = {user: f"{user}-ldap-pw" for user in USERS}
STAFF = "egress-staff"
PAM_SERVICE = "identgate-ldap"


def available():
    tools = ("slapd", "slapadd", "ldapmodify", "nslcd", "unshare", "getent")
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in tools) and os.path.isdir("/usr/lib/ldap")


class Directory:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-ldap-")
        os.chmod(self.folder, 0o755)
        self.port = free_port()
        self.slapd = None
        self.nslcd = None
        self.made_run_folder = False
        try:
            self._write_files()
            self.start_slapd()
            with open(self.path("nslcd.log"), "w") as log:
                self.nslcd = subprocess.Popen([*self.prefix, "nslcd", "-d"], stdout=subprocess.DEVNULL, stderr=log)
            self._wait_for_nss()
        except BaseException:
            self.close()
            raise

    def path(self, name):
        return os.path.join(self.folder, name)

    def _write_files(self):
        os.mkdir(self.path("data"))
        with open(self.path("slapd.conf"), "w") as out:
            schemas = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in ("core", "cosine", "nis", "inetorgperson"))
            out.write(f"""{schemas}modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {self.path('slapd.pid')}
access to attrs=userPassword by anonymous auth by * none
access to * by * read
database mdb
maxsize 16777216
suffix "{BASE}"
rootdn "{ADMIN}"
rootpw {ADMIN_PASSWORD}
directory {self.path('data')}
""")
        entries = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
                   f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
                   f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n",
                   f"dn: cn=ldapusers,ou=groups,{BASE}\nobjectClass: posixGroup\ncn: ldapusers\ngidNumber: 5100\n",
                   f"dn: cn={STAFF},ou=groups,{BASE}\nobjectClass: posixGroup\ncn: {STAFF}\ngidNumber: 5200\n"
                   "memberUid: alice\nmemberUid: carol\nmemberUid: dave\n"]
        for user, uid in USERS.items():
            expired = "shadowExpire: 1\n" if user == "carol" else ""
            entries.append(f"dn: uid={user},ou=people,{BASE}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                           f"objectClass: shadowAccount\nuid: {user}\ncn: {user}\nsn: {user}\nuidNumber: {uid}\n"
                           f"gidNumber: 5100\nhomeDirectory: /nonexistent\nloginShell: /usr/sbin/nologin\n"
                           f"userPassword: {PASSWORDS[user]}\n{expired}")
        with open(self.path("data.ldif"), "w") as out:
            out.write("\n".join(entries))
        subprocess.run(["slapadd", "-f", self.path("slapd.conf"), "-l", self.path("data.ldif")], check=True,
                       capture_output=True, timeout=30)

        with open(self.path("nslcd.conf"), "w") as out:
            # Short limits: an outage shows within seconds, not minutes.
            out.write(f"""uid nslcd
gid nslcd
uri ldap://127.0.0.1:{self.port}/
base {BASE}
bind_timelimit 1
timelimit 1
reconnect_sleeptime 1
reconnect_retrytime 1
nss_initgroups_ignoreusers ALLLOCAL
""")
        os.chmod(self.path("nslcd.conf"), 0o600)
        with open(self.path("nsswitch.conf"), "w") as out:
            out.write("passwd: files ldap\ngroup: files ldap\nshadow: files ldap\nhosts: files dns\n")
        os.mkdir(self.path("pam.d"))
        for name in os.listdir("/etc/pam.d"):
            shutil.copy(os.path.join("/etc/pam.d", name), self.path("pam.d"))
        with open(self.path(f"pam.d/{PAM_SERVICE}"), "w") as out:
            out.write("auth    required pam_ldap.so\naccount required pam_ldap.so\n")
        # A machine may have local users of these names (scripts/test makes alice and bob):
        # local accounts would hide the directory's, so the namespace sees files without them.
        for name in ("passwd", "group"):
            with open(f"/etc/{name}") as real, open(self.path(name), "w") as out:
                out.writelines(line for line in real if line.split(":")[0] not in USERS)
        # nslcd's socket folder is compiled in; a machine that never ran nslcd has none to
        # mount over, so the test makes the (empty, runtime) folder and removes it after.
        self.made_run_folder = not os.path.isdir("/run/nslcd")
        if self.made_run_folder:
            os.mkdir("/run/nslcd")
        os.mkdir(self.path("nslcd-run"))
        shutil.chown(self.path("nslcd-run"), "nslcd", "nslcd")
        mounts = [("nsswitch.conf", "/etc/nsswitch.conf"), ("nslcd.conf", "/etc/nslcd.conf"), ("pam.d", "/etc/pam.d"),
                  ("passwd", "/etc/passwd"), ("group", "/etc/group"), ("nslcd-run", "/run/nslcd")]
        binds = " && ".join(f"mount --bind {self.path(mine)} {theirs}" for mine, theirs in mounts)
        # Processes run under this prefix see the directory; the machine does not.
        self.prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{binds} && exec \"$@\"", "sh"]

    def start_slapd(self):
        # Its output goes to a file, so that a slapd that does not come up says why (once in
        # CI it did not listen within 20 s, and nothing told whether it had exited or was slow).
        with open(self.path("slapd.log"), "wb") as log:
            self.slapd = subprocess.Popen(["slapd", "-d", "0", "-h", f"ldap://127.0.0.1:{self.port}/", "-f",
                                           self.path("slapd.conf")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.slapd.poll() is not None:
                raise RuntimeError(f"slapd exited with {self.slapd.returncode} before listening: {self.slapd_output()}")
            try:
                return wait_for_port("127.0.0.1", self.port, deadline=1.0)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slapd does not listen on 127.0.0.1:{self.port} after 60 s: {self.slapd_output()}")

    def slapd_output(self):
        with open(self.path("slapd.log"), errors="replace") as log:
            return log.read()[-2000:] or "(no output)"

    def stop_slapd(self):
        if self.slapd and self.slapd.poll() is None:
            self.slapd.send_signal(signal.SIGTERM)
            try:
                self.slapd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.slapd.kill()
                self.slapd.wait()

    def getent(self, *query):
        return subprocess.run([*self.prefix, "getent", *query], capture_output=True, text=True, timeout=20)

    def _wait_for_nss(self):
        deadline = time.monotonic() + 15
        while self.getent("passwd", "alice").returncode != 0:
            if time.monotonic() > deadline or self.nslcd.poll() is not None:
                with open(self.path("nslcd.log")) as log:
                    raise TimeoutError("nslcd does not answer for the directory:\n" + log.read()[-2000:])
            time.sleep(0.1)

    def modify(self, ldif):
        subprocess.run(["ldapmodify", "-x", "-H", f"ldap://127.0.0.1:{self.port}/", "-D", ADMIN, "-w", ADMIN_PASSWORD],
                       input=ldif, text=True, check=True, capture_output=True, timeout=20)

    def add_member(self, user, group=STAFF):
        self.modify(f"dn: cn={group},ou=groups,{BASE}\nchangetype: modify\nadd: memberUid\nmemberUid: {user}\n")

    def close(self):
        for process in (self.nslcd,):
            if process and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.stop_slapd()
        if self.made_run_folder:
            os.rmdir("/run/nslcd")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
