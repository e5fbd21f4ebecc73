"""A throw-away MIT Kerberos realm on loopback for the GSS-API tests (nothing under /etc
is touched), and an RFC 1961 SOCKS5 client on the real MIT library through
python-gssapi: context frames, the protection level (wrapped, or bare as NEC's), then
per-message protection of the request, the reply and every relayed byte."""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from peers import free_port, recv_exactly

REALM = "TEST.EXAMPLE"
SERVICE = "rcmd"


class Realm:
    """krb5kdc on a free loopback port with principals alice, bob, carol and the
    gateway's services; `ticket(user)` runs kinit into a ccache of the user's own."""

    PASSWORDS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-krb5-")
        self.port = free_port()
        self.config = os.path.join(self.folder, "krb5.conf")
        with open(self.config, "w") as out:
            out.write(f"""[libdefaults]
  default_realm = {REALM}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  rdns = false
  dns_canonicalize_hostname = false
  udp_preference_limit = 1
[realms]
  {REALM} = {{
    kdc = 127.0.0.1:{self.port}
  }}
[domain_realm]
  localhost = {REALM}
""")
        kdc = os.path.join(self.folder, "kdc.conf")
        with open(kdc, "w") as out:
            out.write(f"""[kdcdefaults]
  kdc_ports = {self.port}
  kdc_tcp_ports = {self.port}
[realms]
  {REALM} = {{
    database_name = {self.folder}/principal
    key_stash_file = {self.folder}/stash
    acl_file = {self.folder}/kadm5.acl
    max_life = 10h
  }}
""")
        self.env = dict(os.environ, KRB5_CONFIG=self.config, KRB5_KDC_PROFILE=kdc,
                        KRB5RCACHEDIR=self.folder, KRB5CCNAME=f"FILE:{self.folder}/nobody.ccache")
        self.keytab = os.path.join(self.folder, "socks.keytab")
        self.other_keytab = os.path.join(self.folder, "other.keytab")
        self.kdc = None
        try:
            self._run("kdb5_util", "create", "-s", "-P", "masterpw", "-r", REALM)
            for user, password in self.PASSWORDS.items():
                self.admin(f"addprinc -pw {password} {user}")
            self.admin(f"addprinc -randkey {SERVICE}/localhost")
            self.admin(f"addprinc -randkey other/localhost")
            self.admin(f"ktadd -k {self.keytab} {SERVICE}/localhost")
            # HTTP clients' Negotiate (RFC 4559) asks for HTTP/<proxy host>: same keytab.
            self.admin("addprinc -randkey HTTP/localhost")
            self.admin(f"ktadd -k {self.keytab} HTTP/localhost")
            self.admin(f"ktadd -k {self.other_keytab} other/localhost")
            self.kdc = subprocess.Popen(["krb5kdc", "-n"], env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("krb5kdc did not start")
                    time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def _run(self, *command, stdin=None):
        subprocess.run(command, env=self.env, check=True, capture_output=True, input=stdin, timeout=60)

    def admin(self, query):
        self._run("kadmin.local", "-q", query)

    def ccache(self, user):
        return os.path.join(self.folder, f"{user}.ccache")

    def ticket(self, user, lifetime=None):
        """kinit `user` from the password; returns the ccache's path."""
        command = ["kinit", "-c", self.ccache(user)]
        if lifetime:
            command += ["-l", lifetime]
        self._run(*command, f"{user}@{REALM}", stdin=(self.PASSWORDS[user] + "\n").encode())
        return self.ccache(user)

    def close(self):
        if self.kdc and self.kdc.poll() is None:
            self.kdc.send_signal(signal.SIGTERM)
            try:
                self.kdc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kdc.kill()
                self.kdc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GSSAPIError(Exception):
    pass


class GSSSocksClient:
    """A SOCKS5 client with method 0x01 (RFC 1961). `level`: 0 none, 1 integrity,
    2 confidentiality; `nec`: the level octet travels bare, as NEC's implementation and
    curl's --socks5-gssapi-nec send it."""

    def __init__(self, gateway, ccache, level=2, nec=False, service=f"{SERVICE}@localhost", source="127.0.0.1"):
        import gssapi
        self.gssapi = gssapi
        self.socket = socket.socket()
        self.socket.settimeout(10)
        self.socket.bind((source, 0))
        self.socket.connect((gateway.host, gateway.port))
        self.level = None
        self.buffer = b""
        try:
            self._negotiate(gssapi, ccache, level, nec, service)
        except BaseException:
            self.socket.close()
            raise

    def _negotiate(self, gssapi, ccache, level, nec, service):
        self.socket.sendall(b"\x05\x01\x01")
        if recv_exactly(self.socket, 2) != b"\x05\x01":
            raise GSSAPIError("the gateway did not select GSS-API")
        credentials = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
        name = gssapi.Name(service, gssapi.NameType.hostbased_service)
        flags = [gssapi.RequirementFlag.mutual_authentication, gssapi.RequirementFlag.replay_detection,
                 gssapi.RequirementFlag.out_of_sequence_detection, gssapi.RequirementFlag.integrity,
                 gssapi.RequirementFlag.confidentiality]
        self.context = gssapi.SecurityContext(name=name, creds=credentials, usage="initiate", flags=flags)
        token = self.context.step()
        while True:
            self.send_message(1, token)
            kind, reply = self.read_message()
            if kind != 1:
                raise GSSAPIError(f"message type {kind} during context establishment")
            token = self.context.step(reply)
            if self.context.complete:
                break
        octet = bytes([level])
        self.send_message(2, octet if nec else self.context.wrap(octet, False).message)
        kind, reply = self.read_message()
        if kind != 2:
            raise GSSAPIError(f"message type {kind} instead of the protection level")
        granted = reply if nec else self.context.unwrap(reply).message
        self.level = granted[0]

    def send_message(self, kind, token):
        self.socket.sendall(struct.pack("!BBH", 1, kind, len(token)) + token)

    def read_message(self):
        head = recv_exactly(self.socket, 2)
        if head[1] == 0xFF:
            raise GSSAPIError("the gateway aborted")
        length = struct.unpack("!H", recv_exactly(self.socket, 2))[0]
        return head[1], recv_exactly(self.socket, length)

    def send(self, data):
        if self.level == 0:
            self.socket.sendall(data)
            return
        for start in range(0, len(data), 32768):
            wrapped = self.context.wrap(data[start:start + 32768], self.level == 2)
            self.send_message(3, wrapped.message)

    def receive(self, count):
        """Exactly `count` plain bytes."""
        if self.level == 0:
            return recv_exactly(self.socket, count)
        while len(self.buffer) < count:
            kind, token = self.read_message()
            if kind != 3:
                raise GSSAPIError(f"message type {kind} under per-message protection")
            unwrapped = self.context.unwrap(token)
            if self.level == 2 and not unwrapped.encrypted:
                raise GSSAPIError("an unencrypted message")
            self.buffer += unwrapped.message
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def connect(self, host, port):
        """A CONNECT to an IPv4 address; returns the reply code."""
        self.send(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
        return self.receive(10)[1]

    def close(self):
        self.socket.close()
