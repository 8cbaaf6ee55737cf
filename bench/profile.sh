#!/usr/bin/env bash
# Stage-by-stage profile of ciphersync (see bench/profile.py):
#   bench/profile.sh [S|M|SMALL] [--delay-ms MS] [--transport rsync|sshfs]
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=S
if [[ $# -gt 0 && "$1" != -* ]]; then set_name=$1; shift; fi
export CSBENCH_ROOT=${CSBENCH_ROOT:-/var/tmp/ciphersync-bench}
# CSBENCH_BIN=/path/to/ciphersync skips the build and uses that binary
[[ -n "${CSBENCH_BIN:-}" ]] || cargo build --release --locked -q
python3 bench/gen.py create "$set_name" "$CSBENCH_ROOT/data/$set_name"
exec unshare -n -- bash -c 'ip link set lo up && CSBENCH_NETNS=1 exec python3 bench/profile.py "$@"' profile "$set_name" "$@"
