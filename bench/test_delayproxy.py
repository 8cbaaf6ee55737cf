#!/usr/bin/env python3
"""Checks of bench/delayproxy.py: order kept, the delay added, the bandwidth
cap bounding throughput. A benchmark-side check, not part of the Rust suite:

    python3 bench/test_delayproxy.py        # about 15 s; no root needed

The timed checks only bound from below (a busy machine can only make the
proxy slower, never faster than the modelled link), so they do not flake
under load.
"""
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
import unittest

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import delayproxy  # noqa: E402

MB = 1_000_000


class BucketTest(unittest.TestCase):
    def test_departures_keep_order_and_the_rate(self):
        bucket = delayproxy.Bucket(mbit=8, burst=16 * 1024)  # 1 MB/s
        times = [bucket.depart(0.0, 16 * 1024) for _ in range(64)]  # 1 MiB at once
        self.assertEqual(times, sorted(times))
        self.assertEqual(times[0], 0.0)  # the burst leaves at once
        self.assertAlmostEqual(times[-1], 63 * 16 * 1024 / MB)

    def test_an_idle_link_refills_only_up_to_the_burst(self):
        bucket = delayproxy.Bucket(mbit=8, burst=10_000)
        bucket.depart(0.0, 10_000)
        self.assertEqual(bucket.depart(100.0, 10_000), 100.0)
        self.assertAlmostEqual(bucket.depart(100.0, 10_000), 100.01)

    def test_a_link_cuts_reads_into_pieces_in_order(self):
        link = delayproxy.Link(0.01, delayproxy.new_bucket(100))
        data = bytes(random.Random(1).randrange(256) for _ in range(100_000))
        pieces = link.schedule(5.0, data)
        self.assertEqual(b"".join(p for _, p in pieces), data)
        self.assertTrue(all(len(p) <= delayproxy.PIECE for _, p in pieces))
        dues = [d for d, _ in pieces]
        self.assertEqual(dues, sorted(dues))
        self.assertGreaterEqual(dues[0], 5.01)

    def test_connections_share_the_cap(self):
        bucket = delayproxy.new_bucket(8, burst=16 * 1024)  # 1 MB/s
        links = [delayproxy.Link(0.0, bucket) for _ in range(4)]
        dues = [d for link in links for d, _ in link.schedule(0.0, bytes(250_000))]
        self.assertAlmostEqual(max(dues), (10**6 - 16 * 1024) / MB, places=3)

    def test_without_a_cap_a_chunk_waits_the_delay_only(self):
        link = delayproxy.Link(0.01)
        self.assertEqual(link.schedule(2.0, b"x" * 10**6), [(2.01, b"x" * 10**6)])


class Echo(socketserver.BaseRequestHandler):
    """Echoes until EOF; a first line `sink N` reads N bytes and answers
    `ok`; `source N` sends N bytes."""

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = sock.recv(64)
        if first.startswith(b"sink "):
            left = int(first.split()[1]) - len(first.split(b"\n", 1)[1])
            while left > 0:
                left -= len(sock.recv(1 << 16))
            sock.sendall(b"ok")
            return
        if first.startswith(b"source "):
            sock.sendall(b"\0" * int(first.split()[1]))
            sock.shutdown(socket.SHUT_WR)
            return
        while first:
            sock.sendall(first)
            first = sock.recv(1 << 16)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyTest(unittest.TestCase):
    DELAY_MS = 10
    MBIT = 8  # 1 MB/s each way

    @classmethod
    def setUpClass(cls):
        cls.server = Server(("127.0.0.1", 0), Echo)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.proxies = []

    @classmethod
    def tearDownClass(cls):
        for p in cls.proxies:
            p.terminate()
            p.wait(10)
        cls.server.shutdown()

    def proxy(self, *extra):
        port = free_port()
        p = subprocess.Popen([sys.executable, os.path.join(BENCH, "delayproxy.py"), str(port),
                              str(self.server.server_address[1]), str(self.DELAY_MS), *extra],
                             stderr=subprocess.DEVNULL)
        self.proxies.append(p)
        for _ in range(200):
            try:
                return socket.create_connection(("127.0.0.1", port))
            except ConnectionRefusedError:
                time.sleep(0.05)
        self.fail("the proxy did not listen")

    def test_a_stream_comes_back_whole_and_in_order(self):
        for extra in ([], ["--mbit", "100"]):
            with self.subTest(extra=extra), self.proxy(*extra) as sock:
                rng = random.Random(7)
                sent = b"".join(b"%06d:" % i + bytes(rng.randrange(1, 3000)) for i in range(2000))
                writer = threading.Thread(target=lambda: (sock.sendall(sent), sock.shutdown(socket.SHUT_WR)))
                writer.start()
                got = bytearray()
                while chunk := sock.recv(1 << 16):
                    got += chunk
                writer.join()
                self.assertEqual(bytes(got), sent)

    def test_a_round_trip_takes_both_delays(self):
        with self.proxy() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(5):
                t0 = time.monotonic()
                sock.sendall(b"ping")
                self.assertEqual(sock.recv(16), b"ping")
                self.assertGreaterEqual(time.monotonic() - t0, 2 * self.DELAY_MS / 1000)

    def test_the_cap_bounds_upload_throughput(self):
        size = 2 * MB
        with self.proxy("--mbit", str(self.MBIT)) as sock:
            t0 = time.monotonic()
            sock.sendall(b"sink %d\n" % size + b"\0" * size)
            self.assertEqual(sock.recv(16), b"ok")
            self.assert_capped(size, time.monotonic() - t0)

    def test_the_cap_bounds_download_throughput(self):
        size = 2 * MB
        with self.proxy("--mbit", str(self.MBIT)) as sock:
            t0 = time.monotonic()
            sock.sendall(b"source %d\n" % size)
            got = 0
            while chunk := sock.recv(1 << 16):
                got += len(chunk)
            self.assertEqual(got, size)
            self.assert_capped(size, time.monotonic() - t0)

    def assert_capped(self, size, elapsed):
        # At most one burst (16 KiB) beyond the rate, plus the delays.
        floor = (size - 16 * 1024) / (self.MBIT * MB / 8)
        self.assertGreaterEqual(elapsed, floor, "%.0f bytes in %.2f s: faster than %g Mbit/s" % (
            size, elapsed, self.MBIT))


if __name__ == "__main__":
    unittest.main(verbosity=2)
