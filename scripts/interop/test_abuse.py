"""Hostile and careless clients against the real binary: what one client does must not
cost the others a core, descriptors or service."""

import socket
import time
import unittest

from peers import Gateway, TCPServer, echo, recv_exactly, socks5_connect


def cpu_seconds(pid):
    """User plus system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / 100.0


class DescriptorExhaustionTest(unittest.TestCase):
    def test_accept_pauses_at_the_descriptor_limit_and_service_resumes(self):
        """At the descriptor limit accept fails with EMFILE on a socket that stays
        readable; without a pause that spins a core. The gateway must idle while
        exhausted, say so once, and serve again when descriptors come back."""
        with TCPServer(echo) as server, Gateway(nofile=96) as gateway:
            held = []
            try:
                # More connections than descriptors: the rest wait in the listen backlog.
                for _ in range(150):
                    held.append(socket.create_connection((gateway.host, gateway.port), timeout=5))
                time.sleep(1.0)
                before = cpu_seconds(gateway.process.pid)
                time.sleep(3.0)
                spent = cpu_seconds(gateway.process.pid) - before
                self.assertLess(spent, 0.6, f"{spent:.2f} s of CPU in 3 s while exhausted")
            finally:
                for connection in held:
                    connection.close()
            # Descriptors come back as the gateway sees those clients leave.
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = socks5_connect(gateway, "127.0.0.1", server.port)
                    break
                except (OSError, AssertionError, EOFError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            with client:
                client.sendall(b"still serving")
                self.assertEqual(recv_exactly(client, 13), b"still serving")
            # The episode ends, in the log, once accepts have worked for a second.
            deadline = time.monotonic() + 5
            while "accepting connections again" not in gateway.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            output = gateway.output()
            self.assertEqual(output.count("cannot accept new connections"), 1, output[-2000:])
            self.assertEqual(output.count("accepting connections again"), 1, output[-2000:])


if __name__ == "__main__":
    unittest.main()
