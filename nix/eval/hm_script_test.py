#!/usr/bin/env python3
"""The home-manager VM test runs `ciphersync` as alice through `su -`, which
starts no systemd session: no XDG_RUNTIME_DIR. A home-manager job file has
no runtime_dir (nix/eval/expected/hm-music.json), so the helper would exit
2 ("field `runtime_dir` is not set and XDG_RUNTIME_DIR is not set either").

This runs the testScript's definitions (everything before start_all())
with recording stand-ins for the nodes, then calls its as_alice() and
checks that the command it hands to the machine sets XDG_RUNTIME_DIR before
the command runs, and that the job file the module renders indeed has no
runtime_dir (else the check would be moot).

Usage: hm_script_test.py VM-TESTS.json HM-MUSIC.json
"""
import json
import re
import subprocess
import sys


class Stop(Exception):
    pass


class Recorder:
    def __init__(self):
        self.commands = []

    def succeed(self, *commands, **_):
        self.commands.extend(commands)
        return ""

    fail = succeed


def main():
    tests = json.load(open(sys.argv[1]))["tests"]
    job = next(iter(json.load(open(sys.argv[2]))["configFile"].values()))
    if "runtime_dir" in job:
        print("the home-manager job file has a runtime_dir: this check no longer applies")
        sys.exit(1)
    script = tests["home-manager"]["testScript"]
    client = Recorder()

    def start_all():
        raise Stop

    ns = {"client": client, "server": Recorder(), "start_all": start_all}
    try:
        exec(compile(script, "nix/tests/home-manager.nix:testScript", "exec"), ns)
    except Stop:
        pass
    ns["as_alice"]("ciphersync restore music --to ~/restored")
    (command,) = client.commands
    # Run what su would run, with su and the helper stubbed: the helper
    # stand-in prints the XDG_RUNTIME_DIR it is given.
    m = re.fullmatch(r"su - alice -c '(.*)'", command, re.S)
    if not m:
        print(f"as_alice no longer runs `su - alice -c '...'`: {command}")
        sys.exit(1)
    inner = m.group(1)
    out = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c",
         'ciphersync() { echo "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-}"; }; ' + inner],
        capture_output=True, text=True,
    ).stdout
    if not re.search(r"XDG_RUNTIME_DIR=/run/user/\d+", out):
        print(f"ciphersync runs without XDG_RUNTIME_DIR under `{command}` (saw: {out.strip()!r})")
        sys.exit(1)


if __name__ == "__main__":
    main()
