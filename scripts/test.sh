#!/usr/bin/env bash
# The whole test suite: installs what is missing, then
#   1. cargo test: unit tests and the end-to-end tests (real gocryptfs,
#      sshfs, rsync and an sshd on 127.0.0.1),
#   2. nix/eval/check.sh: every .nix file parses; the modules evaluate when
#      NIXPKGS_LIB points at nixpkgs' lib (skipped with a reason otherwise),
#   3. tests/systemd/run.sh: the NixOS module's units under a real systemd
#      (systemd-nspawn).
# With CI=true a test that lacks a tool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --test

failed=()
run() {
  echo "==> $*"
  if ! "$@"; then failed+=("$*"); fi
}

run cargo test --locked
run nix/eval/check.sh
run tests/systemd/run.sh

echo
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test suites passed"
