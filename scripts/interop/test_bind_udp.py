"""BIND and UDP ASSOCIATE against the real binary: a real UDP client (PySocks) through
the gateway to a local UDP echo server, and 1,000 BINDs that time out with the
gateway's open file descriptors counted before and after."""

import concurrent.futures
import os
import socket
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
            self.assertEqual(after, before)


if __name__ == "__main__":
    unittest.main()
