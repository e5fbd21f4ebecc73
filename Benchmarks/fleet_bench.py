"""scripts/bench, fleet row: SOCKS5 connections per second through HAProxy in front of two
gateways, identgate (send-proxy-v2, --proxy-protocol-from) beside Dante (danted cannot
read the PROXY protocol, so HAProxy passes plain TCP to it and Dante sees HAProxy as the
client), in one namespace topology: client -> router (HAProxy) -> g1 | g2 -> destination.

    python3 Benchmarks/fleet_bench.py BIN_DIR ROUNDS SECONDS OUT.tsv

Every host shares this machine's cores (2 here): the row compares the two stacks under
the same load balancer; it cannot show a fleet's capacity growing with its size."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts", "interop"))
import netns  # noqa: E402

HAPROXY = """
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend socks
    bind 10.1.0.1:1080
    default_backend gateways
backend gateways
    balance roundrobin
    server g1 10.3.0.2:1080 {proxy}
    server g2 10.4.0.2:1080 {proxy}
"""

DANTE = """
logoutput: /dev/null
internal: {address} port = 1080
external: {address}
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}
"""


def main():
    binaries, rounds, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    folder = tempfile.mkdtemp(prefix="identgate-fleet-bench-")
    os.chmod(folder, 0o755)
    policy = os.path.join(folder, "fleet.policy")
    with open(policy, "w") as file:
        file.write("allow connect from 10.0.0.0/8 to 10.5.0.2\n")
    rows = []
    with netns.Topology() as net:
        for host in ("c", "r", "g1", "g2", "d"):
            net.add_host(host)
        net.link("c", "10.1.0.2/24", "r", "10.1.0.1/24")
        net.link("g1", "10.3.0.2/24", "r", "10.3.0.1/24")
        net.link("g2", "10.4.0.2/24", "r", "10.4.0.1/24")
        net.link("d", "10.5.0.2/24", "r", "10.5.0.1/24")
        for host, router in (("c", "10.1.0.1"), ("g1", "10.3.0.1"), ("g2", "10.4.0.1"), ("d", "10.5.0.1")):
            net.run(host, "ip", "route", "add", "default", "via", router)
        net.run("r", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for host in ("c", "r", "g1", "g2", "d"):
            # Tens of thousands of short connections: reuse TIME_WAIT ports as the main
            # namespace's settings would (each namespace starts from the defaults).
            net.run(host, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
            net.run(host, "sysctl", "-qw", "net.ipv4.ip_local_port_range=15000 65000")
        loadgen = os.path.join(binaries, "loadgen")
        net.start("d", "env", "LOADGEN_BIND=10.5.0.2", loadgen, "reply", "9000")
        net.wait_for_port("d", "10.5.0.2", 9000)
        for round_number in range(rounds):
            order = ("identgate", "dante") if round_number % 2 == 0 else ("dante", "identgate")
            for stack in order:
                started = []
                for gateway, address in (("g1", "10.3.0.2"), ("g2", "10.4.0.2")):
                    if stack == "identgate":
                        started.append(net.start(
                            gateway, os.path.join(binaries, "identgate"), "run", "--stay-root", "--listen", f"{address}:1080",
                            "--proxy-protocol-from", "10.3.0.1/32", "--proxy-protocol-from", "10.4.0.1/32",
                            "--policy", policy, "--audit-log", os.path.join(folder, f"{gateway}-{round_number}.jsonl"),
                            "--log-level", "error"))
                    else:
                        config = os.path.join(folder, f"danted-{gateway}.conf")
                        with open(config, "w") as file:
                            file.write(DANTE.format(address=address))
                        started.append(net.start(gateway, "danted", "-f", config, "-p", os.path.join(folder, f"{gateway}.pid")))
                    net.wait_for_port(gateway, address, 1080)
                config = os.path.join(folder, f"haproxy-{stack}.cfg")
                with open(config, "w") as file:
                    file.write(HAPROXY.format(proxy="send-proxy-v2" if stack == "identgate" else ""))
                started.append(net.start("r", "haproxy", "-f", config, "-db"))
                net.wait_for_port("c", "10.1.0.1", 1080)
                for mode, concurrency in (("sequential", 1), ("64-in-flight", 64)):
                    result = net.run(
                        "c", "env", "LOADGEN_PROXY_HOST=10.1.0.1", "LOADGEN_DEST_HOST=10.5.0.2", loadgen, "rate", "socks5",
                        "1080", "9000", str(concurrency), "10000000", str(seconds), text=True, timeout=seconds + 60)
                    rows.append((stack, mode, *result.stdout.split()))
                for process in started:
                    process.terminate()
                    process.wait(15)
                # danted forks: its children go with the namespace's stragglers.
                for gateway in ("g1", "g2"):
                    pids = subprocess.run(["ip", "netns", "pids", net.name(gateway)], capture_output=True, text=True).stdout
                    for pid in pids.split():
                        subprocess.run(["kill", pid], capture_output=True)
                time.sleep(0.5)
    with open(out, "w") as file:
        file.write("stack\tmode\tconnections\tseconds\tconns_per_s\tp50_us\tp99_us\tfailures\n")
        for row in rows:
            file.write("\t".join(row) + "\n")
    print(f"{'mode':14}  {'identgate x2 /s':>15}  {'Dante x2 /s':>12}  {'ratio':>6}   p99 (us) identgate, Dante; failures")
    for mode in ("sequential", "64-in-flight"):
        def median(stack, column):
            return statistics.median(float(r[{"conns_per_s": 4, "p99_us": 6, "failures": 7}[column]])
                                     for r in rows if r[0] == stack and r[1] == mode)
        ours, theirs = median("identgate", "conns_per_s"), median("dante", "conns_per_s")
        print(f"{mode:14}  {ours:15.0f}  {theirs:12.0f}  {ours / theirs if theirs else 0:5.2f}x   "
              f"{median('identgate', 'p99_us'):.0f}, {median('dante', 'p99_us'):.0f}; "
              f"{median('identgate', 'failures'):.0f}, {median('dante', 'failures'):.0f}")


if __name__ == "__main__":
    main()
