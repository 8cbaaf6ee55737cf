#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every suite, even
# after one fails, and ends with one summary line per suite and a total:
#   1. cargo test, one test target at a time: the unit tests and the
#      end-to-end tests (real gocryptfs, sshfs, rsync and an sshd on
#      127.0.0.1);
#   2. nix/eval/check.sh: every .nix file parses; the modules evaluate when
#      NIXPKGS_LIB points at nixpkgs' lib (skipped with a reason otherwise);
#   3. tests/systemd/run.sh: the NixOS module's units under a real systemd
#      (systemd-nspawn).
# A test that lacks a tool fails with CI=true; elsewhere it is counted and
# listed as skipped, never as passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

./scripts/install-deps.sh --test || exit 1

logs=$(mktemp -d "${TMPDIR:-/tmp}/ciphersync-test.XXXXXX")
summary=() # "name<TAB>passed<TAB>failed<TAB>skipped<TAB>note"
skip_lines=()

# Sums libtest's "test result:" lines of one cargo run.
libtest_counts() { # log -> "passed failed"
  awk '/^test result:/ { for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
       END { print p + 0, f + 0 }' "$1"
}

# One cargo test target. libtest reports a test that returned early for a
# missing tool as "ok": require_tools logs it to CIPHERSYNC_TEST_SKIP_LOG,
# and here it moves from passed to skipped.
cargo_suite() { # name, cargo test selection...
  local name=$1 log="$logs/$1.log" skips="$logs/$1.skips" rc=0
  shift
  echo "==> cargo test $*"
  : >"$skips"
  CIPHERSYNC_TEST_SKIP_LOG=$skips cargo test --locked "$@" 2>&1 | tee "$log" || rc=$?
  local passed failed skipped note=""
  read -r passed failed < <(libtest_counts "$log")
  skipped=$(wc -l <"$skips")
  passed=$((passed - skipped))
  if ((rc != 0 && failed == 0)); then
    failed=1 note="cargo exited $rc before any test failed (build error?)"
  fi
  while IFS=$'\t' read -r test reason; do
    skip_lines+=("$name: $test: $reason")
  done <"$skips"
  summary+=("$name"$'\t'"$passed"$'\t'"$failed"$'\t'"$skipped"$'\t'"$note")
}

# A script suite: counted from its "N passed, M failed" line (systemd), else
# from its "ok ..." and "FAIL ..." lines (nix); each "SKIP ..." line is a
# skipped part, listed with its reason.
script_suite() { # name, command...
  local name=$1 log="$logs/$1.log" rc=0
  shift
  echo "==> $*"
  "$@" 2>&1 | tee "$log" || rc=$?
  local passed failed skipped note=""
  read -r passed failed < <(awk '
      /^[0-9]+ passed, [0-9]+ failed$/ { p = $1; f = $3; counted = 1 }
      /^ok / { ok++ } /^FAIL / { bad++ }
      END { if (counted) print p + 0, f + 0; else print ok + 0, bad + 0 }' "$log")
  skipped=$(grep -c '^SKIP ' "$log")
  while IFS= read -r line; do skip_lines+=("$name: ${line#SKIP }"); done < <(grep '^SKIP ' "$log")
  if ((rc != 0 && failed == 0)); then failed=1 note="exited $rc"; fi
  summary+=("$name"$'\t'"$passed"$'\t'"$failed"$'\t'"$skipped"$'\t'"$note")
}

echo "==> cargo build --tests"
if ! cargo test --locked --no-run; then
  summary+=("build"$'\t'0$'\t'1$'\t'0$'\t'"the crate or its tests do not compile")
else
  cargo_suite unit --lib --bins
  cargo_suite doc --doc
  for t in tests/*.rs; do
    t=$(basename "$t" .rs)
    cargo_suite "$t" --test "$t"
  done
fi
script_suite nix-eval nix/eval/check.sh
script_suite systemd tests/systemd/run.sh
script_suite vm-scripts tests/systemd/vmscripts.sh

echo
echo "Summary (logs in $logs):"
total_p=0 total_f=0 total_s=0
for row in "${summary[@]}"; do
  IFS=$'\t' read -r name p f s note <<<"$row"
  printf '  %-22s %s passed, %s failed, %s skipped%s\n' "$name:" "$p" "$f" "$s" "${note:+ ($note)}"
  total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
done
if ((${#skip_lines[@]})); then
  echo "Skipped:"
  printf '  %s\n' "${skip_lines[@]}"
fi
echo "total: $total_p passed, $total_f failed, $total_s skipped"
((total_f == 0))
