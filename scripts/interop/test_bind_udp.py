"""BIND and UDP ASSOCIATE against the real binary: a real UDP client (PySocks) through
the gateway to a local UDP echo server, and 1,000 BINDs that time out with the
gateway's open file descriptors counted before and after."""

import concurrent.futures
import os
import signal
import socket
import tempfile
import threading
import time
import unittest

import socks  # PySocks, installed by scripts/test

from peers import Gateway, recv_exactly


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class UDPEcho:
    def __init__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                data, source = self.socket.recvfrom(65535)
            except socket.timeout:
                continue
            self.socket.sendto(data, source)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.socket.close()


def udp_associate(gateway_port):
    """A raw SOCKS5 UDP ASSOCIATE: the control connection and the relay's address."""
    control = socket.create_connection(("127.0.0.1", gateway_port), timeout=5)
    control.sendall(b"\x05\x01\x00")
    assert recv_exactly(control, 2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00\x01" + bytes(6))
    reply = recv_exactly(control, 10)
    assert reply[:2] == b"\x05\x00", reply
    return control, (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))


class UDPWithPySocksTest(unittest.TestCase):
    def test_pysocks_udp_through_the_gateway(self):
        with UDPEcho() as echo, Gateway() as gateway:
            client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            client.set_proxy(socks.SOCKS5, "127.0.0.1", gateway.port)
            client.settimeout(5)
            try:
                for index in range(20):
                    payload = os.urandom(100 + index * 50)
                    client.sendto(payload, ("127.0.0.1", echo.port))
                    data, source = client.recvfrom(65535)
                    self.assertEqual(data, payload)
                    self.assertEqual(source, ("127.0.0.1", echo.port))
            finally:
                client.close()
            self.assertEqual(gateway.stop(), 0)
            self.assertIn("UDP association ended", gateway.output())
            self.assertIn("relayed=20", gateway.output())


class UDPDatagramSizeTest(unittest.TestCase):
    """Every datagram size up to the largest IPv4 allows arrives whole, both ways (the
    relay read only 2,048 bytes of a datagram once, and corrupted the rest silently)."""

    # The largest SOCKS-wrapped datagram over IPv4 is 65,507 bytes; its header here is 10.
    SIZES = [1, 1472, 2048, 2049, 9000, 65507 - 10]

    def test_pysocks_datagrams_of_every_size(self):
        with UDPEcho() as echo, Gateway() as gateway:
            client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            client.set_proxy(socks.SOCKS5, "127.0.0.1", gateway.port)
            client.settimeout(5)
            try:
                for size in self.SIZES:
                    payload = os.urandom(size)
                    client.sendto(payload, ("127.0.0.1", echo.port))
                    data, _ = client.recvfrom(65535)
                    self.assertEqual(len(data), size)
                    self.assertEqual(data, payload, f"{size} bytes")
            finally:
                client.close()

    def test_raw_client_datagrams_of_every_size(self):
        with UDPEcho() as echo, Gateway() as gateway:
            control, relay = udp_associate(gateway.port)
            with control:
                header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.settimeout(5)
                    udp.bind(("127.0.0.1", 0))
                    for size in self.SIZES:
                        payload = os.urandom(size)
                        udp.sendto(header + payload, relay)
                        data, _ = udp.recvfrom(70000)
                        self.assertEqual(data[:10], header)
                        self.assertEqual(data[10:], payload, f"{size} bytes")


class BindResourceTest(unittest.TestCase):
    COUNT = 1000

    def bind_until_refused(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(bytes([4, 2, 0, 21, 127, 0, 0, 1, 0]))
            first = recv_exactly(client, 8)
            second = recv_exactly(client, 8)
            return first[1], second[1]

    def test_1000_timed_out_binds_leave_no_descriptor_behind(self):
        with Gateway("--bind-timeout", "200ms") as gateway:
            pid = gateway.process.pid
            before = open_descriptors(pid)
            with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
                replies = list(pool.map(lambda _: self.bind_until_refused(gateway.port), range(self.COUNT)))
            self.assertEqual(replies, [(90, 91)] * self.COUNT, "listening, then refused at the time-out")
            # The last connections may still be closing: give them a moment.
            deadline = time.monotonic() + 3
            while open_descriptors(pid) > before and time.monotonic() < deadline:
                time.sleep(0.05)
            after = open_descriptors(pid)
            print(f"\n  BIND resource test: {self.COUNT} timed-out BINDs; gateway descriptors {before} before, {after} after")
            # None left behind; one fewer is a start-up descriptor that was still open at
            # the first count.
            self.assertLessEqual(after, before)


if __name__ == "__main__":
    unittest.main()


class UDPBoundsTest(unittest.TestCase):
    def test_new_destinations_are_decided_and_recorded_at_a_bounded_rate(self):
        """One association sending to 400 new destinations at once cannot write 400
        audit records in a second; what it could not send is counted at its end."""
        with Gateway() as gateway:
            control, relay = udp_associate(gateway.port)
            with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", 0))
                for port in range(20000, 20400):
                    udp.sendto(b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big") + b"x", relay)
                time.sleep(0.3)
            gateway.stop()
            records = gateway.audit_records()
            decided = [r for r in records if r.get("event") == "decision" and r.get("reason") == "udp destination"]
            self.assertLessEqual(len(decided), 100, "at most 50 a second")
            self.assertGreaterEqual(len(decided), 50)
            ended = [r for r in records if r.get("event") == "session-end" and "udp association" in r.get("reason", "")]
            self.assertEqual(len(ended), 1)
            self.assertRegex(ended[0]["reason"], r"[1-9][0-9]* dropped over 50 new destinations a second")

    def test_a_reload_decides_remembered_destinations_again(self):
        with UDPEcho() as echo, tempfile.TemporaryDirectory() as folder:
            policy = os.path.join(folder, "udp.policy")
            with open(policy, "w") as file:
                file.write('allow connect, udp from 127.0.0.0/8 label "udp allowed"\n')
            with Gateway("--policy", policy) as gateway:
                control, relay = udp_associate(gateway.port)
                header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big")
                with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", 0))
                    udp.settimeout(2)
                    udp.sendto(header + b"before", relay)
                    self.assertEqual(udp.recvfrom(65535)[0][10:], b"before")
                    with open(policy, "w") as file:
                        file.write('allow connect from 127.0.0.0/8 label "no udp"\n')
                    gateway.process.send_signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while "policy reloaded" not in gateway.output() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.assertIn("policy reloaded", gateway.output())
                    udp.settimeout(0.5)
                    udp.sendto(header + b"after", relay)
                    with self.assertRaises(socket.timeout):
                        udp.recvfrom(65535)
                gateway.stop()
                ended = [r for r in gateway.audit_records() if "udp association ended" in r.get("reason", "")]
                self.assertIn("1 denied dropped", ended[0]["reason"])
