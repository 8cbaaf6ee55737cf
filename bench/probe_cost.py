#!/usr/bin/env python3
"""What learning an account costs (issue 12): the capability probe on first
contact, and the no-change backup of an account without a shell.

    bench/probe_cost.py [--delay-ms 10] [-n 5]

Starts two OpenSSH servers on 127.0.0.1, each behind bench/delayproxy.py
(--delay-ms each way): one with a shell, one with `ForceCommand
internal-sftp` (SFTP only, as a NAS). For each it backs up a small tree once,
then times, n times each (median printed):

  snapshots, cached   the capabilities come from <state_dir>/target-capabilities.json
  snapshots, probed   that file removed first: the run probes the account
  no-change backup    with the cache; a shell account says "nothing to send"
                      from its stamps, an SFTP-only one runs rsync in full

Needs root (FUSE), gocryptfs, sshfs, rsync, sshd, and the ciphersync binary
(CSBENCH_BIN, else target/release/ciphersync, else target/debug/ciphersync).
Prints figures; asserts nothing (speed is a benchmark's, not a test's).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)


def binary():
    for path in [os.environ.get("CSBENCH_BIN"), ROOT + "/target/release/ciphersync",
                 ROOT + "/target/debug/ciphersync"]:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("no ciphersync binary: cargo build --release, or set CSBENCH_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=60):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("port %d never answered" % port)


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class Server:
    """sshd (with `extra` config lines) behind a delay proxy."""

    def __init__(self, base, name, extra, delay_ms, procs):
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.dir + "/host_key"])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.dir + "/client_key"])
        shutil.copy(self.dir + "/client_key.pub", self.dir + "/authorized_keys")
        sshd_port = free_port()
        with open(self.dir + "/sshd_config", "w") as f:
            f.write("ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host_key\n"
                    "AuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\n"
                    "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nSubsystem sftp internal-sftp\n"
                    "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\nSetEnv SHLVL=1\n%s"
                    % (sshd_port, self.dir, self.dir, self.dir, extra))
        os.makedirs("/run/sshd", exist_ok=True)
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", self.dir + "/sshd_config"],
                                      stderr=subprocess.DEVNULL))
        wait_port(sshd_port)
        self.port = free_port()
        procs.append(subprocess.Popen([sys.executable, BENCH + "/delayproxy.py", str(self.port),
                                       str(sshd_port), str(delay_ms)], stderr=subprocess.DEVNULL))
        wait_port(self.port)
        key = " ".join(open(self.dir + "/host_key.pub").read().split()[:2])
        with open(self.dir + "/known_hosts", "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (self.port, key))
        self.remote = os.path.join(self.dir, "remote")
        os.makedirs(self.remote)


def make_job(base, name, server, source):
    state = os.path.join(base, name, "state")
    job = {
        "version": 1, "name": "probe-" + name, "source": source,
        "password_file": os.path.join(base, "password"),
        "gocryptfs_config": os.path.join(state, "gocryptfs.reverse.conf"),
        "target": {"type": "sftp", "host": "127.0.0.1", "port": server.port, "user": "root",
                   "path": server.remote, "identity_file": server.dir + "/client_key",
                   "known_hosts_file": server.dir + "/known_hosts", "transport": "sshfs"},
        "state_dir": state, "runtime_dir": os.path.join(base, name, "run"),
    }
    path = os.path.join(base, name, "job.json")
    with open(path, "w") as f:
        json.dump(job, f)
    return path, state


def timed(argv, n, before=None):
    times = []
    for _ in range(n):
        if before:
            before()
        start = time.monotonic()
        run(argv)
        times.append(time.monotonic() - start)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=10.0, help="delay each way (default 10: a 20 ms round trip)")
    ap.add_argument("-n", type=int, default=5, help="repeats per figure (median shown)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (FUSE mounts)")
    cs = binary()
    base = "/var/tmp/ciphersync-probe-bench"
    subprocess.run(["fusermount3", "-uz", base], stderr=subprocess.DEVNULL)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    with open(base + "/password", "w") as f:
        f.write("probe-bench-password\n")
    os.chmod(base + "/password", 0o600)
    source = os.path.join(base, "src")
    for i in range(50):
        os.makedirs(os.path.join(source, "d%d" % (i % 5)), exist_ok=True)
        with open(os.path.join(source, "d%d" % (i % 5), "f%02d" % i), "wb") as f:
            f.write(os.urandom(1000 + i))
    procs = []
    rows = []
    try:
        kinds = [("shell", ""), ("sftp-only", "ForceCommand internal-sftp\n")]
        for name, extra in kinds:
            server = Server(base, name, extra, args.delay_ms, procs)
            job, state = make_job(base, name, server, source)
            run([cs, "-c", job, "init"])
            run([cs, "-c", job, "backup"])
            caps = os.path.join(state, "target-capabilities.json")
            run([cs, "-c", job, "snapshots"])  # makes the cache
            found = json.load(open(caps))
            cached = timed([cs, "-c", job, "snapshots"], args.n)
            probed = timed([cs, "-c", job, "snapshots"], args.n,
                           before=lambda: os.path.exists(caps) and os.remove(caps))
            nochange = timed([cs, "-c", job, "backup"], args.n)
            rows.append((name, found, cached, probed, nochange))
    finally:
        subprocess.run(["sh", "-c", "grep -o ' %s[^ ]*' /proc/mounts | xargs -r -n1 umount -l" % base],
                       stderr=subprocess.DEVNULL)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    print("round trip %.0f ms (delay proxy, %g ms each way), median of %d (min-max)"
          % (2 * args.delay_ms, args.delay_ms, args.n))
    print("| account | probe found | snapshots, cached | snapshots, probed | probe cost | no-change backup |")
    print("|---|---|---:|---:|---:|---:|")
    fmt = lambda t: "%.2f s (%.2f-%.2f)" % t
    for name, found, cached, probed, nochange in rows:
        what = ", ".join(k for k in ("shell", "rsync_server", "sha1sum") if found.get(k)) or "SFTP only"
        print("| %s | %s | %s | %s | %+.2f s | %s |" % (name, what, fmt(cached), fmt(probed),
                                                    probed[0] - cached[0], fmt(nochange)))


if __name__ == "__main__":
    main()
