#!/usr/bin/env python3
"""Before/after table of two benchmark runs (same set and link), in markdown.

    bench/compare.py BEFORE.jsonl AFTER.jsonl [SCENARIO ...]

For every tool and scenario both runs measured: wall time as median and
range (min–max over the repeats) before and after, the ratio of the
medians, and each run's ratio to restic of the same run (restic runs in
both, so its own drift shows how much the machine's load moved). stdlib
only; bench/report.py writes the full report of the newest run.
"""
import json
import statistics
import sys

DEFAULT = ["backup_initial", "backup_nochange", "backup_changed", "restore_full"]


def walls(path):
    """{(tool, scenario): [wall seconds of each successful repeat]}, the run id."""
    out, run_id = {}, None
    for line in open(path):
        rec = json.loads(line)
        if rec.get("scenario") == "meta":
            run_id = rec.get("run_id")
            continue
        if rec.get("rc") == 0 and "wall_s" in rec:
            out.setdefault((rec["tool"], rec["scenario"]), []).append(rec["wall_s"])
    return out, run_id


def fmt(values):
    med = statistics.median(values)
    if len(values) == 1:
        return "%.2f" % med
    return "%.2f (%.2f–%.2f)" % (med, min(values), max(values))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    (before, id_b), (after, id_a) = walls(argv[0]), walls(argv[1])
    scenarios = argv[2:] or DEFAULT
    print("| tool | scenario | before s (`%s`) | after s (`%s`) | after/before | × restic before | × restic after |" % (
        id_b, id_a))
    print("|---|---|---:|---:|---:|---:|---:|")
    tools = sorted({t for t, _ in before} & {t for t, _ in after})
    for sc in scenarios:
        for tool in tools:
            b, a = before.get((tool, sc)), after.get((tool, sc))
            if not b or not a:
                continue
            rb, ra = before.get(("restic", sc)), after.get(("restic", sc))
            mb, ma = statistics.median(b), statistics.median(a)
            print("| %s | %s | %s | %s | %.2f× | %s | %s |" % (
                tool, sc, fmt(b), fmt(a), ma / mb,
                "%.2f×" % (mb / statistics.median(rb)) if rb else "–",
                "%.2f×" % (ma / statistics.median(ra)) if ra else "–"))


if __name__ == "__main__":
    main(sys.argv[1:])
