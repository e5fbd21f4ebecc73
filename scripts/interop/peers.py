"""Servers and process helpers for the interoperability tests.

Everything listens on loopback with an ephemeral port, and everything a test starts
it stops (the classes are context managers).
"""

import hashlib
import http.server
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("IDENTGATE_BIN", os.path.join(ROOT, ".build", "debug", "identgate"))


def free_port(host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host, port, deadline=20.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                probe.connect((host, port))
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline}s")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


STAY_ROOT = ("--stay-root",) if os.geteuid() == 0 else ()


class Gateway:
    """identgate run, on its own port, stopped with SIGTERM (and must exit 0)."""

    def __init__(self, *args, host="127.0.0.1", port=None, nofile=None, prefix=()):
        """`nofile`: the gateway's descriptor limit (RLIMIT_NOFILE), for tests of exhaustion.
        `prefix`: a command that runs the gateway (e.g. in a mount namespace of its own)."""
        self.host = host
        self.port = port or free_port(host)
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        # As root, identgate insists on --user; tests of other things keep root knowingly.
        if os.geteuid() == 0 and "--user" not in args:
            args = (*args, "--stay-root")
        self.log = tempfile.NamedTemporaryFile(prefix="identgate-", suffix=".log", delete=False)
        # Every test gateway writes its own audit log, in a folder nobody may also read.
        self.audit_folder = tempfile.mkdtemp(prefix="identgate-audit-")
        os.chmod(self.audit_folder, 0o755)
        self.audit_log = os.path.join(self.audit_folder, "audit.jsonl")
        if "--audit-log" not in args:
            args = (*args, "--audit-log", self.audit_log)
        # A test that ends with a client still connected need not wait the default 10 s
        # for its relay; tests of the grace itself say theirs.
        if "--shutdown-grace" not in args:
            args = (*args, "--shutdown-grace", "2s")
        def limit_descriptors():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [*prefix, BINARY, "run", "--listen", listen, *args], stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=limit_descriptors,
        )
        try:
            wait_for_port(host, self.port)
            # The port is bound (and queues connections) before the gateway serves: the
            # sockets are made as root before SwiftNIO starts. Wait until it says it is
            # serving, so that a test measuring the process (descriptors, CPU) starts
            # from a gateway that has finished starting.
            deadline = time.monotonic() + 20
            while "identgate serving" not in self.output():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise TimeoutError("identgate did not say it is serving:\n" + self.output()[-2000:])
                time.sleep(0.02)
        except TimeoutError:
            self.stop()
            raise

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def output(self):
        with open(self.log.name, errors="replace") as log:
            return log.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def audit_records(self):
        import json
        if not os.path.exists(self.audit_log):
            return []
        with open(self.audit_log) as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def __exit__(self, *exc):
        self.stop()
        os.unlink(self.log.name)
        shutil.rmtree(self.audit_folder, ignore_errors=True)


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """GET / says hello; POST /echo sends the body back with its SHA-256 in a header."""

    protocol_version = "HTTP/1.1"

    # A page with 60 images that counts them loaded (a browser's many requests at once).
    PAGE = ("<!doctype html><html><body><div id=count>0</div><script>let n = 0;"
            "function loaded() { document.getElementById('count').textContent = 'loaded ' + (++n); }</script>"
            + "".join(f"<img src='/img/{i}.gif' onload='loaded()'>" for i in range(60)) + "</body></html>").encode()
    GIF = bytes.fromhex("47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b")

    def setup(self):
        super().setup()
        self.server.connections = getattr(self.server, "connections", 0) + 1

    def do_GET(self):
        body = b"hello through identgate\n"
        if self.path == "/page":
            body = self.PAGE
        elif self.path.startswith("/img/"):
            body = self.GIF
        if self.path == "/headers":
            # What arrived, for tests of what a proxy forwards.
            body = "".join(f"{name}: {value}\n" for name, value in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(hashlib.sha256(body).hexdigest())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Received-SHA256", hashlib.sha256(body).hexdigest())
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HTTPServer:
    """`tls`: (certificate file, key file) to serve HTTPS."""

    def __init__(self, host="127.0.0.1", tls=None):
        server_class = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = type("HTTPServer6", (http.server.ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = server_class((host, 0), _EchoHandler)
        if tls:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        # socketserver accepts after select() says a connection waits; one that is reset
        # meanwhile leaves a blocking accept() waiting for ever, and shutdown() with it
        # (seen once: test_metrics hung). Non-blocking, that accept fails and is retried.
        self.server.socket.setblocking(False)
        self.server.received = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class TCPServer:
    """Accepts connections and runs `serve(connection)` for each on its own thread;
    counts the connections and the bytes it received."""

    def __init__(self, serve, host="127.0.0.1"):
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.serve = serve
        self.connections = 0
        self.bytes_received = 0
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection):
        with connection:
            connection.settimeout(60)
            try:
                self.serve(self, connection)
            except OSError:
                pass

    def count(self, received):
        with self.lock:
            self.bytes_received += received

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.listener.close()


def echo(server, connection):
    """Echo until EOF, then shut down the sending side: a half-close-aware echo."""
    while True:
        data = connection.recv(65536)
        if not data:
            break
        server.count(len(data))
        connection.sendall(data)
    connection.shutdown(socket.SHUT_WR)


def socks5_connect(gateway, host, port):
    """A minimal SOCKS5 client: no auth, IPv4 CONNECT. Returns the connected socket."""
    client = socket.create_connection((gateway.host, gateway.port), timeout=10)
    client.sendall(b"\x05\x01\x00")
    assert recv_exactly(client, 2) == b"\x05\x00"
    client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    reply = recv_exactly(client, 10)
    assert reply[:2] == b"\x05\x00", reply
    return client


def recv_exactly(connection, count):
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection ended after {len(data)} of {count} bytes")
        data += chunk
    return data


class FullDisk:
    """A 256 KiB tmpfs (root only) that the test can fill to its last block and empty
    again: for what happens when the audit log cannot be written."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "disk")
        os.mkdir(self.path)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", self.path], check=True)
        self.filler = os.path.join(self.path, "filler")

    def fill(self):
        filler = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(filler, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(filler)

    def empty(self):
        os.unlink(self.filler)

    def unmount(self):
        subprocess.run(["umount", "-l", self.path])


class UnansweringListener:
    """A listener whose accept queue is full: a further connect to it is never answered
    (the kernel drops its handshake), so it hangs like a connect across a lossy network."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)
        time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for filler in self.fillers:
            filler.close()
        self.listener.close()

    def close(self):
        self.__exit__(None, None, None)


class FakeIdentd:
    """An identd that answers every RFC 1413 query with one user-id, on `port` of
    127.0.0.1 (0: a free one, in `.port`). Once closed, the port refuses: identd
    unreachable (SOCKS4 92)."""

    def __init__(self, user, port=0):
        self.user = user
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        # A timeout, so that the loop sees `close` (a blocked accept would keep the
        # socket listening after its descriptor is closed).
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with connection:
                connection.settimeout(5)
                line = b""
                while not line.endswith(b"\n") and len(line) < 1000:
                    chunk = connection.recv(100)
                    if not chunk:
                        break
                    line += chunk
                connection.sendall(f"{line.decode().strip()} : USERID : UNIX : {self.user}\r\n".encode())

    def close(self):
        self.running = False
        self.thread.join()
        self.listener.close()


def dante_settings(port):
    """A Dante server's settings for a test: on 127.0.0.1:PORT, no authentication, logging
    nowhere, as root dropping to nobody. Rules follow."""
    return (f"logoutput: /dev/null\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\nclientmethod: none\n"
            "socksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n")
