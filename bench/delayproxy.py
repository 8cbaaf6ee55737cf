#!/usr/bin/env python3
"""A userspace TCP proxy that delays every byte by a fixed time each way.

    delayproxy.py LISTEN_PORT TARGET_PORT DELAY_MS [STATS_FILE]

This kernel has no netem, so the benchmark puts this in front of sshd on
127.0.0.1: 10 ms each way gives a 20 ms round trip. Data read from one side is
written to the other side DELAY_MS after it arrived, in order; bandwidth is
not limited (reads go on while earlier chunks wait). Byte counts per direction
are written to STATS_FILE (JSON) every second and on exit. stdlib only.
"""
import asyncio
import collections
import json
import signal
import sys
import time

counts = {"up": 0, "down": 0, "connections": 0}


async def pipe(reader, writer, delay, key):
    queue = collections.deque()
    wake = asyncio.Event()
    done = False

    async def send():
        while True:
            while not queue:
                if done:
                    return
                wake.clear()
                await wake.wait()
            due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                return
            writer.write(data)
            counts[key] += len(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(1 << 18)
            queue.append((time.monotonic() + delay, data if data else None))
            wake.set()
            if not data:
                break
            # crude back-pressure: never buffer more than 64 MB per direction
            while len(queue) > 256 and not sender.done():
                await asyncio.sleep(delay / 4 or 0.001)
    except (ConnectionError, OSError):
        pass
    done = True
    wake.set()
    try:
        await sender
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def handle(client_r, client_w, target_port, delay):
    counts["connections"] += 1
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(
        pipe(client_r, server_w, delay, "up"),
        pipe(server_r, client_w, delay, "down"),
    )
    for w in (client_w, server_w):
        try:
            w.close()
        except Exception:
            pass


def dump(path):
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(counts, f)
        import os

        os.replace(path + ".tmp", path)


async def main():
    listen, target, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    stats = sys.argv[4] if len(sys.argv) > 4 else None
    delay = delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target, delay), "127.0.0.1", listen
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("delayproxy: 127.0.0.1:%d -> :%d, %.1f ms each way" % (listen, target, delay_ms), file=sys.stderr, flush=True)
    while not stop.is_set():
        dump(stats)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    server.close()
    dump(stats)


if __name__ == "__main__":
    asyncio.run(main())
