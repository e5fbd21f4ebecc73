"""Load for the ident interop test: N concurrent SOCKS4 CONNECTs from this process
(run it as a local user), half claiming that user and half claiming another. Prints
one JSON line: counts of each reply code per claimed user, and the slowest reply.

Usage: ident_load.py GATEWAY_PORT DESTINATION_PORT COUNT OWN_USER OTHER_USER
"""

import asyncio
import json
import sys
import time


async def one(gateway_port, destination_port, user):
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gateway_port), 30)
    try:
        writer.write(b"\x04\x01" + destination_port.to_bytes(2, "big") + bytes([127, 0, 0, 1]) + user.encode() + b"\x00")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(8), 30)
        return user, reply[1], time.monotonic() - started
    finally:
        writer.close()


async def main():
    gateway_port, destination_port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    own, other = sys.argv[4], sys.argv[5]
    users = [own if index % 2 == 0 else other for index in range(count)]
    results = await asyncio.gather(*(one(gateway_port, destination_port, user) for user in users), return_exceptions=True)
    summary = {"errors": [repr(r) for r in results if isinstance(r, BaseException)][:5], "codes": {}, "slowest": 0.0}
    for result in results:
        if isinstance(result, BaseException):
            continue
        user, code, seconds = result
        key = f"{user}:{code}"
        summary["codes"][key] = summary["codes"].get(key, 0) + 1
        summary["slowest"] = max(summary["slowest"], seconds)
    print(json.dumps(summary))


asyncio.run(main())
