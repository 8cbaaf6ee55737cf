"""The unit files nixpkgs' systemd-lib.nix renders (eval.nix -A real-units,
with NIXPKGS): every serviceConfig/timerConfig setting must appear as a
`Key=value` line, one per list element. Prints the number of units."""
import json
import sys

units_by_job = json.load(open(sys.argv[1]))
problems = []
count = 0
for units in units_by_job.values():
    for unit, u in units.items():
        count += 1
        lines = u["text"].splitlines()
        section = "[Service]" if unit.endswith(".service") else "[Timer]"
        if section not in lines:
            problems.append(f"{unit}: no {section}")
        for key, value in u["serviceConfig"].items():
            for v in value if isinstance(value, list) else [value]:
                v = {True: "true", False: "false"}.get(v, v) if isinstance(v, bool) else v
                if f"{key}={v}" not in lines:
                    problems.append(f"{unit}: no line {key}={v}")
if count == 0:
    problems.append("no units rendered")
if problems:
    sys.exit("\n".join(problems))
print(count)
