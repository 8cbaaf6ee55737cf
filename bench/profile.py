#!/usr/bin/env python3
"""Where ciphersync's time goes, stage by stage (issue 6).

    bench/profile.sh [S|M|SMALL] [--delay-ms MS] [--transport rsync|sshfs]

(profile.sh runs this in a private network namespace.) On the same data set
and throwaway sshd as bench/run.sh, runs init, an initial backup, a no-change
backup, verify twice and verify --deep with `ciphersync --verbose`, and
prints for each stage:
  - every command ciphersync spawned, with the time from one spawn log line
    to the next (the helper's own work between spawns is included in the gap
    before the next line);
  - CPU seconds per process name (utime+stime from /proc, sampled every
    20 ms, so very short processes are under-counted) and peak RSS per name.
Output goes to stdout and to bench/results/profile-<run id>-<transport>.txt;
a profile that docs/benchmarks.md cites is moved into the folder of the run
it explains, the others deleted.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class CpuSampler(threading.Thread):
    def __init__(self, cg):
        super().__init__(daemon=True)
        self.cg, self.stop = cg, threading.Event()
        self.last = {}  # pid -> (comm, cpu_s, hwm_kb)

    def run(self):
        while not self.stop.is_set():
            for pid in self.cg.pids():
                try:
                    stat = open("/proc/%d/stat" % pid).read()
                    comm = stat[stat.index("(") + 1: stat.rindex(")")]
                    fields = stat[stat.rindex(")") + 2:].split()
                    cpu = (int(fields[11]) + int(fields[12])) / TICK
                    hwm = 0
                    for line in open("/proc/%d/status" % pid):
                        if line.startswith("VmHWM:"):
                            hwm = int(line.split()[1])
                    self.last[pid] = (comm, cpu, hwm)
                except (OSError, ValueError):
                    pass
            self.stop.wait(0.02)

    def by_comm(self):
        out = {}
        for comm, cpu, hwm in self.last.values():
            c, h, n = out.get(comm, (0.0, 0, 0))
            out[comm] = (c + cpu, max(h, hwm), n + 1)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("set", nargs="?", default="S")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--transport", default="rsync")
    ap.add_argument("--mbit", type=float, default=0.0, help="the delay proxy's bandwidth cap (bench.py's --mbit)")
    ap.add_argument("--root", default=os.environ.get("CSBENCH_ROOT", "/var/tmp/ciphersync-bench"))
    a = ap.parse_args()
    args = argparse.Namespace(set=a.set, delay_ms=a.delay_ms, repeats=1, tools=[], scenarios=[],
                              timeout=3600, keep=False, root=a.root, mbit=a.mbit)
    b = bench.Bench(args)
    report = []

    def out(line=""):
        print(line, flush=True)
        report.append(line)

    try:
        b.setup_server()
        b.reset_src()
        b.let_data_rest()
        tool = "cs-" + a.transport
        tdir = os.path.join(b.work, "profile-" + tool)
        rdir = os.path.join(b.srv, "profile-" + tool)
        for d in (tdir, rdir):
            subprocess.run(["rm", "-rf", d])
            os.makedirs(d)
        t = bench.CipherSync(b, tool, tdir, rdir)
        stages = [("init", ["init"]), ("backup_initial", ["backup"]), ("backup_nochange", ["backup"]),
                  ("verify_full", ["verify"]), ("verify_nochange", ["verify"]), ("verify_deep", ["verify", "--deep"])]
        out("# ciphersync profile: set %s, transport %s, delay %g ms each way, load %s" % (
            a.set, a.transport, a.delay_ms, open("/proc/loadavg").read().split()[0]))
        for name, cmd in stages:
            argv = [bench.BIN, "-c", t.job, "--verbose"] + cmd + ["--json"]
            sampler = CpuSampler(b.client_cg)
            c0 = b.client_cg.cpu()
            s0 = b.server_cg.cpu()
            sampler.start()
            t0 = time.monotonic()
            p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                 preexec_fn=b.client_cg.join_self, start_new_session=True)
            lines = []

            def read_err():
                for raw in p.stderr:
                    lines.append((time.monotonic() - t0, raw.decode(errors="replace").rstrip()))

            reader = threading.Thread(target=read_err, daemon=True)
            reader.start()
            stdout = p.stdout.read()
            p.wait()
            wall = time.monotonic() - t0
            reader.join(5)
            time.sleep(0.1)
            sampler.stop.set()
            sampler.join()
            c1, s1 = b.client_cg.cpu(), b.server_cg.cpu()
            out()
            out("## %s: %.2f s wall, client CPU %.2f s (user %.2f, sys %.2f), server CPU %.2f s, rc %d" % (
                name, wall, sum(c1) - sum(c0), c1[0] - c0[0], c1[1] - c0[1], sum(s1) - sum(s0), p.returncode))
            out("result: " + stdout.decode(errors="replace").strip()[:400])
            out("spawns (time since start, seconds until the next log line):")
            for i, (ts, line) in enumerate(lines):
                nxt = lines[i + 1][0] if i + 1 < len(lines) else wall
                text = line.replace("ciphersync: debug: ", "")
                if len(text) > 200:
                    text = text[:200] + "…"
                out("  %7.3f  +%6.3f  %s" % (ts, nxt - ts, text))
            out("CPU by process (sampled): " + ", ".join(
                "%s %.2fs (x%d, peak %d MB)" % (k, v[0], v[2], v[1] // 1024)
                for k, v in sorted(sampler.by_comm().items(), key=lambda kv: -kv[1][0])))
    finally:
        b.teardown()
        path = os.path.join(bench.BENCH, "results", "profile-%s-%s.txt" % (b.run_id, a.transport))
        with open(path, "w") as f:
            f.write("\n".join(report) + "\n")
        print("written: %s" % path, file=sys.stderr)


if __name__ == "__main__":
    main()
