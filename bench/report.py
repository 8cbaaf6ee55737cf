#!/usr/bin/env python3
"""Turn bench/results/<run folder>/*.jsonl into docs/benchmarks.md and docs/benchmarks-*.png.

    bench/report.py [--keep-plots] [RESULTS.jsonl ...]

bench/run.sh writes each run into a folder of its own,
bench/results/<date>-<set>-d<delay>[-connections][-N]/<run id>.jsonl; the
folders kept in the repository are the runs docs/benchmarks.md cites.
Without arguments it takes, for every (data set, delay, bandwidth cap), the newest run
in those folders, and the newest `target.connections` run. Tables give the
median and the minimum of the repeats; ratios are of medians.
bench/analysis.md (hand-written: the analysis of those figures) is appended
to the document as it is.

The plots need matplotlib. Without it a plot is left out, unless
--keep-plots is given: then an existing docs/benchmarks-*.png is linked as
it is (use it only when the runs it was drawn from are the ones reported).
"""
import glob
import re
import json
import os
import statistics
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # Debian's matplotlib lives in the system python
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    plt = None

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
DOC = os.path.join(REPO, "docs", "benchmarks.md")
TOOLS = ["cs-sshfs", "cs-rsync", "cs-sftponly", "seed", "restic", "borg"]
LABEL = {"cs-sshfs": "ciphersync (sshfs)", "cs-rsync": "ciphersync (rsync)",
         "cs-sftponly": "ciphersync (sshfs, SFTP-only account)", "seed": "seed pipeline",
         "restic": "restic (sftp:)", "borg": "borg (ssh://)", "floor": "floor: cat via gocryptfs -reverse",
         "floor_ssh": "floor + ssh: the same cat piped through ssh"}
# What ciphersync starts (and the trace wrapper's perl), by process name.
HELPER_CHILDREN = {"gocryptfs", "gocryptfs-xray", "sshfs", "ssh", "rsync", "fusermount3", "fusermount",
                   "time", "perl", "bash", "sh", "sha1sum", "getfacl", "setfacl", "getfattr", "setfattr", "perf"}
MAIN_COMM = {"cs-sshfs": "ciphersync", "cs-rsync": "ciphersync", "cs-sftponly": "ciphersync",
             "restic": "restic", "borg": "borg"}
SCENARIOS = [
    ("backup_initial", "Initial backup"),
    ("backup_nochange", "Backup, nothing changed"),
    ("backup_changed", "Backup after 1% changed, 100 added, 100 deleted"),
    ("verify_full", "Fast restore test, first run (ciphersync verify; seed sha1sum compare; restic check --read-data; borg check --verify-data)"),
    ("verify_nochange", "Fast restore test again, nothing changed since the last one"),
    ("verify_deep", "Deep test (ciphersync verify --deep: decrypt and compare with the source)"),
    ("restore_full", "Full restore (then checked equal to the source)"),
    ("restore_one", "Restore of one file (the middle of the sorted file list), checked equal"),
    ("restore_dir", "Restore of that file's directory, checked equal"),
]


def load(paths):
    recs = []
    for p in paths:
        for line in open(p):
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


SCALING = re.compile(r"cs-sshfs-c(\d+)$")


def is_scaling_run(recs):
    """A run of only `cs-sshfs-cN` tools: target.connections side by side."""
    tools = {r["tool"] for r in recs if r.get("scenario") != "meta" and "tool" in r}
    return bool(tools) and all(SCALING.match(t) for t in tools)


def result_files():
    """Every run's JSON lines, oldest first (a run id starts with its UTC time)."""
    return sorted(glob.glob(os.path.join(BENCH, "results", "*", "*.jsonl")), key=os.path.basename)


def pick_runs():
    files = result_files()
    newest = {}
    for f in files:
        recs = load([f])
        meta = next((r for r in recs if r.get("scenario") == "meta"), None)
        if not meta or is_scaling_run(recs):
            continue
        m = meta["meta"]
        newest[(m["set"], m["delay_ms"], m.get("mbit") or 0)] = f  # files sort by time
    return [newest[k] for k in sorted(newest, key=lambda k: (k[1], k[2], k[0]))]


def pick_scaling():
    files = result_files()
    runs = [f for f in files if is_scaling_run(load([f]))]
    return runs[-1] if runs else None


def scaling_section(path, reference):
    """The sshfs transport with 1..N connections (rsync workers), and the
    newest full run at the same delay for restic and the default (4)."""
    recs = load([path])
    meta_r = next(r for r in recs if r.get("scenario") == "meta")
    meta, summary = meta_r["meta"], summarise(recs)
    ref = summarise(load([reference])) if reference else {}
    delay = meta["delay_ms"]
    rows = sorted({int(SCALING.match(t).group(1)) for t, _ in summary})
    if not rows:
        return []
    scen = [("backup_initial", "initial backup"), ("backup_nochange", "no-change backup"),
            ("backup_changed", "backup after changes"), ("restore_full", "full restore")]
    out = ["## sshfs transport: `target.connections` at %g ms RTT" % (2 * delay), "",
           "Run `%s` (`%s`, %s, binary %s): the sshfs transport with 1 to %d connections "
           "(rsync workers over disjoint top-level directories, sshfs `max_conns` the same), "
           "set %s, one repeat. The default (4) and restic come from the newest full run at "
           "this delay%s." % (meta_r["run_id"], os.path.relpath(path, REPO), meta["date"],
                              meta["versions"].get("ciphersync_commit", "?"), rows[-1], meta["set"],
                              " (`%s`)" % os.path.relpath(reference, REPO) if reference else " (none)"), "",
           "| tool | " + " | ".join(t for _, t in scen) + " |",
           "|---|" + "---:|" * len(scen)]

    def cells(summ, tool):
        return " | ".join(fmt_s((summ.get((tool, sc)) or {}).get("wall_med")) + " s" for sc, _ in scen)

    lines = [(n, "ciphersync sshfs, connections %d" % n, cells(summary, "cs-sshfs-c%d" % n)) for n in rows]
    if ("cs-sshfs", "backup_initial") in ref:
        lines.append((4, "ciphersync sshfs, connections 4 (default)", cells(ref, "cs-sshfs")))
    lines.sort(key=lambda l: l[0])
    out += ["| %s | %s |" % (label, c) for _, label, c in lines]
    for tool in ("cs-rsync", "restic"):
        if (tool, "backup_initial") in ref:
            out.append("| %s | %s |" % (LABEL[tool], cells(ref, tool)))
    return out + [""]


def fleet_section():
    """The newest bench/serve_fleet.py run (bench/results/*-fleet/*.json):
    N clients against one `ciphersync serve` server."""
    runs = sorted(glob.glob(os.path.join(BENCH, "results", "*-fleet", "*.json")), key=os.path.basename)
    if not runs:
        return []
    import serve_fleet
    path = runs[-1]
    with open(path) as f:
        doc = json.load(f)
    m = doc["machine"]
    sizes = sorted({r["clients"] for r in doc["results"]})
    return [
        "## A fleet against one storage server (`ciphersync serve`)", "",
        "Run `%s` (`%s`, binary %s): `bench/serve_fleet.py --clients %s`. One sshd on 127.0.0.1, one "
        "account per client whose ForceCommand is `ciphersync serve --quota %s` (so every write-capable "
        "request measures the account dir); each client a job of its own (`transport: \"rsync\"`, its "
        "own gocryptfs key) backing up the same generated tree, %d files, about %d MB; all clients "
        "started at once. *initial*: into an empty account; *nochange*: again, nothing changed. "
        "Server CPU per client: user+sys of the account's processes (sshd's session processes, serve, "
        "rsync, sftp-server), each moved into a cgroup of the account's as it appears; peak RSS: the "
        "largest sampled (0.1 s) sum of their VmRSS. *Unattributed*: sshd's listener and the "
        "pre-authentication handshakes, before sshd knows the account. Machine: %d CPUs (%s), %.1f GB "
        "RAM, Linux %s, shared with other work: load average (1, 5, 15 min) %s before the run, %s after (the fleet's "
        "own processes included). Clients and server share the CPUs, so the wall times are of the whole; repeats are separate rows." % (
            os.path.basename(path)[:-5], os.path.relpath(path, REPO), doc.get("commit", "?"),
            ",".join(str(n) for n in sizes), doc.get("quota", "?"), doc["files"], doc["mb"],
            m["cpus"], m["cpu"], m["mem_gb"], m["kernel"],
            " ".join("%.1f" % x for x in m.get("loadavg_before", [])),
            " ".join("%.1f" % x for x in m.get("loadavg_after", []))), "",
        serve_fleet.table(doc["results"]), "",
    ]


def fmt_s(x):
    if x is None:
        return "–"
    return "%.2f" % x if x < 10 else "%.1f" % x


def fmt_b(n):
    if n is None:
        return "–"
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1024 or unit == "GB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0


def ratio(a, b):
    if a is None or not b:
        return "–"
    return "%.2f×" % (a / b)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mn(xs):
    xs = [x for x in xs if x is not None]
    return min(xs) if xs else None


def summarise(recs):
    """(tool, scenario) -> dict of medians/mins over successful repeats."""
    out = {}
    groups = {}
    # A run with CSBENCH_BIN names the helper's process after that file
    # (e.g. "cs-255757a"), not "ciphersync".
    binaries = set()
    for r in recs:
        path = ((r.get("meta") or {}).get("versions") or {}).get("ciphersync_binary") or ""
        if path:
            binaries.add(os.path.basename(path.split(" ")[0])[:15])
    for r in recs:
        if r.get("scenario") in ("meta", "restore_check", "init"):
            continue
        groups.setdefault((r["tool"], r["scenario"]), []).append(r)
    for key, rs in groups.items():
        ok = [r for r in rs if r["rc"] == 0]
        comm = MAIN_COMM.get(key[0])

        def rss(r):
            peaks = r.get("peak_rss_kb") or {}
            # the kernel keeps 15 characters of a name: "ciphersync-3469" etc.
            names = ([comm[:15]] if comm else []) + (sorted(binaries) if comm == "ciphersync" else [])
            mine = [v for k, v in peaks.items() if any(k.startswith(n) for n in names)]
            if mine:
                return max(mine)
            if comm == "ciphersync":
                # Run through a wrapper (CSBENCH_BIN=trace.sh): the helper
                # has the name of the binary the wrapper ran; it is what is
                # left once the tools it starts are set aside.
                rest = [v for k, v in peaks.items() if k not in HELPER_CHILDREN]
                if rest:
                    return max(rest)
            return max(list(peaks.values()) + [r.get("maxrss_kb") or 0]) or None

        out[key] = {
            "n": len(rs), "ok": len(ok), "failed": [r.get("stderr_tail", "")[-200:] for r in rs if r["rc"] != 0],
            "wall_med": med([r["wall_s"] for r in ok]), "wall_min": mn([r["wall_s"] for r in ok]),
            "cpu_med": med([r["cpu_client_s"] for r in ok]), "srv_med": med([r["cpu_server_s"] for r in ok]),
            "rss_med": med([rss(r) for r in ok]), "rss_max_all": max([rss(r) or 0 for r in rs]) or None, "wire_med": med([r.get("wire_bytes") for r in ok]),
            "hashed": med([(r.get("stats") or {}).get("hashed") for r in ok]),
            "transferred": med([(r.get("stats") or {}).get("transferred") for r in ok]),
        }
    return out


def restore_checks(recs):
    res = {}
    for r in recs:
        if r.get("scenario") == "restore_check":
            res.setdefault(r["tool"], []).append(r["equal"])
    return res


def table(summary, sc, floor):
    lines = [
        "| tool | median s | min s | × seed | × restic | × borg | CPU s (client) | CPU s (server) | peak RSS | wire |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {t: (summary.get((t, sc)) or {}).get("wall_med") for t in ("seed", "restic", "borg")}
    for t in TOOLS:
        s = summary.get((t, sc))
        if not s:
            continue
        w = s["wall_med"]
        extra = ""
        if s["failed"]:
            extra = " (%d of %d runs exited non-zero)" % (len(s["failed"]), s["n"])
        if t.startswith("cs") and sc.startswith("verify") and s["hashed"] is not None:
            extra += " (hashed locally: %d)" % s["hashed"]
        lines.append("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            LABEL[t], extra, fmt_s(w), fmt_s(s["wall_min"]),
            ratio(w, base["seed"]) if t != "seed" else "1.00×", ratio(w, base["restic"]),
            ratio(w, base["borg"]), fmt_s(s["cpu_med"]), fmt_s(s["srv_med"]),
            fmt_b(s["rss_med"] * 1024) if s["rss_med"] else "–", fmt_b(s["wire_med"])))
    if sc == "backup_initial" and floor:
        lines.append("| *%s* | %s | %s | | | | %s | | | |" % (
            LABEL["floor"], fmt_s(floor["wall_med"]), fmt_s(floor["wall_min"]), fmt_s(floor["cpu_med"])))
        pipe = summary.get(("floor", "floor_ssh"))
        if pipe:
            lines.append("| *%s* | %s | %s | | | | %s | %s | | %s |" % (
                LABEL["floor_ssh"], fmt_s(pipe["wall_med"]), fmt_s(pipe["wall_min"]), fmt_s(pipe["cpu_med"]),
                fmt_s(pipe["srv_med"]), fmt_b(pipe["wire_med"])))
    return "\n".join(lines)


def targets(summary, floor, delay, set_name=None):
    def w(t, sc):
        return (summary.get((t, sc)) or {}).get("wall_med")

    def wmin(t, sc):
        return (summary.get((t, sc)) or {}).get("wall_min")

    rows = []

    def row(name, value, goal, ok):
        rows.append("| %s | %s | %s | %s |" % (name, value, goal, "met" if ok else "**not met**"))

    for t in ("cs-sshfs", "cs-rsync"):
        v, s = w(t, "verify_nochange"), w("seed", "verify_nochange")
        if v and s:
            row("verify, no change (%s) vs seed compare" % LABEL[t], "%.1f× faster (%s s vs %s s)" % (s / v, fmt_s(v), fmt_s(s)), "≥ 5× faster", s / v >= 5)
        v, s, r = w(t, "backup_nochange"), w("seed", "backup_nochange"), w("restic", "backup_nochange")
        if v and s and r:
            row("no-change backup (%s)" % LABEL[t], "%s s; %.2f× seed, %.2f× restic" % (fmt_s(v), v / s, v / r), "≤ 1× seed and ≤ 0.5× restic", v <= s and v <= r / 2)
    v = w("cs-rsync", "backup_initial")
    if v and floor and floor.get("wall_med"):
        f = floor["wall_med"]
        row("initial backup, rsync transport, vs cat floor", "%.2f× (%s s vs %s s; min %.2f×)" % (
            v / f, fmt_s(v), fmt_s(f), wmin("cs-rsync", "backup_initial") / floor["wall_min"]), "≤ 1.3×", v / f <= 1.3)
        pipe = w("floor", "floor_ssh")
        if pipe:
            rows.append("| *for reference: the floor piped through ssh, vs cat floor* | %.2f× (%s s) | | |" % (
                pipe / f, fmt_s(pipe)))
    if delay:
        # issue 14: every stage over a distant link, against restic in the
        # same run; the backup goals are the sshfs transport's (the rsync
        # transport's is to be no slower than before), restore's every one's
        sshfs, every = ("cs-sshfs", "cs-sftponly"), ("cs-sshfs", "cs-rsync", "cs-sftponly")
        goals = [("backup_initial", "initial backup", 1.0, sshfs), ("backup_nochange", "no-change backup", 0.5, sshfs),
                 ("backup_changed", "backup after the 1 % change", 1.0, sshfs),
                 ("restore_full", "full restore", 1.0, every)]
        for sc, name, goal, tools in goals:
            for t in tools:
                v, r = w(t, sc), w("restic", sc)
                if v and r:
                    row("%s at %g ms RTT (%s) vs restic" % (name, 2 * delay, LABEL[t]),
                        "%.2f× (%s s vs %s s)" % (v / r, fmt_s(v), fmt_s(r)), "≤ %g×" % goal, v <= goal * r)
    if set_name == "SMALL":
        for t in ("cs-sshfs", "cs-rsync", "cs-sftponly"):
            # every run counts here, also one that failed or found a mismatch
            peaks = [(sc, d["rss_max_all"]) for (tt, sc), d in summary.items() if tt == t and d["rss_max_all"]]
            if peaks:
                sc, kb = max(peaks, key=lambda p: p[1])
                row("peak RSS of ciphersync itself on SMALL (%s)" % LABEL[t], "%.1f MB (in %s)" % (kb / 1024, sc),
                    "< 64 MB", kb < 64 * 1024)
    if not rows:
        return ""
    return "| target (issues 6, 14) | measured (medians) | goal | |\n|---|---|---|---|\n" + "\n".join(rows)


def plot(summary, floor, title, path):
    if plt is None:
        return False
    scs = [s for s, _ in SCENARIOS]
    tools = [t for t in TOOLS if any((t, s) in summary for s in scs)]
    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=110)
    width = 0.8 / max(1, len(tools))
    colors = {"cs-sshfs": "#1f77b4", "cs-rsync": "#17becf", "cs-sftponly": "#9467bd", "seed": "#7f7f7f", "restic": "#ff7f0e", "borg": "#2ca02c"}
    for i, t in enumerate(tools):
        xs, ys, lo = [], [], []
        for j, s in enumerate(scs):
            d = summary.get((t, s))
            if d and d["wall_med"] is not None:
                xs.append(j + (i - (len(tools) - 1) / 2) * width)
                ys.append(d["wall_med"])
                lo.append(d["wall_med"] - d["wall_min"])
        ax.bar(xs, ys, width, label=LABEL[t], color=colors.get(t), yerr=[lo, [0] * len(lo)], capsize=2)
    if floor and floor.get("wall_med"):
        ax.axhline(floor["wall_med"], color="red", linestyle="--", linewidth=1, label=LABEL["floor"])
    ax.set_xticks(range(len(scs)))
    ax.set_xticklabels([s.replace("_", "\n") for s in scs])
    ax.set_ylabel("wall time, s (median; whisker down to min)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main():
    args = sys.argv[1:]
    keep_plots = "--keep-plots" in args
    args = [a for a in args if a != "--keep-plots"]
    paths = args or pick_runs()
    plots_written = {}
    if not paths:
        sys.exit("no results in bench/results/*/; run bench/run.sh first")
    out = ["# Benchmarks", "",
           "Generated by `bench/report.py` from `bench/results/<run>/*.jsonl` (written by `bench/run.sh`; "
           "one folder per run, and only the runs cited here are kept). "
           "Do not edit by hand: the analysis section comes from `bench/analysis.md`.", "",
           "## How to run", "",
           "```sh",
           "bench/run.sh                 # data set S (2,000 files, ~150 MB), 3 repeats, all tools",
           "bench/run.sh S --delay-ms 10 -n 1   # through a proxy adding 10 ms each way (20 ms RTT)",
           "bench/run.sh S --delay-ms 10 --mbit 100 -n 1   # the same link capped at 100 Mbit/s each way (python3 bench/test_delayproxy.py checks the proxy)",
           "bench/run.sh M               # 20,000 files in ~500 dirs, log-normal 1 KB..2 MB, ~1.5 GB",
           "bench/run.sh SMALL           # 200,000 files of 0..4 KB (ciphersync's RSS target)",
           "bench/run.sh SMALL --tools cs-rsync --scenarios verify_nochange -n 1   # just one tool",
           "bench/report.py              # rewrite this file and the plots from the newest runs",
           "bench/profile.sh S           # ciphersync --verbose, stage by stage: every spawn timed, CPU per process",
           "bench/sshmux.sh 10           # cost of a fresh ssh connection vs one over a ControlMaster",
           "bench/sshfs-workers.sh 10    # SFTP-only servers: 1, 4, 8 rsync workers over sshfs at 20 ms RTT",
           "bench/serve_fleet.py         # 1 and 20 clients at once against one `ciphersync serve` sshd (~4 min)",
           "CSBENCH_BIN=/path/ciphersync bench/run.sh   # measure that binary instead of building target/release",
           "```", "",
           "On this (busy) 2-CPU machine: `S` takes about 3 minutes per repeat (9 for the default 3); "
           "`S --delay-ms 10 -n 1` about an hour, nearly all of it the two sshfs pipelines (ciphersync's sshfs transport and the seed: ≈ 14 minutes each for the initial backup alone); `SMALL` for ciphersync "
           "alone about 7 minutes (generating the 200,000 files once: 40 s); `M -n 1 --tools "
           "cs-rsync,cs-sshfs,restic` about 6 minutes (generating the 1.5 GB once: 20 s).", "",
           "Needs root (FUSE, cgroups, `unshare -n`), gocryptfs, sshfs, rsync, openssh-server, restic, "
           "borgbackup, time (`/usr/bin/time`), iproute2; python3-matplotlib for the plots. "
           "Data sets are generated once from a fixed seed (`bench/gen.py`) under "
           "`/var/tmp/ciphersync-bench` and reused. Each tool gets a fresh copy of the source "
           "(`cp -a`), a fresh empty remote, then: init (not reported), initial backup, "
           "no-change backup, mutation (`gen.py mutate`: 1% of the files rewritten, 100 deleted, "
           "100 added), backup, fast restore test twice, deep test (ciphersync only), full restore "
           "into an empty directory, compared file by file (content, mode) with the source.", "",
           "What is measured: **wall** time of the command; **CPU** of everything it started "
           "(a cpuacct cgroup, so the gocryptfs and sshfs daemons count) and, separately, of "
           "the server (sshd, sftp-server, rsync/sha1sum/borg serve on the server side); "
           "**peak RSS** of the tool's own process (VmHWM sampled every 50 ms; for the seed "
           "pipeline the largest process); **wire** = bytes on the loopback interface of the "
           "benchmark's private network namespace (TCP payload and headers, both directions; "
           "halved behind the delay proxy, which is crossed twice). The seed pipeline is "
           "`bench/seed.sh`; ssh uses its default cipher there and for restic and borg, "
           "ciphersync prefers AES-GCM. The throwaway sshd sets `SHLVL=1` for its sessions so that bash does "
           "not source the account's `~/.bashrc` for remote commands (on this machine it runs `pyenv init`, "
           "about 0.5 s per command under load; a backup account would not have it). restic and borg back up the plaintext source with "
           "their default settings (borg `--encryption=repokey`, lz4). Everything runs on one "
           "machine: client and server share the 2 CPUs, and the data set sits in the page "
           "cache (warm runs).", ""]
    for path in paths:
        recs = load([path])
        meta_r = next(r for r in recs if r.get("scenario") == "meta")
        meta = meta_r["meta"]
        summary = summarise(recs)
        floor = summary.get(("floor", "floor_cat"))
        checks = restore_checks(recs)
        loads = [r for r in recs if r.get("scenario") == "meta"]
        delay = meta["delay_ms"]
        mbit = meta.get("mbit")
        name = "%s%s%s" % (meta["set"], ", %g ms each way (%g ms RTT)" % (delay, 2 * delay) if delay else ", no added delay",
                           ", %g Mbit/s each way" % mbit if mbit else "")
        if meta.get("root_fs", "").startswith("tmpfs"):
            name += ", trees on tmpfs"
        out += ["## Data set %s" % name, ""]
        d = meta["data"]
        out.append("Run `%s` (`%s`), %s, %d repeat(s). Data: %d files in %d dirs, %s sizes, about %s. "
                   "Load average when it started: %s." % (
                       meta_r["run_id"], os.path.relpath(path, REPO), meta["date"], meta["repeats"],
                       d["files"], d["dirs"], d["model"], fmt_b(d["total"]) if d.get("total") else "0–4 KB each",
                       " ".join(meta["loadavg_start"])))
        la = sorted(r["loadavg"] for r in recs if r.get("loadavg") is not None)
        if la:
            out.append("")
            out.append("**Other jobs were running on this %d-CPU machine during the run**: the 1-minute load "
                       "average, sampled after every measurement, was %.1f median (%.1f–%.1f). Timings are "
                       "therefore noisy; the *min* column is the closest to an idle machine, and CPU seconds "
                       "are less affected than wall times." % (meta["nproc"], la[len(la) // 2], la[0], la[-1])
                       if la[len(la) // 2] > 1.0 else "Load average during the run: %.1f median." % la[len(la) // 2])
        out.append("")
        out.append("Machine: %d CPUs, %s (SHA-NI: %s, AES-NI: %s), %.1f GB RAM, Linux %s." % (
            meta["nproc"], meta["cpu"], "yes" if meta["sha_ni"] else "no", "yes" if meta["aes"] else "no",
            meta["ram_gb"], meta["kernel"])
            + (" Every tree of the run (source copy, server, stages, restores) on %s." % meta["root_fs"].split()[0]
               if meta.get("root_fs") else ""))
        out.append("")
        v = meta["versions"]
        if v.get("sshfs", "").startswith("fusermount3"):  # older runs took the wrong line
            import subprocess
            r = subprocess.run(["sshfs", "--version"], capture_output=True, text=True)
            v["sshfs"] = next((l for l in (r.stdout + r.stderr).splitlines() if l.startswith("SSHFS")), v["sshfs"])
        out.append("Versions: " + "; ".join("%s: `%s`" % (k, v) for k, v in meta["versions"].items()) + ".")
        out.append("")
        if "load_note" in meta_r:
            out += [meta_r["load_note"], ""]
        tg = targets(summary, floor, delay, meta["set"])
        if tg:
            out += ["### Targets", "", tg, ""]
        for sc, title in SCENARIOS:
            if not any((t, sc) in summary for t in TOOLS):
                continue
            out += ["### %s" % title, "", table(summary, sc, floor), ""]
        if checks:
            out.append("Restore equals source: " + ", ".join(
                "%s %s" % (LABEL[t], "yes" if all(v) else "**no** (%d of %d)" % (v.count(False), len(v)))
                for t, v in checks.items()) + ".")
            out.append("")
        png = "benchmarks-%s%s%s.png" % (meta["set"], "-d%g" % delay if delay else "", "-%gmbit" % mbit if mbit else "")
        # Several runs of one set and link each get a plot of their own.
        drawn = plots_written.setdefault(png, 0)
        plots_written[png] += 1
        if drawn:
            png = png.replace(".png", "-%d.png" % (drawn + 1))
        png_path = os.path.join(REPO, "docs", png)
        if plot(summary, floor, "ciphersync benchmark, set %s" % name, png_path):
            out += ["![time per scenario per tool, %s](%s)" % (name, png), ""]
        elif keep_plots and os.path.exists(png_path):
            print("matplotlib missing: %s linked as it is, not redrawn" % png, file=sys.stderr)
            out += ["![time per scenario per tool, %s](%s)" % (name, png), ""]
        else:
            print("matplotlib missing: no plot for %s (--keep-plots links the existing one)" % name,
                  file=sys.stderr)
    # The connections run and the fleet run are found on their own, also
    # when the main runs are named on the command line.
    scaling = pick_scaling()
    if scaling:
        delay = next(r for r in load([scaling]) if r.get("scenario") == "meta")["meta"]["delay_ms"]
        same = [p for p in paths if next(r for r in load([p]) if r.get("scenario") == "meta")["meta"]["delay_ms"] == delay]
        out += scaling_section(scaling, same[-1] if same else None)
    out += fleet_section()
    analysis = os.path.join(BENCH, "analysis.md")
    if os.path.exists(analysis):
        out += [open(analysis).read().rstrip(), ""]
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write("\n".join(out))
    print("wrote %s" % DOC, file=sys.stderr)


if __name__ == "__main__":
    main()
