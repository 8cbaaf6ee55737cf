#!/usr/bin/env python3
"""A userspace TCP proxy that models a link: a fixed delay each way and,
optionally, a bandwidth cap per direction.

    delayproxy.py LISTEN_PORT TARGET_PORT DELAY_MS [STATS_FILE] [--mbit MBIT]

This kernel has no netem, so the benchmark puts this in front of sshd on
127.0.0.1: 10 ms each way gives a 20 ms round trip. Every chunk read from one
side is written to the other side DELAY_MS after it left the (modelled) link's
sender, in order.

Without --mbit the link has no bandwidth limit: a chunk leaves as soon as it
is read, and reads go on while earlier chunks wait out their delay.

With --mbit each direction of the link is a token bucket of MBIT megabits
per second (10^6 bit/s) with a burst of BURST bytes, shared by all
connections as one access line is (four sshfs connections get no more than
restic's one): a chunk leaves
when the bucket has its bytes (chunks are cut to at most 16 KiB, so that a
large read does not arrive all at once), then arrives DELAY_MS later. What
waits for the bucket is the link's queue; it holds at most QUEUE_MS worth of
bytes (as a router's buffer would): beyond that the proxy stops reading, and
TCP's own flow control pushes back on the sender. A 20 ms round trip at
100 Mbit/s: `delayproxy.py LISTEN TARGET 10 --mbit 100`.

Byte counts per direction (and the settings) are written to STATS_FILE (JSON)
every second and on exit. stdlib only; bench/test_delayproxy.py tests it.
"""
import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time

counts = {"up": 0, "down": 0, "connections": 0}

# A capped link delivers in pieces no larger than this.
PIECE = 16 * 1024
# The uncapped proxy's back-pressure: at most this many chunks waiting.
MAX_CHUNKS = 256


class Bucket:
    """A token bucket: `depart(now, n)` says when n bytes read at `now` leave
    the link, given everything sent before (FIFO). Pure: no clock, no sleep."""

    def __init__(self, mbit, burst):
        self.rate = mbit * 1e6 / 8.0  # bytes per second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = 0.0  # the time `tokens` refers to
        self.free_at = 0.0  # when the last queued byte leaves

    def depart(self, now, n):
        start = max(now, self.free_at)
        self.tokens = min(self.burst, self.tokens + (start - self.last) * self.rate)
        self.last = start
        self.tokens -= n
        if self.tokens >= 0:
            self.free_at = start
        else:
            self.free_at = start - self.tokens / self.rate
            self.tokens, self.last = 0.0, self.free_at
        return self.free_at

    def backlog(self, now):
        """Seconds until the link's queue is empty."""
        return max(0.0, self.free_at - now)


def new_bucket(mbit, burst=None):
    """A direction's bucket, or None for no cap."""
    if not mbit:
        return None
    return Bucket(mbit, burst if burst is not None else max(PIECE, mbit * 1e6 / 8.0 * 0.001))


class Link:
    """One direction of one connection: when each chunk is due at the far
    side. `bucket` (shared by every connection's link in that direction, or
    None) is the cap."""

    def __init__(self, delay, bucket=None, queue_ms=50.0):
        self.delay = delay
        self.bucket = bucket
        self.queue = queue_ms / 1000.0

    def schedule(self, now, data):
        """[(due, piece)] for data read at `now`, in order."""
        if self.bucket is None:
            return [(now + self.delay, data)]
        pieces = [data[i:i + PIECE] for i in range(0, len(data), PIECE)]
        return [(self.bucket.depart(now, len(p)) + self.delay, p) for p in pieces]

    def full(self, now, waiting):
        """True while the proxy should stop reading this direction."""
        if self.bucket is None:
            return waiting > MAX_CHUNKS
        return self.bucket.backlog(now) > self.queue


async def pipe(reader, writer, link, key):
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
            now = time.monotonic()
            if data:
                queue.extend(link.schedule(now, data))
            else:
                last = queue[-1][0] if queue else now + link.delay
                queue.append((max(last, now + link.delay), None))
            wake.set()
            if not data:
                break
            while link.full(time.monotonic(), len(queue)) and not sender.done():
                await asyncio.sleep(link.delay / 4 or 0.001)
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


async def handle(client_r, client_w, args):
    counts["connections"] += 1
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", args.target_port)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    delay = args.delay_ms / 1000.0
    await asyncio.gather(
        pipe(client_r, server_w, Link(delay, args.buckets["up"], args.queue_ms), "up"),
        pipe(server_r, client_w, Link(delay, args.buckets["down"], args.queue_ms), "down"),
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
        os.replace(path + ".tmp", path)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_port", type=int)
    ap.add_argument("delay_ms", type=float, help="delay each way, ms")
    ap.add_argument("stats", nargs="?", help="JSON byte counts, rewritten every second")
    ap.add_argument("--mbit", type=float, help="bandwidth cap per direction (all connections together), 10^6 bit/s")
    ap.add_argument("--burst", type=int, help="token bucket size in bytes (default: 1 ms at the cap, at least 16 KiB)")
    ap.add_argument("--queue-ms", type=float, default=50.0, help="link queue before reads stop (default 50 ms)")
    args = ap.parse_args(argv)
    if args.mbit is not None and args.mbit <= 0:
        ap.error("--mbit must be positive")
    args.buckets = {key: new_bucket(args.mbit, args.burst) for key in ("up", "down")}
    return args


async def main(args):
    counts.update({"delay_ms": args.delay_ms, "mbit": args.mbit})
    server = await asyncio.start_server(lambda r, w: handle(r, w, args), "127.0.0.1", args.listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cap = ", %g Mbit/s each way" % args.mbit if args.mbit else ""
    print("delayproxy: 127.0.0.1:%d -> :%d, %.1f ms each way%s" % (
        args.listen_port, args.target_port, args.delay_ms, cap), file=sys.stderr, flush=True)
    while not stop.is_set():
        dump(args.stats)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    server.close()
    dump(args.stats)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
