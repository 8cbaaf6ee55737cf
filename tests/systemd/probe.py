#!/usr/bin/env python3
"""Host-side probes for tests/systemd/run.sh (python3 stdlib only).

The container is seen from the host: its init is host pid INIT, its cgroup
tree is CGROOT (the "payload" cgroup nspawn made, cgroup v2 hierarchy), the
unit U's processes are CGROOT/system.slice/U/cgroup.procs (host pids).

  job-env EVAL.json JOB            shell assignments describing one job
  server-env EVAL.json             shell assignments describing the server
                                   module's accounts (nixos-server.json)
  fuse-now CGROOT PREFIX           FUSE mounts in any mount namespace of the
                                   container, or in the host's below PREFIX
                                   (the container's root); exit 1 if any
  watch CGROOT UNIT SECONDS [--stop-when-busy CMD]
                                   sample every 50 ms while UNIT runs: FUSE
                                   mounts inside the unit's namespace, FUSE
                                   mounts anywhere else (must be none), the
                                   main process's credentials and mounts.
                                   JSON on stdout.
  procs CGROOT                     container processes (pid comm) of the
                                   FUSE/ssh/rsync/ciphersync kind
  flip FILE                        flip one byte in the middle of FILE,
                                   keeping size, atime and mtime
  get FILE KEY.PATH                print a JSON value ("" when missing)
  hardening EVAL.json SERVICE SHOWFILE
                                   compare the module's serviceConfig with
                                   `systemctl show` output; one line per
                                   property, exit 1 on any mismatch
"""

import json
import os
import shlex
import subprocess
import sys
import time

FUSE_TYPES = ("fuse", "fuse.", "fuseblk")


def cg_pids(path):
    pids = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    return pids


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def fuse_mounts(pid):
    """FUSE mounts seen by pid's mount namespace: list of (mountpoint, fstype)."""
    text = read(f"/proc/{pid}/mountinfo")
    if text is None:
        return None
    out = []
    for line in text.splitlines():
        parts = line.split(" - ", 1)
        if len(parts) != 2:
            continue
        fstype = parts[1].split()[0]
        if fstype == "fuse" or fstype.startswith("fuse.") or fstype == "fuseblk":
            out.append((line.split()[4], fstype))
    return out


def in_unit(pid, unit):
    text = read(f"/proc/{pid}/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            return path.endswith("/" + unit) or ("/" + unit + "/") in path
    return False


def mntns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def comm(pid):
    c = read(f"/proc/{pid}/comm")
    return c.strip() if c else "?"


def namespaces_with_fuse(pids):
    """{mntns: (example pid, comm, fuse mounts)} for namespaces of pids with FUSE mounts."""
    seen, found = set(), {}
    for pid in pids:
        ns = mntns(pid)
        if ns is None or ns in seen:
            continue
        seen.add(ns)
        fm = fuse_mounts(pid)
        if fm:
            found[ns] = (pid, comm(pid), fm)
    return found


def host_fuse(prefix):
    """FUSE mounts of the host's namespace below the container's root dir
    (where a mount that escaped the container would show). Other FUSE mounts
    of the host (other tests running on this machine) are not ours."""
    return [(mp, t) for mp, t in (fuse_mounts(os.getpid()) or [])
            if mp == prefix or mp.startswith(prefix.rstrip("/") + "/")]


def cmd_fuse_now(cgroot, prefix):
    found = namespaces_with_fuse(cg_pids(cgroot))
    for ns, (pid, c, fm) in found.items():
        print(f"{ns} pid {pid} ({c}): {fm}")
    hf = host_fuse(prefix)
    if hf:
        print(f"host namespace: {hf}")
    return 1 if found or hf else 0


def status_fields(pid):
    text = read(f"/proc/{pid}/status") or ""
    want = ("Uid", "Gid", "NoNewPrivs", "Seccomp", "Seccomp_filters", "CapBnd", "CapAmb", "CapEff", "CapPrm")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in want:
            out[k] = v.split()[0] if k not in ("Uid", "Gid") else v.split()
    return out


def root_and_rw(pid, paths):
    """Mount options of / and of each path (longest mount prefix) in pid's namespace."""
    text = read(f"/proc/{pid}/mountinfo") or ""
    mounts = []
    for line in text.splitlines():
        f = line.split()
        mounts.append((f[4], f[5].split(",")[0]))
    res = {}
    for p in ["/"] + paths:
        best = max((m for m in mounts if p == m[0] or p.startswith(m[0].rstrip("/") + "/") or m[0] == "/"),
                   key=lambda m: len(m[0]), default=None)
        res[p] = best[1] if best else None
    return res


def cmd_watch(cgroot, unit, seconds, extra):
    unitcg = os.path.join(cgroot, "system.slice", unit)
    rw_paths = extra.get("rw_paths", [])
    stop_cmd = extra.get("stop_when_busy")
    start = time.time()
    deadline = start + seconds
    result = {"samples": 0, "unit_seen": False, "inside": [], "outside": [], "main": None,
              "comms": [], "stopped": False, "timed_out": False}
    inside, outside, comms, uids = set(), set(), set(), {}
    busy_since = None
    while time.time() < deadline:
        upids = set(cg_pids(unitcg)) if os.path.isdir(unitcg) else set()
        if upids:
            result["unit_seen"] = True
        elif result["unit_seen"]:
            break
        elif time.time() > start + extra.get("appear_seconds", seconds):
            # By default the unit may take the whole budget to appear: on a
            # busy machine systemd can take longer than any fixed few
            # seconds to start it (seen: not within 10 s under stress).
            break
        result["samples"] += 1
        allpids = cg_pids(cgroot)
        for pid in upids:
            comms.add(comm(pid))
            st = status_fields(pid)
            if st.get("Uid"):
                uids.setdefault(comm(pid), set()).add(st["Uid"][0])
            fm = fuse_mounts(pid) or []
            for mp, t in fm:
                inside.add(f"{t} {mp}")
            if fm and result["main"] is None and comm(pid) == "ciphersync":
                result["main"] = {"pid": pid, "status": status_fields(pid), "mounts": root_and_rw(pid, rw_paths)}
        # Classify by each process's own cgroup, read now: a process the unit
        # spawned after cg_pids(unitcg) was read is still the unit's.
        others = [p for p in allpids if p not in upids and not in_unit(p, unit)]
        for ns, (pid, c, fm) in namespaces_with_fuse(others).items():
            for mp, t in fm:
                outside.add(f"{t} {mp} (seen by pid {pid} {c})")
        for mp, t in host_fuse(extra.get("host_prefix", "/nonexistent")):
            outside.add(f"{t} {mp} (host namespace)")
        if stop_cmd and not result["stopped"]:
            if inside and "rsync" in comms:
                busy_since = busy_since or time.time()
                if time.time() - busy_since > extra.get("busy_seconds", 0.5):
                    result["stop_rc"] = subprocess.call(stop_cmd, shell=True)
                    result["stopped"] = True
                    result["stopped_at_comms"] = sorted(comms)
        time.sleep(0.05)
    else:
        result["timed_out"] = True
    result["inside"], result["outside"], result["comms"] = sorted(inside), sorted(outside), sorted(comms)
    result["uids"] = {k: sorted(v) for k, v in uids.items()}  # real uid per command
    print(json.dumps(result))
    return 0


INTERESTING = {"ciphersync", "gocryptfs", "sshfs", "rsync", "ssh", "fusermount3", "fusermount", "sftp-server"}


def cmd_procs(cgroot):
    for pid in cg_pids(cgroot):
        c = comm(pid)
        if c in INTERESTING:
            cmdline = (read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
            print(f"{pid} {c} {cmdline}")
    return 0


def cmd_flip(path):
    st = os.stat(path)
    if st.st_size == 0:
        print(f"{path} is empty", file=sys.stderr)
        return 1
    off = st.st_size // 2
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(path)
    assert st2.st_size == st.st_size and st2.st_mtime_ns == st.st_mtime_ns
    return 0


def cmd_get(path, key):
    try:
        with open(path) as f:
            v = json.load(f)
        for k in key.split("."):
            v = v[k]
    except (OSError, ValueError, KeyError, TypeError):
        print("")
        return 0
    print(v if isinstance(v, str) else json.dumps(v))
    return 0


def cmd_job_env(evalfile, job):
    with open(evalfile) as f:
        ev = json.load(f)
    jf = ev["etc"][f"ciphersync/{job}.json"]
    if isinstance(jf, dict) and "text" in jf and set(jf) <= {"text", "mode", "user", "group", "enable", "target"}:
        jf = json.loads(jf["text"])
    t = jf.get("target", {})
    svcs = ev.get("services", {})
    backup = svcs.get(f"ciphersync-{job}-backup", {})
    env = {
        "SOURCE": jf.get("source", ""),
        "PASSWORD_FILE": jf.get("password_file", ""),
        "STATE_DIR": jf.get("state_dir", ""),
        "GOCRYPTFS_CONFIG": jf.get("gocryptfs_config", ""),
        "TARGET_TYPE": t.get("type", ""),
        "TARGET_PATH": t.get("path", ""),
        "TARGET_HOST": t.get("host") or "",
        "TARGET_PORT": str(t.get("port") or 22),
        "TARGET_USER": t.get("user") or "",
        "IDENTITY_FILE": t.get("identity_file") or "",
        "KNOWN_HOSTS_FILE": t.get("known_hosts_file") or "",
        "USER": (backup.get("serviceConfig") or {}).get("User") or "root",
        "ONFAILURE": " ".join(sorted({u for s in svcs.values() if s.get("onFailure") for u in s["onFailure"]})),
        "SERVICES": " ".join(sorted(n for n in svcs if n.startswith(f"ciphersync-{job}-"))),
        "TIMERS": " ".join(sorted(n for n in ev.get("timers", {}) if n.startswith(f"ciphersync-{job}-"))),
        "KNOWN_HOSTS_LINES": "\n".join(ev.get("knownHosts", {}).get(job, []) if isinstance(ev.get("knownHosts"), dict) else []),
    }
    for k, v in env.items():
        print(f"JOB_{k}={shlex.quote(v)}")
    return 0


def _seal_args(spec):
    """The `serve --seal` arguments of a seal service's ExecStart, as
    {flag: value}."""
    words = shlex.split(spec["serviceConfig"]["ExecStart"])
    if words[1:3] != ["serve", "--seal"]:
        raise ValueError(f"not a `serve --seal` ExecStart: {words}")
    args, rest = {}, words[3:]
    while rest:
        args[rest[0]] = rest[1]
        rest = rest[2:]
    return args


def _chroots(sshd_config):
    """Account -> ChrootDirectory of its `Match User` block."""
    out, user = {}, None
    for line in sshd_config.splitlines():
        words = line.split()
        if words[:1] == ["Match"]:
            user = words[2] if words[1:2] == ["User"] and len(words) == 3 else None
        elif words[:1] == ["ChrootDirectory"] and user:
            out[user] = words[1]
    return out


def cmd_server_env(evalfile):
    """SRV_SEALED (the append-only account: the one with a seal service),
    its root, chroot, unit and keep options, its path unit's watched dir
    and its timer's OnCalendar; SRV_PLAIN, another account, its chroot
    (its Match block's ChrootDirectory) and root (the chroot plus its
    ForceCommand's --root, SRV_REMOTE_ROOT, the path its sessions see);
    SRV_ACCOUNTS, every account user."""
    with open(evalfile) as f:
        ev = json.load(f)
    seals = {n: s for n, s in ev.get("services", {}).items() if n.startswith("ciphersync-server-seal-")}
    if len(seals) != 1:
        raise SystemExit(f"want one seal service in {evalfile}, found {sorted(seals)}")
    unit, spec = next(iter(seals.items()))
    seal = _seal_args(spec)
    sealed = seal["--account"]
    accounts = sorted(u for u, s in ev.get("users", {}).items() if isinstance(s.get("shell"), dict))
    plain = [u for u in accounts if u != sealed]
    if sealed not in accounts or not plain:
        raise SystemExit(f"want the sealed account and a plain one among the accounts {accounts}")
    plain_words = shlex.split(ev["users"][plain[0]]["shell"]["text"].strip())
    chroots = _chroots(ev["sshd"]["extraConfig"])
    if sealed not in chroots or plain[0] not in chroots:
        raise SystemExit(f"want a ChrootDirectory for {sealed} and {plain[0]}, found {chroots}")
    remote = plain_words[plain_words.index("--root") + 1]
    if not seal["--root"] == chroots[sealed] + remote:
        raise SystemExit(f"the seal's root {seal['--root']} is not {remote} in the chroot {chroots[sealed]}")
    calendar = ev["timers"][unit]["timerConfig"].get("OnCalendar")
    env = {
        "ACCOUNTS": " ".join(accounts),
        "SEALED": sealed,
        "SEALED_ROOT": seal["--root"],
        "SEALED_UNIT": unit,
        "KEEP_LAST": seal.get("--keep-last", "all"),
        "KEEP_DAYS": seal.get("--keep-days", "all"),
        "WATCHED": ev["paths"][unit]["pathConfig"]["PathChanged"],
        "CALENDAR": "\n".join(calendar if isinstance(calendar, list) else [calendar]),
        "PERSISTENT": "yes" if ev["timers"][unit]["timerConfig"].get("Persistent") else "no",
        "PLAIN": plain[0],
        "PLAIN_ROOT": chroots[plain[0]] + remote,
        "SEALED_CHROOT": chroots[sealed],
        "PLAIN_CHROOT": chroots[plain[0]],
        # The account's dir as its sessions see it (ForceCommand's --root).
        "REMOTE_ROOT": remote,
    }
    for k, v in env.items():
        print(f"SRV_{k}={shlex.quote(v)}")
    return 0


# --- hardening -------------------------------------------------------------

# serviceConfig keys that are not confinement (checked elsewhere or not shown
# in a comparable form by `systemctl show`).
NOT_HARDENING = {"Type", "ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
                 "Environment", "EnvironmentFile", "RestartForceExitStatus", "RestartSec", "Restart",
                 "StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode",
                 "RuntimeDirectoryPreserve", "Nice", "IOSchedulingClass", "CPUSchedulingPolicy",
                 "TimeoutStartSec", "TimeoutStopSec", "SuccessExitStatus", "User", "Group",
                 "WorkingDirectory", "SyslogIdentifier", "LoadCredential", "IOSchedulingPriority", "StandardOutput", "StandardError", "KillMode",
                 "KillSignal", "SendSIGKILL", "FinalKillSignal"}
SHOW_NAME = {"RestartSec": "RestartUSec", "TimeoutStartSec": "TimeoutStartUSec", "TimeoutStopSec": "TimeoutStopUSec"}
CAP_KEYS = {"CapabilityBoundingSet", "AmbientCapabilities"}
SET_KEYS = {"RestrictAddressFamilies", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
            "DeviceAllow", "SupplementaryGroups", "RestartForceExitStatus", "SuccessExitStatus"}
BOOL = {"true": "yes", "false": "no", "yes": "yes", "no": "no", "1": "yes", "0": "no", "on": "yes", "off": "no"}


def norm_scalar(v):
    if v is True:
        return "yes"
    if v is False:
        return "no"
    s = str(v).strip()
    return BOOL.get(s.lower(), s)


def compare(key, want, shown):
    """Return None if `shown` (the systemctl show value) satisfies the module's `want`."""
    wl = want if isinstance(want, list) else [want]
    if key in CAP_KEYS:
        caps = set(shown.lower().split())
        words = " ".join(str(x) for x in wl).split()
        if words and words[0].startswith("~"):
            denied = {w.lstrip("~").lower() for w in words}
            bad = sorted(caps & denied)
            if bad:
                return f"denied capabilities still present: {' '.join(bad)}"
            if not caps:
                return "empty set shown"
            return None
        if caps != {w.lower() for w in words}:
            return f"want {sorted(w.lower() for w in words)} shown {sorted(caps)}"
        return None
    if key == "SystemCallFilter":
        calls = set(shown.split())
        if shown.startswith("~"):
            return f"module sets an allow list, show has a deny list: {shown[:60]}"
        need = {"@mount": {"mount", "umount2"}, "@system-service": {"read", "write", "openat", "execve"}}
        for w in " ".join(str(x) for x in wl).split():
            missing = need.get(w, set()) - calls
            if missing:
                return f"{w}: {sorted(missing)} not allowed (shown {len(calls)} calls)"
        if not calls:
            return "no filter shown"
        return None
    if key == "SystemCallErrorNumber":
        import errno
        num = {str(n): name for n, name in errno.errorcode.items()}
        if num.get(shown, shown).upper() != str(wl[0]).upper():
            return f"want {wl[0]} shown {shown}"
        return None
    if key == "RestrictNamespaces":
        # show prints the namespaces still allowed (empty = all restricted) or
        # the full list when unrestricted.
        w = norm_scalar(wl[0])
        if norm_scalar(shown) in ("yes", "no"):
            return None if norm_scalar(shown) == w else f"want {w} shown {shown}"
        allowed = shown.split()
        if w == "yes" and allowed:
            return f"namespaces still allowed: {shown}"
        if w == "no" and not allowed:
            return "all namespaces restricted"
        return None
    if key in SET_KEYS or len(wl) > 1:
        want_set = {norm_scalar(x) for x in " ".join(str(x) for x in wl).split()} if key != "DeviceAllow" \
            else {" ".join(str(x).split()) for x in wl}
        if key == "DeviceAllow":
            shown_set = {" ".join(x.split()) for x in shown.replace(", ", ",").split(",")} if "," in shown else \
                {" ".join(shown.split()[i:i + 2]) for i in range(0, len(shown.split()), 2)}
        else:
            shown_set = {norm_scalar(x) for x in shown.split()}
        missing = want_set - shown_set
        return f"missing {sorted(missing)} in {shown!r}" if missing else None
    w = norm_scalar(wl[0])
    s = norm_scalar(shown)
    if w == s or w.lower() == s.lower():
        return None
    return f"want {w!r} shown {s!r}"


def cmd_hardening(evalfile, service, showfile):
    with open(evalfile) as f:
        ev = json.load(f)
    sc = ev["services"][service]["serviceConfig"]
    shown = {}
    with open(showfile) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            shown[k] = v
    bad = 0
    for key, want in sc.items():
        if key in NOT_HARDENING or want is None:
            continue
        name = SHOW_NAME.get(key, key)
        if key in CAP_KEYS and name not in shown and not " ".join(str(x) for x in (want if isinstance(want, list) else [want])).split():
            # An empty capability set: systemctl show leaves an empty
            # property out (unless --all), so its absence is the empty set.
            shown[name] = ""
        if name not in shown:
            print(f"MISSING {key}: systemctl show has no such property")
            bad += 1
            continue
        why = compare(key, want, shown[name])
        if why:
            print(f"MISMATCH {key}={want!r}: {why}")
            bad += 1
        else:
            print(f"OK {key}={shown[name][:80]}")
    return 1 if bad else 0


def main(a):
    cmd = a[1] if len(a) > 1 else ""
    if cmd == "job-env":
        return cmd_job_env(a[2], a[3])
    if cmd == "server-env":
        return cmd_server_env(a[2])
    if cmd == "fuse-now":
        return cmd_fuse_now(a[2], a[3])
    if cmd == "watch":
        extra = json.loads(a[5]) if len(a) > 5 else {}
        return cmd_watch(a[2], a[3], float(a[4]), extra)
    if cmd == "procs":
        return cmd_procs(a[2])
    if cmd == "flip":
        return cmd_flip(a[2])
    if cmd == "get":
        return cmd_get(a[2], a[3])
    if cmd == "hardening":
        return cmd_hardening(a[2], a[3], a[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
