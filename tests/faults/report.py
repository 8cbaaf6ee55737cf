#!/usr/bin/env python3
"""Render docs/reliability.md from the suite's JSON lines.

Every scenario of tests/e2e_cli.rs, tests/e2e_security.rs,
tests/e2e_faults.rs and the hostile-target suites (e2e_hostile_target, e2e_possession, e2e_hostile_config)
appends one line to target/reliability/<suite>.jsonl
(tests/faults/support.rs). The latest line per (suite, scenario) counts.

    python3 tests/faults/report.py [REPORT_DIR] [OUTPUT]
"""
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
report_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "reliability")
output = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs", "reliability.md")

SUITES = [
    ("faults", "Faults survived (tests/e2e_faults.rs)"),
    ("security", "Security (tests/e2e_security.rs)"),
    ("hostile", "A hostile target (tests/e2e_hostile_target.rs, e2e_possession.rs, e2e_hostile_config.rs)"),
    ("cli", "Bad input and fuzzing (tests/e2e_cli.rs)"),
]

latest = {}
for suite, _ in SUITES:
    path = os.path.join(report_dir, f"{suite}.jsonl")
    if not os.path.exists(path):
        continue
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            key = (d.get("suite", suite), d.get("scenario", "?"))
            if key not in latest or d.get("at", 0) >= latest[key].get("at", 0):
                latest[key] = d


def cell(text):
    text = str(text).replace("\n", " ").replace("|", "\\|")
    return text


rows = sorted(latest.values(), key=lambda d: (d.get("suite", ""), d.get("at", 0)))
faults = [d for d in rows if d.get("kind") == "fault"]
survived = sum(1 for d in faults if d.get("survived", d.get("passed")))
bad_inputs = sum(int(d.get("inputs", 0)) for d in rows if d.get("kind") in ("cli", "fuzz", "security"))
data_lost = sum(int(d.get("data_lost", 0)) for d in rows)
passed = sum(1 for d in rows if d.get("passed"))
untestable = sum(1 for d in rows if d.get("kind") == "untestable")
last = max((d.get("at", 0) for d in rows), default=0)
when = datetime.datetime.fromtimestamp(last, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if last else "never"

out = []
out.append("# ciphersync reliability report\n")
out.append("Written by the suite's report step; do not edit by hand. Produce it with\n")
out.append("```sh\ntests/faults/run.sh          # cargo test (6 suites, --no-fail-fast) + this report\n```\n")
out.append("or, after the tests ran, `python3 tests/faults/report.py`. The suites need root")
out.append("(network namespaces, tmpfs, FUSE) and gocryptfs, sshfs, rsync, OpenSSH.\n")
out.append(f"Last run: {when}.\n")
out.append("## Totals\n")
out.append(f"- scenarios: {len(rows)} ({passed} passed, {len(rows) - passed - untestable} failed, {untestable} not testable here)")
out.append(f"- faults survived: {survived} of {len(faults)} (bounded time, outcome failed/interrupted, no mount, lock free, nothing lost, next run and verify ok); "
           f"{sum(1 for d in faults if d.get('passed'))} of them also passed every check (one-line error naming the cause)")
out.append(f"- bad inputs tried (argument lists, job files, fuzz inputs, restore paths): {bad_inputs}")
out.append(f"- data lost: {data_lost} files of the previous good state\n")
for suite, title in SUITES:
    sel = [d for d in rows if d.get("suite") == suite]
    if not sel:
        continue
    out.append(f"## {title}\n")
    out.append("| scenario | expected | observed | result | s |")
    out.append("|---|---|---|---|---|")
    for d in sel:
        result = "pass" if d.get("passed") else ("**FAIL** (survived; see observed)" if d.get("survived") else "**FAIL**")
        if d.get("kind") == "untestable":
            result = "n/a (not testable here)"
        if d.get("inputs"):
            result += f" ({d['inputs']} inputs)"
        out.append(
            f"| {cell(d.get('scenario'))} | {cell(d.get('expected', ''))} | {cell(d.get('observed', ''))} "
            f"| {result} | {d.get('seconds', '')} |"
        )
    out.append("")
os.makedirs(os.path.dirname(output), exist_ok=True)
with open(output, "w", encoding="utf-8") as f:
    f.write("\n".join(out) + "\n")
print(f"wrote {output}: {len(rows)} scenarios, {survived}/{len(faults)} faults survived, "
      f"{bad_inputs} bad inputs, data lost {data_lost}")
