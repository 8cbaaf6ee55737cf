#!/usr/bin/env bash
# Every .nix file is formatted by alejandra at the version nixpkgs 26.05
# ships (the flake's `formatter`, `nix fmt`). crates.io publishes no
# alejandra binary (its `alejandra` crate is the 3.1.0 library) and Debian
# has none, so this is a maintainer's check, not part of scripts/test.sh:
# ALEJANDRA names a binary built from the upstream tag (nix/eval/README.md),
# or one on PATH. Exit 2 when there is none.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
alejandra_version=4.0.0
if [ -z "${ALEJANDRA:-}" ] && command -v alejandra >/dev/null &&
    [ "$(alejandra --version 2>/dev/null)" = "Alejandra $alejandra_version" ]; then
    ALEJANDRA=$(command -v alejandra)
fi
if [ -z "${ALEJANDRA:-}" ]; then
    echo "nix/eval/format.sh: no alejandra $alejandra_version on PATH; set ALEJANDRA=/path/to/alejandra (see nix/eval/README.md)" >&2
    exit 2
elif ! have=$("$ALEJANDRA" --version 2>&1) || [ "$have" != "Alejandra $alejandra_version" ]; then
    echo "FAIL formatting: ALEJANDRA=$ALEJANDRA is '${have:-not runnable}', want Alejandra $alejandra_version" >&2
    exit 1
elif out=$("$ALEJANDRA" --check -- "${files[@]}" 2>&1); then
    echo "ok formatting: ${#files[@]} .nix files as alejandra $alejandra_version formats them"
else
    echo "FAIL formatting: not as alejandra $alejandra_version formats them (run: nix fmt, or \$ALEJANDRA on them):" >&2
    grep -F 'Requires formatting' <<<"$out" >&2 || echo "$out" >&2
    exit 1
fi
