#!/usr/bin/env python3
"""Run the testScripts of nix/tests/*.nix unchanged against nspawn machines.

For each test: evaluate the Nix file (nix/eval/vm-nodes.nix: the testScript
exactly as Nix builds it, and what each node's configuration renders), build
one container root per node (an overlay on the cached Debian tree, filled by
nodemap.py), join the nodes on a private network (192.168.1.<n> on eth1, by
node name as the NixOS test framework numbers them, names in /etc/hosts),
and exec the testScript with driver.py's Machine objects bound to the node
names. Called by vmscripts.sh, which builds the tree and the binary.

Output (stdout): "PASS vm-<test>", "FAIL vm-<test>: why" (also when the
script passed but NixOS refuses a node's configuration: nodemap's
refusals), or "SKIP vm-<test>: ..." naming the line that cannot run here and
why; then "N passed, M failed".
Progress and what a node cannot reproduce go to stderr ("# ..."); each
test's log (every command, its exit status and output) to the run dir.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402
import nodemap  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TESTS = ["backup-restore", "server-down", "timers", "home-manager", "server"]
SUBNET = "192.168.1"


# Run first, on backup-restore's nodes: the stand-in itself must be able to
# fail (each wrong outcome below raises), reach the other node by name, and
# keep the host out of reach. Not a testScript of nix/tests.
CONTROL_SCRIPT = """
def raises(what, f):
    try:
        f()
    except Exception as e:
        return e
    raise AssertionError(f"{what} did not raise")


start_all()
client.wait_for_unit("multi-user.target")
server.wait_for_unit("sshd.service")
assert client.succeed("echo a", "echo b") == "a\\nb\\n"
raises("succeed of a failing command", lambda: client.succeed("false"))
raises("succeed of a failing pipeline stage", lambda: client.succeed("false | true"))
raises("succeed with an unset variable", lambda: client.succeed("echo $UNSET_VARIABLE"))
raises("fail of a succeeding command", lambda: client.fail("true"))
raises("wait_until_succeeds past its timeout", lambda: client.wait_until_succeeds("false", timeout=2))
client.succeed("systemctl start --no-block ciphersync-docs-verify.service")
raises("wait_for_unit of a failed unit", lambda: client.wait_for_unit("ciphersync-docs-verify.service"))
raises("wait_for_unit of an inactive unit", lambda: client.wait_for_unit("notify-admin.service", timeout=60))
e = raises("a line the mapping cannot run", lambda: client.succeed("date -s '2031-03-10 03:00:30'; true"))
assert type(e).__name__ == "NotRunnableHere", repr(e)
# `date -s WHEN` alone is mapped (nodemap.CLOCK_JUMP): a jump backwards
# fires nothing, and no clock moves.
before = int(client.succeed("date +%s"))
client.succeed("date -s '2001-01-01 00:00:00'")
assert client.clock_jumps[-1] == ("2001-01-01 00:00:00", []), client.clock_jumps
assert abs(int(client.succeed("date +%s")) - before) < 600
client.clock = None
# CAP_SYS_TIME (bit 25) is not in the commands' capability sets.
eff = int(client.succeed("sed -n 's/^CapEff:\\t//p' /proc/self/status"), 16)
assert not eff >> 25 & 1, hex(eff)
# The container's systemd can give a unit a network namespace of its own
# (PrivateNetwork=, the seal service's): only lo there, not eth1.
assert "eth1" not in client.succeed("systemd-run --quiet --wait --pipe -p PrivateNetwork=yes ip -o link")
client.fail("sh -c 'date -s @0'")
assert client.succeed("hostname").strip() == "client"
client.succeed("getent hosts server")
client.wait_for_open_port(22, "server", timeout=60)
server.wait_for_open_port(22, timeout=60)
raises("wait_for_open_port of a closed port", lambda: client.wait_for_open_port(23, "server", timeout=2))
server.shutdown()
assert not server.is_up()
"""


def note(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def write_keys(run_dir):
    """A stand-in for nixpkgs' nixos/tests/ssh-keys.nix with fresh keys (the
    same attribute names: an ECDSA pair and an ed25519 pair); its directory
    is pkgs.path for the evaluation."""
    d = os.path.join(run_dir, "nixpkgs", "nixos", "tests")
    os.makedirs(d)
    for kind in ("ecdsa", "ed25519"):
        sh("ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "snakeoil", "-f", os.path.join(d, kind))
    with open(os.path.join(d, "ssh-keys.nix"), "w") as f:
        f.write("""# Written by tests/systemd/vmscripts.py: fresh keys in place of nixpkgs' snake-oil keys.
pkgs: let
  pub = f: builtins.replaceStrings ["\\n"] [""] (builtins.readFile f);
in {
  snakeOilPrivateKey = pkgs.writeText "privkey.snakeoil" (builtins.readFile ./ecdsa);
  snakeOilPublicKey = pub ./ecdsa.pub;
  snakeOilEd25519PrivateKey = pkgs.writeText "privkey.snakeoil" (builtins.readFile ./ed25519);
  snakeOilEd25519PublicKey = pub ./ed25519.pub;
}
""")
    return os.path.join(run_dir, "nixpkgs")


def evaluate(test, nixpkgs_lib, nixpkgs_path):
    cp = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", os.path.join(REPO, "nix/eval/vm-nodes.nix"),
         "--arg", "nixpkgsLib", nixpkgs_lib, "--arg", "nixpkgsPath", nixpkgs_path, "--argstr", "test", test],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if cp.returncode != 0:
        err = [line for line in cp.stderr.splitlines() if "nixbld" not in line]
        raise RuntimeError("evaluation failed: " + " | ".join(err[-5:]))
    return json.loads(cp.stdout)


class Network:
    """A private LAN: a bridge in a namespace of its own, each node's
    namespace linked to it by a veth pair (eth1 inside the node, as the
    NixOS test VMs name their test network interface)."""

    def __init__(self, tag, names):
        self.lan = f"{tag}-lan"
        self.netns = {name: f"{tag}-{name}" for name in names}
        self.created = []
        for ns in [self.lan] + list(self.netns.values()):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.lan, "link", "add", "name", "br0", "type", "bridge")
        sh("ip", "-n", self.lan, "link", "set", "br0", "up")
        self.addresses = {}
        for i, name in enumerate(sorted(names), start=1):
            ns = self.netns[name]
            port = f"p{i}"
            sh("ip", "-n", ns, "link", "add", "name", "eth1", "type", "veth", "peer", "name", port, "netns", self.lan)
            sh("ip", "-n", self.lan, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth1")
            sh("ip", "-n", ns, "link", "set", "eth1", "up")
            self.addresses[name] = f"{SUBNET}.{i}"

    def hosts(self):
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{addr} {name}" for name, addr in sorted(self.addresses.items())]
        return "\n".join(lines) + "\n"

    def remove(self):
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def unmount_under(path):
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mp in sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True):
        if subprocess.run(["umount", mp], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)


def make_root(test_dir, name, tree):
    root = os.path.join(test_dir, name, "root")
    upper, work = os.path.join(test_dir, name, "upper"), os.path.join(test_dir, name, "work")
    for d in (root, upper, work):
        os.makedirs(d)
    if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={tree},upperdir={upper},workdir={work}",
                       root], stderr=subprocess.DEVNULL).returncode != 0:
        os.rmdir(root)
        sh("cp", "-a", "--reflink=auto", tree, root)
    return root


def first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""


def run_test(test, args, run_dir, nixpkgs_path, script=None, label=None):
    """Returns (verdict, message): verdict PASS, FAIL or SKIP. `script`
    replaces the test's own (the control run)."""
    label = label or test
    test_dir = os.path.join(run_dir, label)
    os.makedirs(test_dir)
    logfile = open(os.path.join(test_dir, "log"), "w")
    log = driver.Log(logfile)
    try:
        ev = evaluate(test, args.nixpkgs_lib, nixpkgs_path)
    except RuntimeError as e:
        return "FAIL", str(e)
    script = script or ev["testScript"]
    with open(os.path.join(test_dir, "testScript.py"), "w") as f:
        f.write(script)
    names = sorted(ev["nodes"])
    machines, network, refusals = [], None, []
    try:
        network = Network(f"cs{os.getpid() % 100000}{label[:4]}", names)
        for name in names:
            node = ev["nodes"][name]
            root = make_root(test_dir, name, args.tree)
            try:
                notes, refused = nodemap.map_node(name, node, root)
            except Exception as e:  # a mapping error is this test's failure
                return "FAIL", f"node {name}: {e}"
            for n in notes:
                note(f"{label}: {n}")
            refusals += refused
            if nodemap.needs_ciphersync(node):
                dest = os.path.join(root, "usr/local/bin/ciphersync")
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy(args.bin, dest)
                os.chmod(dest, 0o755)
            nodemap.write(root, "/etc/hosts", network.hosts())
            machines.append(driver.Machine(name, root, network.netns[name], test_dir, log,
                                           calendar_timers=nodemap.calendar_timers(node)))
        drv = driver.Driver(machines, log)
        filename = f"<testScript of nix/tests/{test}.nix>" if label == test else f"<{label}>"
        code = compile(script, filename, "exec")
        lines = script.splitlines()
        try:
            exec(code, drv.symbols(), None)
        except driver.NotRunnableHere as e:
            at = driver.script_lines(e, filename)
            where = " -> ".join(f"line {n} `{lines[n - 1].strip()}`" for n in at)
            done = ", ".join(drv.subtests[:-1]) or "none"
            return "SKIP", (f"{where} cannot run here: {e.reason} Ran lines 1-{at[0] - 1} "
                            f"(subtests passed: {done}); lines {at[0]}-{len(lines)} did not run.")
        except Exception as e:  # an assertion or a driver error: the test's failure
            at = driver.script_lines(e, filename)
            where = " -> ".join(f"line {n} `{lines[n - 1].strip()}`" for n in at)
            log("".join(traceback.format_exception(e)))
            sub = f" in subtest '{drv.subtests[-1]}'" if drv.subtests else ""
            return "FAIL", f"{type(e).__name__}: {first_line(str(e)) or '(no message)'}{sub} at {where}"
        for m in machines:  # as the driver does after a script
            if m.is_up():
                m.execute("sync")
        jumps = [f"{m.name} {when} -> {' '.join(units) or 'nothing'}" for m in machines for when, units in m.clock_jumps]
        simulated = f"; clock jumps simulated (nodemap.CLOCK_JUMP): {'; '.join(jumps)}" if jumps else ""
        if refusals:  # the script ran, but NixOS would not build a node
            return "FAIL", (f"the script passed ({len(drv.subtests)} subtests{simulated}), but NixOS refuses "
                            f"the configuration: {'; '.join(refusals)}")
        return "PASS", f"{len(drv.subtests)} subtests{simulated}"
    finally:
        for m in machines:  # each machine's journal, for the log
            if m.is_up() and m.pid:
                with contextlib.suppress(Exception):
                    _, journal = m._run("journalctl -b --no-pager -o short-monotonic", timeout=60)
                    with open(os.path.join(test_dir, f"{m.name}.journal"), "w") as f:
                        f.write(journal)
        for m in machines:
            with contextlib.suppress(Exception):
                m.release()
        for name in names:
            unmount_under(os.path.join(test_dir, name))
        if network:
            network.remove()
        for name in names:
            for sub in ("payload", "supervisor"):
                # what nspawn leaves next to itself on a host without systemd
                for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(base, f"cs-{name}-{os.getpid()}", sub))
        for m in machines:
            for d in ("propagate", "unix-export"):
                shutil.rmtree(f"/run/systemd/nspawn/{d}/{m.machine}", ignore_errors=True)
        logfile.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nixpkgs-lib", required=True)
    ap.add_argument("tests", nargs="*", default=TESTS)
    args = ap.parse_args()
    unknown = set(args.tests) - set(TESTS)
    if unknown:
        ap.error(f"unknown tests {sorted(unknown)}; known: {TESTS}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    had_nspawn_dir = os.path.isdir("/run/systemd/nspawn")
    run_dir = tempfile.mkdtemp(prefix="ciphersync-vmscripts.", dir="/tmp")
    passed = failed = 0
    t0 = time.monotonic()
    try:
        nixpkgs_path = write_keys(run_dir)
        runs = [("backup-restore", CONTROL_SCRIPT, "driver-control")] + [(t, None, t) for t in args.tests]
        for test, script, label in runs:
            t1 = time.monotonic()
            verdict, msg = run_test(test, args, run_dir, nixpkgs_path, script, label)
            note(f"{label}: {time.monotonic() - t1:.0f}s")
            print(f"{verdict} vm-{label}: {msg}" if verdict != "PASS" else f"PASS vm-{label} ({msg})", flush=True)
            passed += verdict == "PASS"
            failed += verdict == "FAIL"
            if verdict != "PASS":
                with open(os.path.join(run_dir, label, "log")) as f:
                    for line in f.read().splitlines()[-25:]:
                        print(f"#   {line}", file=sys.stderr)
    finally:
        if os.environ.get("KEEP") == "1":
            note(f"kept {run_dir}")
        else:
            unmount_under(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
        if not had_nspawn_dir:  # nspawn's state dirs, if they are empty
            for d in ("propagate", "locks", "unix-export", ""):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join("/run/systemd/nspawn", d))
    note(f"total {time.monotonic() - t0:.0f}s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
