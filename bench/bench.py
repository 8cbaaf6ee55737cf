#!/usr/bin/env python3
"""The benchmark driver behind bench/run.sh (issue 6). stdlib only.

Runs, on one data set and one throwaway sshd on 127.0.0.1 (optionally behind
bench/delayproxy.py), every tool through the same scenarios, N times, and
appends one JSON object per measurement to
bench/results/<date>-<set>-d<delay>[-connections][-N]/<run id>.jsonl: one
folder per run (keep in the repository only the runs docs/benchmarks.md cites).

Measured per command: wall time; CPU of everything the command started
(a cpuacct cgroup, so the gocryptfs/sshfs daemons count too) and of the
server side (sshd and its children in their own cgroup); /usr/bin/time -v's
user+sys and max RSS (waited-for processes only); the peak RSS of every
process by name (VmHWM, sampled every 50 ms); bytes over the wire (loopback
counters: run.sh runs this in a private network namespace, so only our
traffic is counted).
"""
import argparse
import re
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
BIN = os.environ.get("CSBENCH_BIN") or os.path.join(REPO, "target", "release", "ciphersync")
CG_BASE = "/sys/fs/cgroup/cpuacct"
TOOLS = ["cs-sshfs", "cs-rsync", "seed", "restic", "borg"]
# Run only when named in --tools.
EXTRA_TOOLS = ["cs-sftponly"]
SETTLE_S = 2.5
SCENARIOS = [
    "backup_initial", "backup_nochange", "backup_changed",
    "verify_full", "verify_nochange", "verify_deep", "restore_full",
    "restore_one", "restore_dir",
]
RESTORES = ("restore_full", "restore_one", "restore_dir")


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


# ---------------------------------------------------------------- measuring

class Cgroup:
    def __init__(self, name):
        self.path = os.path.join(CG_BASE, "csbench-%d-%s" % (os.getpid(), name))
        self.ok = True
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError:
            self.ok = False

    def join_self(self):  # used in preexec_fn
        if self.ok:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def cpu(self):
        if not self.ok:
            return None
        with open(os.path.join(self.path, "cpuacct.usage_user")) as f:
            u = int(f.read())
        with open(os.path.join(self.path, "cpuacct.usage_sys")) as f:
            s = int(f.read())
        return u / 1e9, s / 1e9

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def live_pids(self):
        """Pids that have not exited (zombies wait for pid 1 to reap them,
        which in this VM can take a minute; they hold nothing any more)."""
        out = []
        for pid in self.pids():
            try:
                stat = open("/proc/%d/stat" % pid).read()
                if stat[stat.rindex(")") + 2] != "Z":
                    out.append(pid)
            except (OSError, ValueError, IndexError):
                pass
        return out

    def remove(self):
        if self.ok:
            for _ in range(50):
                try:
                    os.rmdir(self.path)
                    return
                except OSError:
                    time.sleep(0.1)


def lo_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":", 1)[1].split()[8])  # transmit bytes
    return 0


def parse_time_v(path):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if ":" not in line:
            continue
        k, v = line.rsplit(":", 1)
        v = v.strip()
        if k == "User time (seconds)":
            out["user_s"] = float(v)
        elif k == "System time (seconds)":
            out["sys_s"] = float(v)
        elif k == "Maximum resident set size (kbytes)":
            out["maxrss_kb"] = int(v)
        elif k == "Exit status":
            out["exit"] = int(v)
    return out


class Sampler(threading.Thread):
    """Peak VmHWM per process name of everything in the client cgroup."""

    def __init__(self, cg):
        super().__init__(daemon=True)
        self.cg, self.peak, self.stop = cg, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for pid in self.cg.pids():
                try:
                    comm = open("/proc/%d/comm" % pid).read().strip()
                    for line in open("/proc/%d/status" % pid):
                        if line.startswith("VmHWM:"):
                            kb = int(line.split()[1])
                            if kb > self.peak.get(comm, 0):
                                self.peak[comm] = kb
                            break
                except (OSError, ValueError):
                    pass
            self.stop.wait(0.05)


def mbit_tag(args):
    """`-100mbit` for a run through the proxy's bandwidth cap."""
    return "-%gmbit" % args.mbit if args.mbit else ""


def run_folder(args):
    """bench/results/<date>-<set>-d<delay>[-connections][-N]: a folder of its
    own for each run (-connections: only cs-sshfs-cN tools, the
    target.connections comparison; -N when the day already has such a run)."""
    base = "%s-%s-d%g%s" % (time.strftime("%Y-%m-%d", time.gmtime()), args.set, args.delay_ms, mbit_tag(args))
    if args.tools and all(re.match(r"cs-sshfs-c\d+$", t) for t in args.tools):
        base += "-connections"
    path, n = os.path.join(BENCH, "results", base), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(BENCH, "results", "%s-%d" % (base, n))
    return path


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = args.root
        self.work = os.path.join(self.root, "work")
        self.srv = os.path.join(self.root, "server")
        self.src = os.path.join(self.work, "src")
        self.data = os.path.join(self.root, "data", args.set)
        self.client_cg = Cgroup("client")
        self.server_cg = Cgroup("server")
        self.procs = []
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-%s-d%g%s" % (
            args.set, args.delay_ms, mbit_tag(args))
        self.results = os.path.join(run_folder(args), self.run_id + ".jsonl")
        self.logdir = os.path.join(self.root, "logs", self.run_id)
        os.makedirs(self.logdir, exist_ok=True)
        self.in_netns = os.environ.get("CSBENCH_NETNS") == "1"
        self.seq = 0

    # ------------------------------------------------------------ env
    def setup_server(self):
        k = os.path.join(self.root, "keys")
        shutil.rmtree(k, ignore_errors=True)
        os.makedirs(k)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k + "/host_key"])
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k + "/client_key"])
        shutil.copy(k + "/client_key.pub", k + "/authorized_keys")
        # cs-sftponly logs in with a key that sshd serves SFTP only
        # (internal-sftp forced, as a NAS or an SFTP-only share does).
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k + "/sftponly_key"])
        with open(k + "/authorized_keys", "a") as f:
            f.write('restrict,command="internal-sftp" ' + open(k + "/sftponly_key.pub").read())
        self.sshd_port = free_port()
        with open(k + "/sshd_config", "w") as f:
            f.write(
                "ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host_key\n"
                "AuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\n"
                "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nSubsystem sftp internal-sftp\n"
                "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
                # bash sources ~/.bashrc for commands run by sshd only when
                # SHLVL < 2: this account's .bashrc (pyenv init) would add
                # ~0.5 s to every remote command, which a backup account
                # would not have. See "What is measured" in docs/benchmarks.md.
                "SetEnv SHLVL=1\n" % (self.sshd_port, k, k, k)
            )
        os.makedirs("/run/sshd", exist_ok=True)
        self.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", k + "/sshd_config"], "sshd", self.server_cg)
        wait_port(self.sshd_port)
        self.port = self.sshd_port
        if self.args.delay_ms > 0 or self.args.mbit:
            self.port = free_port()
            pcg = Cgroup("proxy")
            self.proxy_cg = pcg
            self.spawn([sys.executable, os.path.join(BENCH, "delayproxy.py"), str(self.port),
                        str(self.sshd_port), str(self.args.delay_ms), os.path.join(self.logdir, "proxy.json")]
                       + (["--mbit", str(self.args.mbit)] if self.args.mbit else []),
                       "proxy", pcg)
            wait_port(self.port)
        hostkey = " ".join(open(k + "/host_key.pub").read().split()[:2])
        self.known_hosts = k + "/known_hosts"
        with open(self.known_hosts, "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (self.port, hostkey))
        self.client_key = k + "/client_key"
        self.sftponly_key = k + "/sftponly_key"
        self.ssh_config = k + "/ssh_config"
        with open(self.ssh_config, "w") as f:
            f.write(
                "Host bench\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n"
                "  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n"
                % (self.port, user(), self.client_key, self.known_hosts)
            )
        self.password = os.path.join(self.root, "password")
        if not os.path.exists(self.password):
            with open(self.password, "w") as f:
                f.write("ciphersync-bench-password-%d\n" % 20261129)
        os.chmod(self.password, 0o600)
        sh(["ssh", "-F", self.ssh_config, "bench", "true"])

    def spawn(self, argv, name, cg):
        out = open(os.path.join(self.logdir, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=cg.join_self,
                             start_new_session=True)
        self.procs.append((p, name, cg))
        return p

    def teardown(self):
        unmount_under(self.root)
        for p, name, cg in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # sshd's session children end with their connections
        for cg in [self.client_cg, self.server_cg] + [c for _, _, c in self.procs]:
            for pid in cg.pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            cg.remove()

    # ------------------------------------------------------------ measuring
    def measure(self, tool, scenario, rep, argv, env=None, cwd=None, parse_json=False, extra=None, settle=True):
        self.seq += 1
        tag = "%03d-%s-%s-r%d" % (self.seq, tool, scenario, rep)
        tfile = os.path.join(self.logdir, tag + ".time")
        ofile = os.path.join(self.logdir, tag + ".out")
        efile = os.path.join(self.logdir, tag + ".err")
        full_env = dict(os.environ)
        full_env.update(env or {})
        c0, s0, b0 = self.client_cg.cpu(), self.server_cg.cpu(), lo_bytes()
        sampler = Sampler(self.client_cg)
        sampler.start()
        t0 = time.monotonic()
        with open(ofile, "w") as out, open(efile, "w") as err:
            p = subprocess.Popen(["/usr/bin/time", "-v", "-o", tfile] + argv, stdout=out, stderr=err,
                                 env=full_env, cwd=cwd, preexec_fn=self.client_cg.join_self,
                                 start_new_session=True)
            try:
                p.wait(self.args.timeout)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                rc = "timeout"
        wall = time.monotonic() - t0
        # Daemons (gocryptfs, sshfs) outlive their unmount: gocryptfs takes
        # about 1.5 s to exit and keeps its -ctlsock bound until then. Wait
        # for all of them (up to 60 s; zombies do not count), so that their
        # CPU is counted and the next command does not trip over them; the
        # wait is recorded.
        t_settle = time.monotonic()
        for _ in range(1200 if settle else 0):
            if not self.client_cg.live_pids():
                break
            time.sleep(0.05)
        lingered = time.monotonic() - t_settle
        sampler.stop.set()
        sampler.join()
        c1, s1, b1 = self.client_cg.cpu(), self.server_cg.cpu(), lo_bytes()
        tv = parse_time_v(tfile)
        wire = b1 - b0
        if self.args.delay_ms > 0 or self.args.mbit:
            wire //= 2  # client->proxy and proxy->sshd both cross lo
        rec = {
            "run_id": self.run_id, "set": self.args.set, "delay_ms": self.args.delay_ms,
            "rep": rep, "tool": tool, "scenario": scenario, "rc": rc,
            "wall_s": round(wall, 3),
            "time_user_s": tv.get("user_s"), "time_sys_s": tv.get("sys_s"),
            "maxrss_kb": tv.get("maxrss_kb"),
            "cpu_client_s": round(sum(c1) - sum(c0), 3) if c0 else None,
            "cpu_client_user_s": round(c1[0] - c0[0], 3) if c0 else None,
            "cpu_client_sys_s": round(c1[1] - c0[1], 3) if c0 else None,
            "cpu_server_s": round(sum(s1) - sum(s0), 3) if s0 else None,
            "peak_rss_kb": sampler.peak,
            "wire_bytes": wire if self.in_netns else None,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": float(open("/proc/loadavg").read().split()[0]),
            "daemons_lingered_s": round(lingered, 3),
        }
        if parse_json:
            try:
                rec["stats"] = json.loads(open(ofile).read().strip().splitlines()[-1]).get("stats")
            except Exception:
                rec["stats"] = None
        if extra:
            rec.update(extra)
        if rc != 0:
            rec["stderr_tail"] = open(efile, errors="replace").read()[-600:]
        with open(self.results, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        log("%-9s %-16s r%d  %7.2fs  cpu %6.2fs  srv %6.2fs  wire %s  rc=%s" % (
            tool, scenario, rep, wall, rec["cpu_client_s"] or 0, rec["cpu_server_s"] or 0,
            human(rec["wire_bytes"]), rc))
        return rec

    # ------------------------------------------------------------ data
    def reset_src(self):
        shutil.rmtree(self.src, ignore_errors=True)
        os.makedirs(self.work, exist_ok=True)
        # a real copy: ciphersync treats hard-linked files specially (gocryptfs
        # -reverse derives their IVs from whichever path it saw first)
        sh(["cp", "-a", self.data, self.src])

    def let_data_rest(self):
        # Data at rest, as between scheduled runs: ciphersync trusts no file
        # stamp younger than 2 s (a change within the same tick of a coarse
        # filesystem clock could keep it; see checksums::SETTLE_NS). The
        # pause is not measured and is the same for every tool.
        time.sleep(SETTLE_S)

    def mutate(self):
        sh([sys.executable, os.path.join(BENCH, "gen.py"), "mutate", self.args.set, self.src])

    # ------------------------------------------------------------ the floor
    def floor(self, rep):
        d = os.path.join(self.root, "floor")
        conf = os.path.join(d, "gocryptfs.reverse.conf")
        mnt = os.path.join(d, "cipher")
        os.makedirs(mnt, exist_ok=True)
        if not os.path.exists(conf):
            sh(["gocryptfs", "-q", "-init", "-reverse", "-config", conf, "-passfile", self.password, self.data])
        sh(["gocryptfs", "-q", "-nosyslog", "-reverse", "-config", conf, "-passfile", self.password, self.data, mnt],
           preexec_fn=self.client_cg.join_self)
        read_all = "find %s -type f -print0 | xargs -0 cat" % mnt
        try:
            self.measure("floor", "floor_cat", rep, ["sh", "-c", read_all + " > /dev/null"], settle=False)
            # The same bytes through one ssh stream into `cat > /dev/null` on
            # the server (the cipher ciphersync prefers): what any transport
            # over ssh pays on top of reading the view, before it writes a
            # single file.
            self.measure("floor", "floor_ssh", rep, ["sh", "-c", read_all + " | ssh -F %s -c %s bench 'cat > /dev/null'" % (
                self.ssh_config, "aes128-gcm@openssh.com")], settle=False)
        finally:
            sh(["fusermount3", "-u", mnt])

    # ------------------------------------------------------------ tools
    def run_tool(self, tool, rep):
        self.reset_src()
        self.let_data_rest()
        tdir = os.path.join(self.work, tool)
        rdir = os.path.join(self.srv, tool)
        shutil.rmtree(tdir, ignore_errors=True)
        shutil.rmtree(rdir, ignore_errors=True)
        os.makedirs(tdir)
        os.makedirs(rdir)
        t = TOOL_CLASSES[tool.split("-")[0]](self, tool, tdir, rdir)
        wanted = self.args.scenarios
        self.measure(tool, "init", rep, *t.init())
        for sc in SCENARIOS:
            if sc == "backup_changed":
                self.mutate()
                self.let_data_rest()
            # backups always run: every later scenario depends on them
            # a "no change" verify needs the verify before it
            if sc == "verify_full" and "verify_nochange" in wanted:
                wanted = wanted + ["verify_full"]
            if not t.supports(sc) or (not sc.startswith("backup") and sc not in wanted):
                continue
            if sc in RESTORES:
                dest = os.path.join(tdir, "restored")
                shutil.rmtree(dest, ignore_errors=True)
                rel = picked_path(self.src, sc)
                argv, env, cwd = t.restore(dest, [rel] if rel else [])
                rec = self.measure(tool, sc, rep, argv, env, cwd, parse_json=tool.startswith("cs"),
                                   extra={"path": rel} if rel else None)
                same = compare_restored(self.src, t.restored_root(dest), rel)
                with open(self.results, "a") as f:
                    f.write(json.dumps({"run_id": self.run_id, "set": self.args.set, "rep": rep,
                                        "delay_ms": self.args.delay_ms, "tool": tool,
                                        "scenario": "restore_check", "equal": same[0],
                                        "detail": same[1]}) + "\n")
                log("%-9s restore equals source: %s %s" % (tool, same[0], same[1] or ""))
                shutil.rmtree(dest, ignore_errors=True)
            else:
                self.measure(tool, sc, rep, *t.scenario(sc), parse_json=tool.startswith("cs"))
        unmount_under(self.root)
        if not self.args.keep:
            shutil.rmtree(rdir, ignore_errors=True)
            shutil.rmtree(tdir, ignore_errors=True)

    def run(self):
        log("run %s: set %s, %d repeats, delay %g ms, tools %s" % (
            self.run_id, self.args.set, self.args.repeats, self.args.delay_ms, ",".join(self.args.tools)))
        os.makedirs(os.path.dirname(self.results), exist_ok=True)
        with open(self.results, "a") as f:
            f.write(json.dumps({"run_id": self.run_id, "scenario": "meta", "meta": machine_info(self.args),
                                "in_netns": self.in_netns}) + "\n")
        self.setup_server()
        for rep in range(1, self.args.repeats + 1):
            if "floor" in self.args.tools:
                self.floor(rep)
            for tool in self.args.tools:
                if tool != "floor":
                    self.run_tool(tool, rep)
        log("results: %s" % self.results)


class Tool:
    def __init__(self, b, name, tdir, rdir):
        self.b, self.name, self.tdir, self.rdir = b, name, tdir, rdir

    def supports(self, sc):
        return sc != "verify_deep"

    def restored_root(self, dest):
        return dest


class CipherSync(Tool):
    def __init__(self, b, name, tdir, rdir):
        super().__init__(b, name, tdir, rdir)
        # cs-sshfs, cs-rsync, or cs-sshfs-c8: target.connections = 8;
        # cs-sftponly: the sshfs transport to an account that allows SFTP only
        parts = name.split("-")
        sftp_only = parts[1] == "sftponly"
        transport = "sshfs" if sftp_only else parts[1]
        self.job = os.path.join(tdir, "job.json")
        state, run = os.path.join(tdir, "state"), os.path.join(tdir, "run")
        runtime_tmpfs(run)
        target = {"type": "sftp", "host": "127.0.0.1", "port": b.port, "user": user(),
                  "path": rdir, "identity_file": b.client_key,
                  "known_hosts_file": b.known_hosts, "transport": transport,
                  "remote_checksums": "mount" if sftp_only else "ssh"}
        if sftp_only:
            target["identity_file"] = b.sftponly_key
        if len(parts) > 2:
            target["connections"] = int(parts[2][1:])
        with open(self.job, "w") as f:
            json.dump({
                "version": 1, "name": "bench-" + parts[1], "source": b.src,
                "password_file": b.password,
                "gocryptfs_config": os.path.join(state, "gocryptfs.reverse.conf"),
                "target": target,
                "state_dir": state, "runtime_dir": run,
            }, f, indent=2)

    def supports(self, sc):
        return True

    def cs(self, *a):
        return [BIN, "-c", self.job] + list(a) + ["--json"], None, None

    def init(self):
        return self.cs("init")

    def scenario(self, sc):
        return {
            "backup_initial": self.cs("backup"), "backup_nochange": self.cs("backup"),
            "backup_changed": self.cs("backup"), "verify_full": self.cs("verify"),
            "verify_nochange": self.cs("verify"), "verify_deep": self.cs("verify", "--deep"),
        }[sc]

    def restore(self, dest, paths):
        return self.cs("restore", "--to", dest, *paths)


class Seed(Tool):
    def s(self, cmd, *extra):
        return ["bash", os.path.join(BENCH, "seed.sh"), cmd, self.b.src, self.rdir, self.tdir,
                self.b.password, self.b.ssh_config] + list(extra), None, None

    def init(self):
        return self.s("init")

    def scenario(self, sc):
        return self.s("backup" if sc.startswith("backup") else "verify")

    def supports(self, sc):
        return sc not in ("verify_deep", "restore_one", "restore_dir")

    def restore(self, dest, paths):
        return self.s("restore", dest)


class Restic(Tool):
    def env(self):
        return {"RESTIC_PASSWORD_FILE": self.b.password,
                "RESTIC_REPOSITORY": "sftp:bench:" + self.rdir + "/repo",
                "RESTIC_CACHE_DIR": os.path.join(self.tdir, "cache")}

    def r(self, *a):
        return (["restic", "-o", "sftp.command=ssh -F %s bench -s sftp" % self.b.ssh_config] + list(a),
                self.env(), None)

    def init(self):
        return self.r("init")

    def scenario(self, sc):
        if sc.startswith("backup"):
            return self.r("backup", "--host", "bench", self.b.src)
        return self.r("check", "--read-data")

    def restore(self, dest, paths):
        include = [a for p in paths for a in ("--include", os.path.join(self.b.src, p))]
        return self.r("restore", "latest", "--target", dest, *include)

    def restored_root(self, dest):
        inner = dest + self.b.src
        return inner if os.path.isdir(inner) else dest


class Borg(Tool):
    n = 0

    def env(self):
        return {"BORG_PASSCOMMAND": "cat " + self.b.password,
                "BORG_REPO": "ssh://bench" + self.rdir + "/repo",
                "BORG_RSH": "ssh -F " + self.b.ssh_config,
                "BORG_BASE_DIR": os.path.join(self.tdir, "base")}

    def init(self):
        return ["borg", "init", "--encryption=repokey"], self.env(), None

    def scenario(self, sc):
        if sc.startswith("backup"):
            Borg.n += 1
            return ["borg", "create", "::a%d" % Borg.n, "."], self.env(), self.b.src
        return ["borg", "check", "--verify-data"], self.env(), None

    def restore(self, dest, paths):
        os.makedirs(dest, exist_ok=True)
        return ["borg", "extract", "::a%d" % Borg.n] + list(paths), self.env(), dest


TOOL_CLASSES = {"cs": CipherSync, "seed": Seed, "restic": Restic, "borg": Borg}


# ---------------------------------------------------------------- helpers

IGNORE = {".gocryptfs.reverse.conf"}


def tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for n in dirs:
            out[os.path.normpath(os.path.join(rel, n))] = ("d",)
        for n in files:
            if rel == "." and n in IGNORE:
                continue
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.normpath(os.path.join(rel, n))] = ("f", st.st_size, st.st_mode & 0o777)
    return out


def sha1(p):
    h = hashlib.sha1()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def picked_path(src, sc):
    """What restore_one and restore_dir restore: the file in the middle of
    the source's sorted file list, and its directory (the same on every
    run of a data set)."""
    if sc == "restore_full":
        return None
    files = sorted(k for k, v in tree(src).items() if v[0] == "f")
    one = files[len(files) // 2]
    return one if sc == "restore_one" else (os.path.dirname(one) or ".")


def compare_restored(src, root, rel):
    """The restored tree, or the one restored path, against the source."""
    if rel is None:
        return compare_trees(src, root)
    a, b = os.path.join(src, rel), os.path.join(root, rel)
    if os.path.isdir(a):
        return compare_trees(a, b)
    if not os.path.isfile(b):
        return False, "no restored file at %s" % b
    if (os.stat(a).st_size, os.stat(a).st_mode & 0o777) != (os.stat(b).st_size, os.stat(b).st_mode & 0o777):
        return False, "metadata differs: %s" % rel
    return (True, None) if sha1(a) == sha1(b) else (False, "content differs: %s" % rel)


def compare_trees(a, b):
    if not os.path.isdir(b):
        return False, "no restored tree at %s" % b
    ta, tb = tree(a), tree(b)
    if ta.keys() != tb.keys():
        return False, "paths differ: only in source %s, only in restore %s" % (
            sorted(ta.keys() - tb.keys())[:3], sorted(tb.keys() - ta.keys())[:3])
    for k, v in ta.items():
        if v != tb[k]:
            return False, "metadata differs: %s %s %s" % (k, v, tb[k])
        if v[0] == "f" and sha1(os.path.join(a, k)) != sha1(os.path.join(b, k)):
            return False, "content differs: %s" % k
    return True, None


def unmount_under(root):
    try:
        mounts = open("/proc/self/mounts").read().splitlines()
    except OSError:
        return
    for line in reversed(mounts):
        parts = line.split()
        if len(parts) > 2 and parts[1].startswith(root) and parts[2].startswith("fuse"):
            subprocess.run(["fusermount3", "-uz", parts[1]], stderr=subprocess.DEVNULL)
    # then the runtime dirs' tmpfs (see runtime_tmpfs), below the FUSE mounts
    for line in reversed(mounts):
        parts = line.split()
        if len(parts) > 2 and parts[1].startswith(root) and parts[2] == "tmpfs":
            subprocess.run(["umount", "-l", parts[1]], stderr=subprocess.DEVNULL)


def runtime_tmpfs(path):
    """ciphersync's runtime dir as deployed: a tmpfs (NixOS' /run/ciphersync/<job>,
    home-manager's $XDG_RUNTIME_DIR), sized as NixOS sizes /run (25 % of RAM).
    A restore stages small pulls there (src/restore.rs, stage_home)."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=25%", "tmpfs", path], check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("nothing listens on port %d" % port)


def user():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def human(n):
    if n is None:
        return "-"
    for unit in ["B", "KB", "MB", "GB"]:
        if abs(n) < 1024 or unit == "GB":
            return "%.1f%s" % (n, unit)
        n /= 1024.0


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:
        return "unavailable (%s)" % e


def machine_info(args):
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = open("/proc/cpuinfo").read()
    mem_kb = int(open("/proc/meminfo").readline().split()[1])
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "sha_ni": " sha_ni " in flags, "aes": " aes " in flags,
        "ram_gb": round(mem_kb / 1024 / 1024, 1), "kernel": os.uname().release,
        # Where every tree of the run lives (source copy, server, stages,
        # restores): its file system shapes the cost of creating and
        # deleting many files (bench/analysis.md, the ext4 without journal).
        "root_fs": first_line(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", args.root]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "set": args.set, "delay_ms": args.delay_ms, "mbit": args.mbit, "repeats": args.repeats,
        "data": json.loads(subprocess.run([sys.executable, os.path.join(BENCH, "gen.py"), "describe", args.set],
                                          capture_output=True, text=True).stdout),
        "versions": {
            "ciphersync": first_line([BIN, "--version"]),
            "ciphersync_commit": os.environ.get("CSBENCH_BIN_COMMIT") or (
                first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
                + (" + uncommitted changes in src/" if subprocess.run(
                    ["git", "-C", REPO, "status", "--porcelain", "src"], capture_output=True,
                    text=True).stdout.strip() else "")),
            "ciphersync_binary": "%s (sha1 %s)" % (BIN, sha1(BIN).hex()[:12]),
            "gocryptfs": first_line(["gocryptfs", "-version"]),
            "sshfs": next((l for l in subprocess.run(["sshfs", "--version"], capture_output=True, text=True)
                           .stdout.splitlines() + subprocess.run(["sshfs", "--version"], capture_output=True,
                                                                  text=True).stderr.splitlines()
                           if l.startswith("SSHFS")), "?"),
            "rsync": first_line(["rsync", "--version"]),
            "openssh": first_line(["ssh", "-V"]),
            "restic": first_line(["restic", "version"]),
            "borg": first_line(["borg", "--version"]),
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", nargs="?", default="S", choices=["S", "M", "SMALL"])
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--mbit", type=float, default=None,
                    help="the delay proxy's bandwidth cap per direction, all connections together (Mbit/s)")
    ap.add_argument("--repeats", "-n", type=int, default=3)
    ap.add_argument("--tools", default="floor," + ",".join(TOOLS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    ap.add_argument("--keep", action="store_true", help="keep each tool's remote and state dirs")
    ap.add_argument("--root", default=os.environ.get("CSBENCH_ROOT", "/var/tmp/ciphersync-bench"))
    args = ap.parse_args()
    args.tools = [t for t in args.tools.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for t in args.tools:
        if t != "floor" and t not in TOOLS + EXTRA_TOOLS and not re.fullmatch(r"cs-sshfs-c\d+", t):
            sys.exit("unknown tool %s (known: floor,%s, cs-sshfs-cN)"
                     % (t, ",".join(TOOLS + EXTRA_TOOLS)))
    b = Bench(args)

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        b.run()
    finally:
        b.teardown()


if __name__ == "__main__":
    main()
