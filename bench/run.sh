#!/usr/bin/env bash
# ciphersync benchmark (issue 6): one command.
#
#   bench/run.sh [S|M|SMALL] [--delay-ms MS] [--mbit MBIT] [-n REPEATS] [--tools LIST] [--scenarios LIST]
#
#   S      2,000 files, ~150 MB (the quick run, a few minutes)   -- default
#   M      20,000 files in ~500 dirs, log-normal 1 KB..2 MB, ~1.5 GB
#   SMALL  200,000 files of 0..4 KB
#   --delay-ms 10   a userspace proxy (bench/delayproxy.py) in front of sshd
#                   adds 10 ms each way: a 20 ms round trip
#   --mbit 100      the proxy also caps each direction at 100 Mbit/s, all
#                   connections together (a token bucket; python3
#                   bench/test_delayproxy.py checks order, delay and cap)
#   --tools         default floor,cs-sshfs,cs-rsync,seed,restic,borg;
#                   cs-sshfs-c8 is the sshfs transport with target.connections 8;
#                   cs-sftponly the sshfs transport to an account that sshd
#                   allows SFTP only (internal-sftp forced for its key)
#   --scenarios     default: all (backups always run)
#
# Data sets are generated once from a fixed seed under $CSBENCH_ROOT
# (default /var/tmp/ciphersync-bench) and reused. Results are appended as
# JSON lines to bench/results/<date>-<set>-d<delay>[-<cap>mbit][-connections][-N]/<run id>.jsonl,
# a folder per run; then
#   bench/report.py             rewrites docs/benchmarks.md and the PNG plot.
# Commit only the run folders docs/benchmarks.md cites.
# The run happens in a private network namespace (unshare -n): loopback
# byte counters then count only the benchmark's own traffic, and no port is
# visible outside. Needs root (FUSE mounts, cgroups, unshare).
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=S
if [[ $# -gt 0 && "$1" != -* ]]; then set_name=$1; shift; fi
case $set_name in S|M|SMALL) ;; *) echo "usage: bench/run.sh [S|M|SMALL] [options]" >&2; exit 2 ;; esac
root=${CSBENCH_ROOT:-/var/tmp/ciphersync-bench}
export CSBENCH_ROOT=$root

need=()
for t in gocryptfs sshfs rsync restic borg /usr/bin/time /usr/sbin/sshd unshare ip python3; do
  command -v "$t" >/dev/null || need+=("$t")
done
if ((${#need[@]})); then
  echo "missing: ${need[*]} -- apt-get install gocryptfs sshfs rsync restic borgbackup time openssh-server iproute2" >&2
  exit 1
fi
# CSBENCH_BIN=/path/to/ciphersync skips the build and uses that binary
[[ -n "${CSBENCH_BIN:-}" ]] || cargo build --release --locked -q
mkdir -p "$root/data"
avail=$(df -Pk "$root" | awk 'NR==2 {print $4}')
echo "bench: $root has $((avail / 1024 / 1024)) GB free" >&2
python3 bench/gen.py create "$set_name" "$root/data/$set_name"
exec unshare -n -- bash -c 'ip link set lo up && CSBENCH_NETNS=1 exec python3 bench/bench.py "$@"' bench "$set_name" "$@"
