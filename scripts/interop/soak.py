"""scripts/soak MINUTES: identgate under mixed load for MINUTES, with a policy reload
(SIGHUP), an audit-log rotation (SIGUSR1) and a seamless upgrade (identgate upgrade) every
minute. Every second it samples the gateway processes (descriptors, RSS, CPU) and the
metrics (open sessions, audit queue, draining sessions); at the end it writes a CSV, an SVG
chart and a one-line verdict: flat, or growing (with the slopes).

It fails (exit 1) if a client met something unexpected (a refused, reset or wrong answer
where the policy allows), if descriptors or memory grow, if `audit verify` fails over the
log and its rotated and draining files, or if an allowed session has not exactly one
session-end record. SOAK_RATE (actions per second, default 60) and SOAK_OUT (the folder
kept for the chart, CSV and logs) adjust it. Loopback only; everything it starts, it stops."""

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from peers import BINARY, FakeIdentd, free_port, recv_exactly, wait_for_port

POLICY = """\
ident from 127.0.0.2 timeout 2s
deny  to 127.0.0.1 port 9                        label "denied port"
allow connect from 127.0.0.2 user soak ident     label "verified by identd"
allow from 127.0.0.0/8 user soak auth password   label "password user"
allow from 127.0.0.0/8 auth none                 label "loopback"
"""

# What the chart shows, in order, with each series' unit.
SERIES = [("fds", "descriptors"), ("rss_mib", "RSS MiB"), ("cpu_percent", "CPU %"), ("sessions", "open sessions"),
          ("audit_queue", "audit queue"), ("draining", "draining sessions")]


class EchoServers:
    """A TCP echo server (until EOF) and a UDP echo server on 127.0.0.1."""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp_port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._udp, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection):
        with connection:
            connection.settimeout(30)
            try:
                while data := connection.recv(65536):
                    connection.sendall(data)
            except OSError:
                pass

    def _udp(self):
        while True:
            try:
                data, peer = self.udp.recvfrom(65536)
                self.udp.sendto(data, peer)
            except OSError:
                return

    def close(self):
        self.tcp.close()
        self.udp.close()


def socks5(port, destination_port, *, password=None, source="127.0.0.1", command=1, timeout=10):
    connection = socket.socket()
    connection.settimeout(timeout)
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", port))
    connection.sendall(b"\x05\x01\x02" if password else b"\x05\x01\x00")
    method = recv_exactly(connection, 2)
    if password:
        if method != b"\x05\x02":
            raise RuntimeError(f"method {method!r}")
        user = b"soak"
        connection.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if recv_exactly(connection, 2) != b"\x01\x00":
            raise RuntimeError("password refused")
    elif method != b"\x05\x00":
        raise RuntimeError(f"method {method!r}")
    connection.sendall(bytes([5, command, 0, 1]) + socket.inet_aton("127.0.0.1") + destination_port.to_bytes(2, "big"))
    reply = recv_exactly(connection, 10)
    return connection, reply


class Mix:
    """Clients doing one thing after another at about `rate` actions a second in all."""

    def __init__(self, port, echo, rate, seed):
        self.port, self.echo, self.rate = port, echo, rate
        self.rng = random.Random(seed)
        self.counts, self.failures = {}, []
        self.lock = threading.Lock()
        self.running = True
        self.actions = [(self.connect, 30), (self.socks4_ident, 15), (self.password, 10), (self.denied, 10),
                        (self.bind, 5), (self.udp, 5), (self.slow, 5), (self.vanish, 10), (self.http_connect, 10),
                        (self.named, 10), (self.long, 1)]

    def count(self, name, ok, detail=""):
        with self.lock:
            key = name if ok else name + " FAILED"
            self.counts[key] = self.counts.get(key, 0) + 1
            if not ok and len(self.failures) < 50:
                self.failures.append(f"{name}: {detail}")

    def connect(self):
        connection, reply = socks5(self.port, self.echo.tcp_port)
        with connection:
            assert reply[1] == 0, f"reply {reply[1]}"
            connection.sendall(b"x" * 64)
            assert recv_exactly(connection, 64) == b"x" * 64

    def long(self):
        """A tunnel of 5 to 20 s, a message a second: it lives across reloads, rotations and
        upgrades (draining)."""
        connection, reply = socks5(self.port, self.echo.tcp_port, timeout=30)
        with connection:
            assert reply[1] == 0, f"reply {reply[1]}"
            for _ in range(self.rng.randint(5, 20)):
                connection.sendall(b"l" * 100)
                assert recv_exactly(connection, 100) == b"l" * 100
                time.sleep(1)

    def socks4_ident(self):
        with socket.socket() as connection:
            connection.settimeout(10)
            connection.bind(("127.0.0.2", 0))
            connection.connect(("127.0.0.1", self.port))
            connection.sendall(b"\x04\x01" + self.echo.tcp_port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"soak\x00")
            reply = recv_exactly(connection, 8)
            assert reply[1] == 90, f"SOCKS4 reply {reply[1]}"
            connection.sendall(b"y" * 32)
            assert recv_exactly(connection, 32) == b"y" * 32

    def password(self):
        connection, reply = socks5(self.port, self.echo.tcp_port, password=b"soak-password")
        with connection:
            assert reply[1] == 0, f"reply {reply[1]}"

    def denied(self):
        connection, reply = socks5(self.port, 9)
        with connection:
            assert reply[1] == 2, f"reply {reply[1]} where 2 (not allowed) was due"

    def bind(self):
        connection, reply = socks5(self.port, 0, command=2)
        with connection:
            assert reply[1] == 0, f"BIND reply {reply[1]}"
            listening = (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))
            with socket.create_connection(listening, timeout=10) as inbound:
                second = recv_exactly(connection, 10)
                assert second[1] == 0, f"second BIND reply {second[1]}"
                inbound.sendall(b"z" * 16)
                assert recv_exactly(connection, 16) == b"z" * 16

    def udp(self):
        control, reply = socks5(self.port, 0, command=3)
        with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
            assert reply[1] == 0, f"UDP reply {reply[1]}"
            relay = (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))
            datagrams.settimeout(5)
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + self.echo.udp_port.to_bytes(2, "big")
            datagrams.sendto(header + b"datagram", relay)
            data, _ = datagrams.recvfrom(65536)
            assert data.endswith(b"datagram"), data

    def slow(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            for byte in b"\x05\x01\x00":
                connection.sendall(bytes([byte]))
                time.sleep(0.3)
            assert recv_exactly(connection, 2) == b"\x05\x00"

    def vanish(self):
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        connection.sendall(b"\x05\x01\x00\x05\x01")
        if self.rng.random() < 0.5:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        connection.close()

    def named(self):
        """The destination by name (looked up, or kept by --resolve-cache, which the reloads
        clear): SOCKS5's domain type or an HTTP CONNECT, in turn."""
        if self.rng.random() < 0.5:
            return self.http_connect(host="localhost")
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with connection:
            connection.sendall(b"\x05\x01\x00")
            assert recv_exactly(connection, 2) == b"\x05\x00"
            connection.sendall(b"\x05\x01\x00\x03\x09localhost" + self.echo.tcp_port.to_bytes(2, "big"))
            reply = recv_exactly(connection, 10)
            assert reply[1] == 0, f"reply {reply[1]}"
            connection.sendall(b"n" * 16)
            assert recv_exactly(connection, 16) == b"n" * 16

    def http_connect(self, host="127.0.0.1"):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(f"CONNECT {host}:{self.echo.tcp_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = connection.recv(1024)
                assert chunk, "closed before the answer"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head[:40]
            connection.sendall(b"h" * 8)
            assert recv_exactly(connection, 8) == b"h" * 8

    def worker(self, rng):
        names, weights = zip(*self.actions)
        while self.running:
            action = rng.choices(names, weights)[0]
            started = time.monotonic()
            try:
                action()
                self.count(action.__name__, True)
            except Exception as error:  # noqa: BLE001 - every failure is a finding
                self.count(action.__name__, False, repr(error))
            time.sleep(max(0.0, 8 / self.rate - (time.monotonic() - started)) * rng.uniform(0.5, 1.5))

    def start(self):
        self.threads = [threading.Thread(target=self.worker, args=(random.Random(self.rng.random()),), daemon=True) for _ in range(8)]
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join(timeout=30)


def processes(marker):
    """The identgate processes of this soak (their command line names its upgrade socket)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    arguments = cmdline.read().split(b"\0")
            except OSError:
                continue
            if len(arguments) > 1 and arguments[1] == b"run" and marker.encode() in arguments:
                found.append(int(entry))
    return found


def sample_process(pid):
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fds, rss, int(fields[11]) + int(fields[12])
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def metric_values(port):
    values = {"sessions": 0.0, "audit_queue": 0.0, "draining": 0.0}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("identgate_sessions_open{"):
            values["sessions"] += float(line.split()[-1])
        elif line.startswith("identgate_audit_queue_depth"):
            values["audit_queue"] = float(line.split()[-1])
        elif line.startswith("identgate_draining_sessions"):
            values["draining"] = float(line.split()[-1])
    return values


def slope_per_minute(points):
    """Least squares over (seconds, value): the change per minute."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if spread == 0 else 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def chart(rows, events, path, title):
    """An SVG: one panel per series, the events as vertical lines."""
    width, panel, gap, left = 900, 110, 28, 70
    height = len(SERIES) * (panel + gap) + 40
    end = max(row["t"] for row in rows) or 1
    first, _, second = title.partition("; peak")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height + 16}" fill="white"/>',
             f'<text x="{left}" y="14" font-size="12">{first}</text>',
             f'<text x="{left}" y="30" font-size="12">{"peak" + second if second else ""}</text>']
    height += 16
    colors = {"SIGHUP": "#2a7", "SIGUSR1": "#b80", "upgrade": "#c33"}
    for index, (key, unit) in enumerate(SERIES):
        top = 46 + index * (panel + gap)
        values = [row[key] for row in rows]
        high = max(values) * 1.1 or 1
        parts.append(f'<rect x="{left}" y="{top}" width="{width - left - 10}" height="{panel}" fill="none" stroke="#ccc"/>')
        parts.append(f'<text x="4" y="{top + 12}">{unit}</text><text x="4" y="{top + panel}">0</text>'
                     f'<text x="4" y="{top + 26}" fill="#666">max {max(values):.0f}</text>')
        for when, what in events:
            x = left + (width - left - 10) * when / end
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + panel}" stroke="{colors[what]}" stroke-dasharray="3,3"/>')
        points = " ".join(f"{left + (width - left - 10) * row['t'] / end:.1f},{top + panel - panel * row[key] / high:.1f}" for row in rows)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#236" stroke-width="1.2"/>')
    parts.append(f'<text x="{left}" y="{height - 8}" fill="#444">seconds 0–{end:.0f}; dashed lines: SIGHUP (green), SIGUSR1 (amber), upgrade (red)</text>')
    parts.append("</svg>")
    with open(path, "w") as out:
        out.write("\n".join(parts))


def main():
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    rate = float(os.environ.get("SOAK_RATE", "60"))
    out = os.environ.get("SOAK_OUT") or tempfile.mkdtemp(prefix="identgate-soak-")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="identgate-soak-work-")
    os.chmod(work, 0o777)
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
    print(f"soak: {minutes:g} min, ~{rate:g} actions/s, seed {seed}; output in {out}", flush=True)
    policy = os.path.join(work, "soak.policy")
    with open(policy, "w") as file:
        file.write(POLICY)
    os.chmod(policy, 0o644)
    hashed = subprocess.run([BINARY, "passwd", "soak"], input=b"soak-password\n", capture_output=True, check=True).stdout
    passwords = os.path.join(work, "passwords")
    with open(passwords, "wb") as file:
        file.write(hashed)
    os.chmod(passwords, 0o644)
    echo, identd = EchoServers(), FakeIdentd("soak")
    port, metrics = free_port(), free_port()
    upgrade_socket = os.path.join(work, "upgrade.sock")
    audit = os.path.join(work, "audit.jsonl")
    log = open(os.path.join(out, "gateway.log"), "w")
    drop = ["--user", "nobody"] if os.geteuid() == 0 else []
    command = [BINARY, "run", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}", "--policy", policy,
               "--password-file", passwords, "--methods", "password,none", "--ident-port", str(identd.port),
               "--audit-log", audit, "--upgrade-socket", upgrade_socket, "--shutdown-grace", "2s",
               "--negotiate-timeout", "5s", "--bind-timeout", "5s", *drop]
    gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    mix = None
    rows, events, problems = [], [], []
    try:
        wait_for_port("127.0.0.1", metrics)
        mix = Mix(port, echo, rate, seed)
        mix.start()
        start = time.monotonic()
        previous_cpu, rotation = {}, 0
        done_events = set()
        while (elapsed := time.monotonic() - start) < minutes * 60:
            minute, second = divmod(int(elapsed), 60)
            for offset, name in ((20, "SIGHUP"), (30, "SIGUSR1"), (45, "upgrade")):
                if second >= offset and (minute, name) not in done_events:
                    done_events.add((minute, name))
                    events.append((elapsed, name))
                    if name == "SIGHUP":
                        os.utime(policy)
                        for pid in processes(upgrade_socket):
                            os.kill(pid, signal.SIGHUP)
                    elif name == "SIGUSR1":
                        rotation += 1
                        os.rename(audit, f"{audit}.{rotation}")
                        for pid in processes(upgrade_socket):
                            os.kill(pid, signal.SIGUSR1)
                    else:
                        result = subprocess.run([BINARY, "upgrade", "--upgrade-socket", upgrade_socket], stdout=log,
                                                stderr=subprocess.STDOUT, timeout=120)
                        if result.returncode != 0:
                            problems.append(f"upgrade at {elapsed:.0f} s failed")
            fds = rss = cpu = 0
            running = processes(upgrade_socket)
            for pid in running:
                sampled = sample_process(pid)
                if sampled:
                    fds, rss = fds + sampled[0], rss + sampled[1]
                    cpu += sampled[2] - previous_cpu.get(pid, sampled[2])
                    previous_cpu[pid] = sampled[2]
            values = metric_values(metrics) or {"sessions": 0.0, "audit_queue": 0.0, "draining": 0.0}
            rows.append({"t": elapsed, "processes": len(running), "fds": fds, "rss_mib": rss / 1024, "cpu_percent": cpu * 100 / os.sysconf("SC_CLK_TCK"),
                         **values})
            time.sleep(max(0.0, start + len(rows) - time.monotonic()))
        mix.stop()
        # Every process taken over exits once its last tunnel ends (20 s at most here).
        deadline = time.monotonic() + 40
        while len(processes(upgrade_socket)) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(processes(upgrade_socket)) != 1:
            problems.append(f"{len(processes(upgrade_socket))} gateway processes at the end: one taken over did not exit")
    finally:
        if mix:
            mix.running = False
        for pid in processes(upgrade_socket):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while processes(upgrade_socket) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in processes(upgrade_socket):
            os.kill(pid, signal.SIGKILL)
        gateway.wait(timeout=10)
        log.close()
        echo.close()
        identd.close()

    files = sorted(glob.glob(audit + ".[0-9]*"), key=lambda name: int(name.rsplit(".", 1)[1])) + [audit] \
        + sorted(glob.glob(audit + ".drain-*"))
    verified = subprocess.run([BINARY, "audit", "verify", *files], capture_output=True, text=True)
    if verified.returncode != 0:
        problems.append("audit verify failed: " + verified.stdout[-500:])
    decisions, ends = {}, {}
    for path in files:
        with open(path) as lines:
            for line in lines:
                record = json.loads(line)
                if record["event"] == "decision" and record.get("verdict") == "allow":
                    decisions[record["session"]] = decisions.get(record["session"], 0) + 1
                elif record["event"] == "session-end":
                    ends[record["session"]] = ends.get(record["session"], 0) + 1
    # An allowed HTTP or BIND session has one decision per step, one end per session.
    missing = [s for s in decisions if ends.get(s, 0) != 1]
    if missing:
        problems.append(f"{len(missing)} allowed sessions without exactly one session-end (e.g. {missing[:5]})")
    if mix.failures:
        problems.append(f"{sum(v for k, v in mix.counts.items() if k.endswith('FAILED'))} client actions failed: "
                        + "; ".join(mix.failures[:5]))

    with open(os.path.join(out, "samples.csv"), "w") as csv:
        csv.write("t,processes," + ",".join(key for key, _ in SERIES) + "\n")
        for row in rows:
            csv.write(f"{row['t']:.1f},{row['processes']}," + ",".join(f"{row[key]:.2f}" for key, _ in SERIES) + "\n")
    # The trend after the first tenth (start-up: caches, pools, the first connections),
    # while one process serves alone: a process draining after an upgrade adds its own
    # descriptors and memory for a while, by design, and ends.
    settled = [row for row in rows if row["t"] >= rows[-1]["t"] / 10 and row["processes"] == 1] if rows else []
    slopes = {key: slope_per_minute([(row["t"], row[key]) for row in settled]) for key in ("fds", "rss_mib")}
    # Growing: a slope that matters over the run, not a short run's noise (a leak of a
    # descriptor or 2 MiB a minute, which also adds up to 10 descriptors or 8 MiB).
    span = (settled[-1]["t"] - settled[0]["t"]) / 60 if len(settled) > 1 else 0
    growing = (slopes["fds"] > 1 and slopes["fds"] * span > 10) or (slopes["rss_mib"] > 2 and slopes["rss_mib"] * span > 8)
    if growing:
        problems.append("growing")
    actions = sum(v for k, v in mix.counts.items() if not k.endswith("FAILED"))
    verdict = (f"soak {'GROWING' if growing else 'flat'}: {minutes:g} min, {actions} client actions "
               f"({actions / max(1, rows[-1]['t'] if rows else 1):.0f}/s), {len(events)} events; "
               f"descriptors {slopes['fds']:+.2f}/min, RSS {slopes['rss_mib']:+.2f} MiB/min; "
               f"peak {max(r['fds'] for r in rows)} descriptors, {max(r['rss_mib'] for r in rows):.0f} MiB; "
               f"{len(decisions)} allowed sessions, each ended once" + ("" if not missing else " (NOT all)"))
    chart(rows, events, os.path.join(out, "soak.svg"), verdict)
    print(json.dumps(mix.counts, sort_keys=True))
    print(verdict)
    print(f"chart {os.path.join(out, 'soak.svg')}, samples {os.path.join(out, 'samples.csv')}")
    shutil.rmtree(work, ignore_errors=True)
    if problems:
        print("soak FAILED: " + " | ".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
