"""`--external`: every outbound socket leaves from the configured address. Destinations
on loopback see 127.0.0.2 as the source, for CONNECT, BIND and UDP; an address that is
not this host's stops the start; a family with no external address is unreachable."""

import re
import socket
import subprocess
import threading
import unittest

from peers import BINARY, Gateway, free_port, recv_exactly, socks5_connect


class Recorder:
    """A TCP or UDP server on 127.0.0.1 that notes where each connection or datagram
    came from (and echoes datagrams)."""

    def __init__(self, kind):
        self.socket = socket.socket(socket.AF_INET, kind)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.sources = []
        if kind == socket.SOCK_STREAM:
            self.socket.listen(8)
        self.socket.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self.serve, args=(kind,), daemon=True)
        self.thread.start()

    def serve(self, kind):
        while self.running:
            try:
                if kind == socket.SOCK_STREAM:
                    connection, source = self.socket.accept()
                    self.sources.append(source[0])
                    connection.close()
                else:
                    data, source = self.socket.recvfrom(65535)
                    # Noted before the echo: the test reads it as soon as the echo is back.
                    self.sources.append(source[0])
                    self.socket.sendto(data, source)
            except (socket.timeout, OSError):
                continue

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.socket.close()


def sources_seen(recorder, count=1):
    """The recorder's sources once `count` have arrived (or after 2.5 s)."""
    for _ in range(50):
        if len(recorder.sources) >= count:
            break
        threading.Event().wait(0.05)
    return recorder.sources


class ExternalAddressTest(unittest.TestCase):
    def test_connect_bind_and_udp_leave_from_the_external_address(self):
        with Gateway("--external", "127.0.0.2") as gateway:
            with Recorder(socket.SOCK_STREAM) as destination:
                socks5_connect(gateway, "127.0.0.1", destination.port).close()
                self.assertEqual(sources_seen(destination), ["127.0.0.2"], "CONNECT")

            probe = subprocess.Popen([BINARY, "probe", f"socks5://{gateway.address}", "--command", "bind",
                                      "--to", "127.0.0.1:10"], stdout=subprocess.PIPE, text=True)
            try:
                lines = ""
                while "first reply" not in lines:
                    line = probe.stdout.readline()
                    self.assertTrue(line, lines)
                    lines += line
                host, port = re.search(r"first reply.*bound ([\d.]+):(\d+)", lines).groups()
                self.assertEqual(host, "127.0.0.2", "BIND listens on the external address")
                socket.create_connection((host, int(port)), timeout=5).close()
                self.assertEqual(probe.wait(timeout=10), 0)
            finally:
                probe.kill()
                probe.wait()
                probe.stdout.close()

            with Recorder(socket.SOCK_DGRAM) as destination:
                result = subprocess.run([BINARY, "probe", f"socks5://{gateway.address}", "--command", "udp",
                                         "--to", f"127.0.0.1:{destination.port}", "--send", "hi"],
                                        capture_output=True, text=True, timeout=30)
                self.assertIn("received 2 bytes: hi", result.stdout)
                self.assertEqual(sources_seen(destination), ["127.0.0.2"], "UDP")

    def test_a_family_without_an_external_address_is_unreachable(self):
        with Gateway("--external", "127.0.0.2") as gateway:
            result = subprocess.run([BINARY, "probe", f"socks5://{gateway.address}", "--to", "[::1]:9"],
                                    capture_output=True, text=True, timeout=30)
            self.assertIn("0x03 network unreachable", result.stdout)

    def test_an_address_not_of_this_host_stops_the_start(self):
        result = subprocess.run([BINARY, "run", "--stay-root", "--listen", f"127.0.0.1:{free_port()}",
                                 "--external", "192.0.2.99", "--audit-log", "off"],
                                capture_output=True, text=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--external 192.0.2.99: not an address of this host", result.stderr)
        result = subprocess.run([BINARY, "run", "--stay-root", "--listen", f"127.0.0.1:{free_port()}",
                                 "--external", "no-such-interface0", "--audit-log", "off"],
                                capture_output=True, text=True, timeout=30)
        self.assertIn("neither an address of this host nor an interface", result.stderr)

    def test_an_interface_name_gives_its_addresses(self):
        with Gateway("--external", "lo") as gateway:
            with Recorder(socket.SOCK_STREAM) as destination:
                socks5_connect(gateway, "127.0.0.1", destination.port).close()
                self.assertEqual(sources_seen(destination), ["127.0.0.1"])


if __name__ == "__main__":
    unittest.main()
