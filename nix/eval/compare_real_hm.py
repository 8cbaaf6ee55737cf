#!/usr/bin/env python3
"""Compares what the home-manager module renders under home-manager's own
modules (real-hm.nix) with what it renders under the stub
(nix/eval/expected/hm-music.json), and the cases with the stub's outcomes.

home-manager's unit type stores some values as lists (a scalar becomes a
one-element list) and adds keys of its own (Documentation, X-Restart-
Triggers, X-Reload-Triggers, X-SwitchMethod) that are empty or null when
the module sets nothing: both render to the same unit file, so they are
normalised here; any other difference fails.

Usage: compare_real_hm.py REAL.json EXPECTED-HM-MUSIC.json EXPECTED-ASSERTIONS.json
"""
import json
import sys


def as_list(v):
    return v if isinstance(v, list) else [v]


def compare_units(kind, real, stub, bad):
    if sorted(real) != sorted(stub):
        bad.append(f"{kind}: units {sorted(real)} vs stub {sorted(stub)}")
        return
    for unit in real:
        r, s = real[unit], stub[unit]
        for section in sorted(set(r) | set(s)):
            rs, ss = r.get(section, {}), s.get(section, {})
            for key in sorted(set(rs) | set(ss)):
                where = f"{kind}.{unit}.{section}.{key}"
                if key not in ss:
                    if rs[key] not in ([], None):
                        bad.append(f"{where}: home-manager has {rs[key]!r}, the stub nothing")
                elif key not in rs:
                    bad.append(f"{where}: missing under home-manager (stub: {ss[key]!r})")
                elif as_list(rs[key]) != as_list(ss[key]):
                    bad.append(f"{where}: home-manager {rs[key]!r}, stub {ss[key]!r}")


def main():
    real = json.load(open(sys.argv[1]))
    stub = json.load(open(sys.argv[2]))
    stub_cases = json.load(open(sys.argv[3]))
    bad = []
    music = real["hm-music"]
    compare_units("services", music["services"], stub["services"], bad)
    compare_units("timers", music["timers"], stub["timers"], bad)
    if music["configFile"] != stub["configFile"]:
        bad.append(f"configFile differs: {json.dumps(music['configFile'], sort_keys=True)}")
    if music["packages"] != stub["packages"]:
        bad.append(f"packages: {music['packages']} vs {stub['packages']}")
    want = {
        "valid-music": "ok",
        "hm-sftp-without-knownHosts": stub_cases["hm-sftp-without-knownHosts"],
        "unknown-option": "rejected",
        "local-and-sftp-at-once": "rejected",
    }
    for name, outcome in want.items():
        if real["cases"].get(name) != outcome:
            bad.append(f"case {name}: {real['cases'].get(name)!r}, want {outcome!r}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
