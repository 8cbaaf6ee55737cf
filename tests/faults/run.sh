#!/bin/sh
# The fault and security suite (issue 5) and its report, in one command:
#   tests/faults/run.sh
# Runs the six suites without stopping at the first failure, then renders
# docs/reliability.md from target/reliability/*.jsonl. Exit status: cargo's.
set -u
cd "$(dirname "$0")/../.." || exit 1
target="${CARGO_TARGET_DIR:-target}"
rm -rf "$target/reliability"
cargo test --no-fail-fast --test e2e_faults --test e2e_security --test e2e_cli \
  --test e2e_hostile_target --test e2e_possession --test e2e_hostile_config "$@"
status=$?
python3 tests/faults/report.py
exit $status
