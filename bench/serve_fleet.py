#!/usr/bin/env python3
"""A fleet against one ciphersync storage server (issue 16): what
`ciphersync serve` costs the server per client, and how N concurrent
clients compare with one alone.

    bench/serve_fleet.py [--clients 1,20] [--files 2000] [--mb 50] [-n 1]

One sshd on 127.0.0.1 with N accounts (system users csfleet00..), each a
`Match User` block whose ForceCommand is `ciphersync serve --root DIR
--quota 1T` (the module's ForceCommand, with a quota so that every
write-capable request measures the account dir, as it would in use). N
clients (`transport: "rsync"`, each its own job, password, gocryptfs
config and account) run `backup` at the same moment: first into empty
accounts (initial), then again with nothing changed (the daily case).
Every client backs up the same generated tree (bench/gen.py's log-normal
model, --files files, about --mb MB; incompressible bytes), read through
its own gocryptfs -reverse mount.

Server side per client: every process of the account (the root-owned
`sshd: USER [priv]` monitor, `sshd: USER@notty`, serve, rsync,
sftp-server) is moved into a cpuacct cgroup of its own as soon as it
appears (a 0.1 s /proc scan; children forked later inherit the group, so
only a process that is born and dies within one scan of a parent not yet
moved escapes). CPU: the cgroup's user+sys, exited processes included.
Peak RSS: the largest sum of VmRSS over the account's live processes, one
sample per scan. What no account can be charged with (sshd's listener and
the pre-authentication handshake, before sshd knows the user) is reported
as `unattributed`. Client side: every client process (ciphersync, ssh,
rsync, gocryptfs) in one more cgroup. Clients and server share this
machine's cores: the wall times are of the whole, not of the server alone.

Needs root (useradd, cgroups, FUSE). Results: a JSON file in
bench/results/<date>-fleet/ and a Markdown table on stdout.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import gen  # noqa: E402  (bench/gen.py: the data sets' size model)
from bench import free_port, sh  # noqa: E402  (bench/bench.py's helpers)

CG_BASE = "/sys/fs/cgroup/cpuacct"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
USER_PREFIX = "csfleet"
SCAN_S = 0.1


def log(msg):
    print("[fleet %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


class Cgroup:
    def __init__(self, name):
        self.path = os.path.join(CG_BASE, "csfleet-%d-%s" % (os.getpid(), name))
        os.makedirs(self.path, exist_ok=True)

    def add(self, pid):
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            return True
        except OSError:
            return False  # exited meanwhile

    def join_self(self):  # preexec_fn
        self.add(os.getpid())

    def user_sys_s(self):
        out = []
        for k in ("cpuacct.usage_user", "cpuacct.usage_sys"):
            with open(os.path.join(self.path, k)) as f:
                out.append(int(f.read()) / 1e9)
        return out

    def cpu_s(self):
        return sum(self.user_sys_s())

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def remove(self):
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def steal_s():
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def proc_status(pid):
    """(uid, VmRSS kB, zombie) of a pid, or None once it is gone."""
    try:
        uid, rss, zombie = None, 0, False
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    zombie = line.split()[1] == "Z"
                elif line.startswith("Uid:"):
                    uid = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return uid, rss, zombie
    except (OSError, ValueError, IndexError):
        return None


def proc_title(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class Attributor(threading.Thread):
    """Moves each account's processes into the account's cgroup and keeps
    the peak of the sum of their RSS."""

    def __init__(self, accounts, cgroups):
        super().__init__(daemon=True)
        self.by_uid = {a["uid"]: a["name"] for a in accounts}
        self.names = [a["name"] for a in accounts]
        self.cgroups = cgroups
        self.peak_kb = {a["name"]: 0 for a in accounts}
        self.seen = {a["name"]: set() for a in accounts}  # process names charged
        self.settled = set()  # pids placed or never an account's
        self.stop = threading.Event()

    def owner(self, pid, uid):
        if uid in self.by_uid:
            return self.by_uid[uid]
        # root's per-connection monitor, once sshd knows the user
        title = proc_title(pid)
        if title.startswith("sshd: "):
            word = title[6:].split(" ")[0].split("@")[0]
            if word in self.peak_kb:
                return word
            return "later"  # pre-auth: ask again next scan
        return None

    def scan(self):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in self.settled:
                continue
            st = proc_status(pid)
            if st is None:
                continue
            who = self.owner(pid, st[0])
            if who == "later":
                continue
            if who is not None:
                self.cgroups[who].add(pid)
            self.settled.add(pid)
        for name in self.names:
            total = 0
            for pid in self.cgroups[name].pids():
                st = proc_status(pid)
                if st and not st[2]:
                    total += st[1]
                    try:
                        with open("/proc/%d/comm" % pid) as f:
                            self.seen[name].add(f.read().strip())
                    except OSError:
                        pass
            self.peak_kb[name] = max(self.peak_kb[name], total)

    def run(self):
        while not self.stop.is_set():
            self.scan()
            self.stop.wait(SCAN_S)


def wait_port(port, limit=60):
    import socket
    end = time.time() + limit
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit("sshd did not answer on port %d" % port)


def ensure_user(name):
    """(uid, gid) of the system user `name`, created with its own group."""
    import pwd
    # as tests/common/servers.rs makes its users: '*' (not '!'), or sshd
    # without PAM takes the account for locked; the same lock file
    script = ('getent passwd "$1" >/dev/null || useradd --system --no-create-home --home-dir / '
              '--shell /bin/sh --user-group "$1"\n'
              '[ "$(getent shadow "$1" | cut -d: -f2)" = "*" ] || usermod --password "*" "$1"\n')
    sh(["flock", "/tmp/ciphersync-e2e-users.lock", "sh", "-ec", script, "sh", name])
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


class Fleet:
    def __init__(self, args):
        self.args = args
        self.root = args.root
        self.bin = os.path.join(self.root, "bin", "ciphersync")
        self.data = os.path.join(self.root, "data", "fleet-%d-%d" % (args.files, args.mb))
        self.keys = os.path.join(self.root, "keys")
        self.accounts = []
        self.sshd = None

    def prepare(self):
        src = os.environ.get("CSBENCH_BIN") or os.path.join(REPO, "target", "release", "ciphersync")
        if not os.environ.get("CSBENCH_BIN"):
            sh(["cargo", "build", "--release", "--locked", "-q"], cwd=REPO)
        os.makedirs(os.path.dirname(self.bin), exist_ok=True)
        shutil.copy(src, self.bin)
        os.chmod(self.bin, 0o755)
        os.chmod(self.root, 0o755)
        gen.SETS["FLEET"] = dict(files=self.args.files, dirs=max(1, self.args.files // 40),
                                 model="lognormal", total=self.args.mb * 10**6)
        gen.create("FLEET", self.data)
        shutil.rmtree(self.keys, ignore_errors=True)
        os.makedirs(self.keys)
        for k in ("host_key", "client_key"):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.keys, k)])
        shutil.copy(os.path.join(self.keys, "client_key.pub"), os.path.join(self.keys, "authorized_keys"))
        os.chmod(self.keys, 0o755)
        os.chmod(os.path.join(self.keys, "authorized_keys"), 0o644)
        for i in range(max(self.args.clients)):
            name = "%s%02d" % (USER_PREFIX, i)
            uid, gid = ensure_user(name)
            wrapper = os.path.join(self.root, "serve-%s.sh" % name)
            acct_root = os.path.join(self.root, "srv", name)
            with open(wrapper, "w") as f:
                f.write("#!/bin/sh\nexec %s serve --root %s --sftp-server %s --rsync /usr/bin/rsync --quota 1T\n"
                        % (self.bin, acct_root, SFTP_SERVER))
            os.chmod(wrapper, 0o755)
            self.accounts.append({"name": name, "uid": uid, "gid": gid, "root": acct_root, "wrapper": wrapper})
        os.makedirs(os.path.join(self.root, "srv"), exist_ok=True)
        os.chmod(os.path.join(self.root, "srv"), 0o755)
        self.password_dir = os.path.join(self.root, "passwords")
        os.makedirs(self.password_dir, exist_ok=True)

    def start_sshd(self):
        self.port = free_port()
        k = self.keys
        blocks = "".join(
            "Match User %s\n  ForceCommand %s\n  AllowTcpForwarding no\n  X11Forwarding no\n  PermitTTY no\n"
            % (a["name"], a["wrapper"]) for a in self.accounts)
        with open(os.path.join(k, "sshd_config"), "w") as f:
            f.write(
                "ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host_key\n"
                "AuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\n"
                "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nSubsystem sftp %s\n"
                "MaxStartups 200\nMaxSessions 100\nLogLevel ERROR\n%sMatch all\n"
                % (self.port, k, k, k, SFTP_SERVER, blocks))
        os.makedirs("/run/sshd", exist_ok=True)
        self.sshd_cg = Cgroup("sshd")
        self.sshd_log = open(os.path.join(self.root, "sshd.log"), "a")
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(k, "sshd_config")],
                                     stdout=self.sshd_log, stderr=subprocess.STDOUT,
                                     preexec_fn=self.sshd_cg.join_self)
        wait_port(self.port)
        hostkey = " ".join(open(os.path.join(k, "host_key.pub")).read().split()[:2])
        self.known_hosts = os.path.join(k, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (self.port, hostkey))

    def job(self, a, rnd):
        """A fresh job and an empty account dir for account `a`."""
        shutil.rmtree(a["root"], ignore_errors=True)
        os.makedirs(a["root"])
        os.chown(a["root"], a["uid"], a["gid"])
        os.chmod(a["root"], 0o700)
        jdir = os.path.join(self.root, "jobs", rnd, a["name"])
        shutil.rmtree(jdir, ignore_errors=True)
        os.makedirs(jdir)
        password = os.path.join(self.password_dir, a["name"])
        with open(password, "w") as f:
            f.write("ciphersync-fleet-%s-password\n" % a["name"])
        os.chmod(password, 0o600)
        job = os.path.join(jdir, "job.json")
        with open(job, "w") as f:
            json.dump({
                "version": 1, "name": a["name"], "source": self.data, "password_file": password,
                "gocryptfs_config": os.path.join(jdir, "state", "gocryptfs.reverse.conf"),
                "target": {"type": "sftp", "host": "127.0.0.1", "port": self.port, "user": a["name"],
                           "path": a["root"], "identity_file": os.path.join(self.keys, "client_key"),
                           "known_hosts_file": self.known_hosts, "transport": "rsync"},
                "state_dir": os.path.join(jdir, "state"), "runtime_dir": os.path.join(jdir, "run"),
            }, f, indent=2)
        with open(os.path.join(jdir, "init.log"), "w") as out:
            sh([self.bin, "-c", job, "init", "--json"], stdout=out, stderr=subprocess.STDOUT)
        return job

    def backup_all(self, accounts, jobs, tag):
        """Every job's backup at once; the measures of the round."""
        cgs = {a["name"]: Cgroup("%s-%s" % (tag, a["name"])) for a in accounts}
        client_cg = Cgroup("%s-clients" % tag)
        sshd_before = self.sshd_cg.cpu_s()
        steal_before = steal_s()
        att = Attributor(accounts, cgs)
        try:
            return self.measure(accounts, jobs, tag, cgs, client_cg, att, sshd_before, steal_before)
        finally:
            att.stop.set()
            if att.is_alive():
                att.join()
            for cg in list(cgs.values()) + [client_cg]:
                cg.remove()

    def measure(self, accounts, jobs, tag, cgs, client_cg, att, sshd_before, steal_before):
        att.scan()
        att.start()
        procs, started = [], time.monotonic()
        for a, job in zip(accounts, jobs):
            out = open(os.path.join(os.path.dirname(job), "%s.json" % tag), "w")
            p = subprocess.Popen([self.bin, "-c", job, "backup", "--json"], stdout=out,
                                 stderr=subprocess.STDOUT, preexec_fn=client_cg.join_self)
            procs.append((a, p, time.monotonic(), out))
        walls, failed = {}, []
        for a, p, t0, out in procs:
            code = p.wait()
            walls[a["name"]] = time.monotonic() - t0
            out.close()
            if code != 0:
                failed.append("backup of %s failed (exit %d): see %s" % (a["name"], code, out.name))
        wall = time.monotonic() - started
        # sshd's session processes end with their connections: wait for them
        end = time.time() + 30
        while time.time() < end and any(cgs[n].pids() for n in cgs):
            time.sleep(0.1)
        if failed:
            sys.exit("\n".join(failed))
        att.stop.set()
        att.join()
        per = {}
        for a in accounts:
            n = a["name"]
            user, system = cgs[n].user_sys_s()
            per[n] = {"server_cpu_s": round(user + system, 3), "server_user_s": round(user, 3),
                      "server_sys_s": round(system, 3), "server_peak_rss_kb": att.peak_kb[n],
                      "wall_s": round(walls[n], 2), "processes": sorted(att.seen[n])}
        return {
            "clients": len(accounts), "scenario": tag.split("-")[0], "wall_s": round(wall, 2),
            "client_cpu_s": round(client_cg.cpu_s(), 2),
            # the hypervisor's: time this VM's CPUs waited for the host
            "steal_s": round(steal_s() - steal_before, 2),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "unattributed_server_cpu_s": round(self.sshd_cg.cpu_s() - sshd_before, 3),
            "per_client": per,
        }

    def round(self, n, rep):
        accounts = self.accounts[:n]
        rnd = "n%d-r%d" % (n, rep)
        log("%d client(s), repeat %d: preparing" % (n, rep))
        jobs = [self.job(a, rnd) for a in accounts]
        out = []
        for scenario in ("initial", "nochange"):
            log("%d client(s): backup %s" % (n, scenario))
            r = self.backup_all(accounts, jobs, "%s-%s" % (scenario, rnd))
            r["repeat"] = rep
            log("  wall %.1f s, server cpu per client %.2f s" % (
                r["wall_s"], mean([c["server_cpu_s"] for c in r["per_client"].values()])))
            out.append(r)
        for a in accounts:
            shutil.rmtree(a["root"], ignore_errors=True)
        return out

    def teardown(self):
        if self.sshd:
            self.sshd.terminate()
            self.sshd.wait()
            time.sleep(0.5)
            self.sshd_cg.remove()


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def table(results):
    lines = [
        "| clients | backup | repeat | wall (all) | client wall mean / max | server CPU s per client mean / max "
        "| of which user / sys (mean) | server peak RSS per client mean / max | unattributed server CPU "
        "| client-side CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pc = list(r["per_client"].values())
        cpu = [c["server_cpu_s"] for c in pc]
        rss = [c["server_peak_rss_kb"] / 1024 for c in pc]
        wall = [c["wall_s"] for c in pc]
        split = "–"
        if all("server_user_s" in c for c in pc):
            split = "%.2f / %.2f" % (mean([c["server_user_s"] for c in pc]), mean([c["server_sys_s"] for c in pc]))
        lines.append("| %d | %s | %s | %.1f s | %.1f / %.1f s | %.2f / %.2f | %s | %.1f / %.1f MiB | %.2f s | %.1f s |" % (
            r["clients"], r["scenario"], r.get("repeat", "–"), r["wall_s"], mean(wall), max(wall), mean(cpu),
            max(cpu), split, mean(rss), max(rss), r["unattributed_server_cpu_s"], r["client_cpu_s"]))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,20", help="comma-separated fleet sizes (default 1,20)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--mb", type=int, default=50)
    p.add_argument("-n", "--repeats", type=int, default=1)
    p.add_argument("--root", default=os.environ.get("CSFLEET_ROOT", "/var/tmp/ciphersync-fleet"))
    args = p.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    if os.geteuid() != 0:
        sys.exit("serve_fleet.py needs root (useradd, cgroups, FUSE)")
    if not os.path.isdir(CG_BASE):
        sys.exit("no cgroup v1 cpuacct hierarchy at %s" % CG_BASE)
    os.makedirs(args.root, exist_ok=True)
    fleet = Fleet(args)
    results = []
    # the machine may be shared: say how busy it was
    load_before = os.getloadavg()
    try:
        fleet.prepare()
        fleet.start_sshd()
        for rep in range(args.repeats):
            for n in args.clients:
                results.extend(fleet.round(n, rep))
    finally:
        fleet.teardown()
    machine = {
        "cpus": os.cpu_count(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": os.uname().release,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    doc = {"machine": machine, "commit": commit, "quota": "1T", "files": args.files, "mb": args.mb, "results": results,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    folder = os.path.join(BENCH, "results", time.strftime("%Y-%m-%d", time.gmtime()) + "-fleet")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    log("results: %s" % path)
    print(table(results))


if __name__ == "__main__":
    main()
