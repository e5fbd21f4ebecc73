"""The Debian package (scripts/package; scripts/test builds it and names it in
IDENTGATE_DEB): installed on this machine with apt-get, it gives a working identgate on
PATH with its version and commit, a manual page man finds, completions, a unit that
systemd-analyze accepts, a policy in /etc/identgate that `identgate check` passes, the
system user and the log directory; purged, it leaves none of its files behind."""

import os
import pwd
import shutil
import subprocess
import unittest

DEB = os.environ.get("IDENTGATE_DEB")
FILES = [
    "/usr/bin/identgate", "/usr/share/man/man1/identgate.1.gz", "/etc/identgate/default.policy",
    "/etc/logrotate.d/identgate", "/lib/systemd/system/identgate.service", "/lib/systemd/system/identgate.socket",
    "/usr/share/bash-completion/completions/identgate", "/usr/share/zsh/vendor-completions/_identgate",
    "/usr/share/fish/vendor_completions.d/identgate.fish", "/usr/share/doc/identgate/copyright",
]


def run(*command, check=True):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@unittest.skipUnless(DEB and os.geteuid() == 0, "needs root and IDENTGATE_DEB (scripts/test builds the package)")
class DebianPackageTest(unittest.TestCase):
    def setUp(self):
        self.assertTrue(os.path.exists(DEB), DEB)
        self.assertNotEqual(run("dpkg-query", "-W", "-f=${Status}", "identgate", check=False).stdout,
                            "install ok installed", "identgate is already installed here; not touching it")
        self.user_existed = user_exists("identgate")
        self.addCleanup(self.remove)

    def remove(self):
        run("apt-get", "purge", "-y", "identgate", check=False)
        if not self.user_existed and user_exists("identgate"):
            run("deluser", "--system", "identgate", check=False)

    def seamless_reinstall(self):
        """A gateway run as the unit runs it (--upgrade-socket /run/identgate/upgrade.sock);
        the package installed again (to the postinst, an upgrade from the version before)
        replaces it without a gap: a new process serves, the old one drains and exits."""
        import socket
        import time
        os.makedirs("/run/identgate", exist_ok=True)
        self.addCleanup(shutil.rmtree, "/run/identgate", True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        old = subprocess.Popen(
            ["/usr/bin/identgate", "run", "--listen", f"127.0.0.1:{port}", "--audit-log", "/var/log/identgate/audit.jsonl",
             "--upgrade-socket", "/run/identgate/upgrade.sock", "--user", "identgate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: old.poll() is None and (old.kill(), old.wait()))
        deadline = time.monotonic() + 20
        while not os.path.exists("/run/identgate/upgrade.sock") and time.monotonic() < deadline:
            time.sleep(0.05)
        run("dpkg", "-i", os.path.abspath(DEB))
        self.assertEqual(old.wait(timeout=20), 0, "the gateway taken over drained and exited")
        with open("/var/log/identgate/identgate.log") as log:
            text = log.read()
        self.assertIn("identgate upgraded: pid", text)
        new = int(text.split("identgate upgraded: pid ")[1].split()[0])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"\x05\x01\x00")
                self.assertEqual(client.recv(2), b"\x05\x00", "the new gateway serves the same port")
        finally:
            os.kill(new, 15)

            def running():
                try:
                    with open(f"/proc/{new}/stat") as stat:
                        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
                except OSError:
                    return False
            while running() and time.monotonic() < deadline + 30:
                time.sleep(0.05)
        self.assertEqual(run("/usr/bin/identgate", "audit", "verify", "/var/log/identgate/audit.jsonl",
                             *[os.path.join("/var/log/identgate", f) for f in os.listdir("/var/log/identgate")
                               if ".drain-" in f]).returncode, 0)

    def test_install_use_and_purge(self):
        run("apt-get", "install", "-y", "--no-install-recommends", os.path.abspath(DEB))
        for path in FILES:
            self.assertTrue(os.path.exists(path), path)
        version = run("/usr/bin/identgate", "--version").stdout.strip()
        self.assertRegex(version, r"^\d+\.\d+\.\d+ \(commit [0-9a-f]{12}(-modified)?\)$")
        self.assertIn(version.split("commit ")[1].split(")")[0].removesuffix("-modified"), os.path.basename(DEB))
        self.assertEqual(run("man", "-w", "identgate").stdout.strip(), "/usr/share/man/man1/identgate.1.gz")
        rendered = run("man", "-P", "cat", "identgate", check=False)
        self.assertIn("metrics-listen", rendered.stdout)
        checked = run("identgate", "check", "--strict", *[os.path.join("/etc/identgate", f)
                                                          for f in os.listdir("/etc/identgate") if f.endswith(".policy")])
        self.assertIn("0 errors, 0 warnings", checked.stdout + checked.stderr)
        self.assertIn("passed", run("identgate", "test", "/etc/identgate/default.policy").stdout)
        # The system user and the log directory the unit uses.
        user = pwd.getpwnam("identgate")
        self.assertLess(user.pw_uid, 1000, "a system user")
        stat = os.stat("/var/log/identgate")
        self.assertEqual((stat.st_uid, stat.st_mode & 0o777), (user.pw_uid, 0o750))
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "identgate").stdout
        self.assertIn("/etc/identgate/default.policy", conffiles)
        self.assertIn("/etc/logrotate.d/identgate", conffiles)
        if shutil.which("systemd-analyze"):
            verify = run("systemd-analyze", "verify", "/lib/systemd/system/identgate.service", check=False)
            self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        if shutil.which("logrotate"):
            self.assertEqual(run("logrotate", "-d", "/etc/logrotate.d/identgate", check=False).returncode, 0)
        # The packaged binary serves, as the unit would run it, then stops on SIGTERM.
        served = subprocess.run(
            ["bash", "-c", "identgate run --listen 127.0.0.1:0 --audit-log /var/log/identgate/audit.jsonl "
             "--user identgate & pid=$!; sleep 2; kill -TERM $pid; wait $pid"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(served.returncode, 0, served.stderr)
        self.assertIn("privileges dropped", served.stderr)
        self.assertTrue(os.path.getsize("/var/log/identgate/audit.jsonl") > 0)

        self.seamless_reinstall()

        run("apt-get", "purge", "-y", "identgate")
        for path in FILES + ["/etc/identgate", "/var/log/identgate", "/usr/share/doc/identgate"]:
            self.assertFalse(os.path.exists(path), f"{path} left behind")
