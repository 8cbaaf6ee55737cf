#!/usr/bin/env python3
"""Runs the VM tests' no_fuse_mounts helper (nix/tests/common.nix, as the
Nix evaluation renders it) against fabricated /proc trees.

A stand-in machine runs each command the helper gives it with bash, after
replacing "/proc/" with the fabricated tree, and with a `pgrep` that finds
nothing: so only the mount half of the helper is judged here. The helper
must pass on a clean tree and raise when a FUSE mount is in the test
shell's namespace or only in another process's (a unit with PrivateMounts=).

Usage: leak_check_test.py HELPERS.py
"""
import os
import subprocess
import sys
import tempfile

ROOT_MOUNTS = [
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
    "/dev/vda / ext4 rw,relatime 0 0",
    "fusectl /sys/fs/fuse/connections fusectl rw,nosuid,nodev,noexec,relatime 0 0",
]
ROOT_MOUNTINFO = [
    "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    "23 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw",
    "24 1 0:40 / /sys/fs/fuse/connections rw,relatime shared:13 - fusectl fusectl rw",
]
FUSE_MOUNTINFO = "301 290 0:52 / /run/ciphersync/docs/crypt ro,nosuid,nodev,relatime - fuse.gocryptfs /srv/docs ro,user_id=0,group_id=0"
FUSE_MOUNTS = "/srv/docs /run/ciphersync/docs/crypt fuse.gocryptfs ro,nosuid,nodev,relatime,user_id=0,group_id=0 0 0"


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class StandIn:
    def __init__(self, proc, bindir):
        self.proc, self.bindir = proc, bindir

    def _run(self, command):
        # The driver's shell options (nixos/lib/test-driver: execute()).
        command = "set -euo pipefail; " + command.replace("/proc/", self.proc + "/")
        env = dict(os.environ, PATH=self.bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)

    def succeed(self, *commands):
        out = ""
        for c in commands:
            r = self._run(c)
            if r.returncode != 0:
                raise Exception(f"command `{c}` failed (exit code {r.returncode})")
            out += r.stdout
        return out

    def fail(self, *commands):
        out = ""
        for c in commands:
            r = self._run(c)
            if r.returncode == 0:
                raise Exception(f"command `{c}` unexpectedly succeeded")
            out += r.stdout
        return out


def main():
    helpers = open(sys.argv[1]).read()
    ns = {}
    exec(compile(helpers, "nix/tests/common.nix:pythonHelpers", "exec"), ns)
    no_fuse_mounts = ns["no_fuse_mounts"]
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        bindir = os.path.join(tmp, "bin")
        write(os.path.join(bindir, "pgrep"), ["#!/bin/sh", "exit 1"])
        os.chmod(os.path.join(bindir, "pgrep"), 0o755)
        cases = {
            # name: (mounts of the shell, {pid: mountinfo}, leak expected)
            "clean": (ROOT_MOUNTS, {1: ROOT_MOUNTINFO, 812: ROOT_MOUNTINFO}, False),
            "in the shell's namespace": (ROOT_MOUNTS + [FUSE_MOUNTS], {1: ROOT_MOUNTINFO + [FUSE_MOUNTINFO]}, True),
            "only in a unit's private namespace": (ROOT_MOUNTS, {1: ROOT_MOUNTINFO, 812: ROOT_MOUNTINFO + [FUSE_MOUNTINFO]}, True),
            # Found in the first file of many (more than a pipe holds after
            # it): a reader piped into `grep -q` dies of SIGPIPE, which
            # pipefail turns into a failed command.
            "first of many namespaces": (ROOT_MOUNTS, {1: ROOT_MOUNTINFO + [FUSE_MOUNTINFO],
                                                       **{p: ROOT_MOUNTINFO * 20 for p in range(2, 400)}}, True),
        }
        for i, (name, (mounts, infos, leak)) in enumerate(cases.items()):
            proc = os.path.join(tmp, f"proc{i}")
            write(os.path.join(proc, "mounts"), mounts)
            for pid, info in infos.items():
                write(os.path.join(proc, str(pid), "mountinfo"), info)
            try:
                no_fuse_mounts(StandIn(proc, bindir))
                raised = False
            except Exception:
                raised = True
            if raised != leak:
                bad.append(f"{name}: " + ("reported a leak that is not there" if raised else "did not see the mount"))
    if bad:
        print("; ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
