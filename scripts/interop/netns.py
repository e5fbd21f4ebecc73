"""Test hosts from network namespaces (root only): each host has its own addresses,
routes, loopback and port 113; veth pairs join them. Everything a topology starts (its
namespaces, their processes, /etc/netns/NAME) is removed by `close`, also after a
failure (use it as a context manager)."""

import os
import shutil
import signal
import subprocess
import time
import uuid


def available():
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Topology:
    def __init__(self):
        # A short random prefix: names must be unique on the machine and ≤ 15 bytes for links.
        self.prefix = "ig" + uuid.uuid4().hex[:4]
        self.hosts = []
        self.processes = []
        self.links = 0

    def name(self, host):
        return f"{self.prefix}-{host}"

    def add_host(self, host):
        name = self.name(host)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.hosts.append(host)
        # No resolver is reachable inside: make look-ups (oidentd's of its peer) fail at once.
        os.makedirs(f"/etc/netns/{name}", exist_ok=True)
        with open(f"/etc/netns/{name}/resolv.conf", "w") as out:
            out.write("nameserver 127.0.0.1\n")
        self.run(host, "ip", "link", "set", "lo", "up")
        return host

    def link(self, a, address_a, b, address_b):
        """A veth pair between hosts `a` and `b`, with an address (CIDR) on each end."""
        self.links += 1
        end_a, end_b = f"{self.prefix}a{self.links}", f"{self.prefix}b{self.links}"
        subprocess.run(["ip", "link", "add", end_a, "type", "veth", "peer", "name", end_b], check=True)
        for host, end, address in ((a, end_a, address_a), (b, end_b, address_b)):
            subprocess.run(["ip", "link", "set", end, "netns", self.name(host)], check=True)
            self.run(host, "ip", "addr", "add", address, "dev", end)
            self.run(host, "ip", "link", "set", end, "up")
        return end_a, end_b

    def command(self, host, *command):
        return ["ip", "netns", "exec", self.name(host), *command]

    def run(self, host, *command, check=True, timeout=60, **kwargs):
        return subprocess.run(self.command(host, *command), check=check, timeout=timeout, capture_output=True, **kwargs)

    def start(self, host, *command, **kwargs):
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(self.command(host, *command), **kwargs)
        self.processes.append(process)
        return process

    def wait_for_port(self, host, address, port, deadline=30):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            probe = self.run(host, "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}", check=False)
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{address}:{port} in {host} did not open")

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for host in self.hosts:
            name = self.name(host)
            # Whatever still runs inside (daemons that forked) goes with the namespace.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
