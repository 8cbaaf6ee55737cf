#!/usr/bin/env bash
# SFTP-only servers at a given round trip: how to push the encrypted view
# through sshfs fastest. Copies part of data set S (the first top-level
# directory, ~300 files) through gocryptfs -reverse into an empty remote dir:
#   A  sshfs defaults, one rsync                      (the seed)
#   B  sshfs -o max_conns=4, one rsync                (ciphersync before target.connections)
#   C  sshfs -o max_conns=4, 4 rsyncs on disjoint subtrees (like ciphersync now, connections 4)
#   D  sshfs -o max_conns=8, 8 rsyncs on disjoint subtrees
#   R  rsync over ssh (no sshfs), for reference
#   bench/sshfs-workers.sh [DELAY_MS each way, default 10] [TOP_DIR, default d000]
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
if [[ "${CSBENCH_NETNS:-}" != 1 ]]; then
  exec unshare -n -- bash -c 'ip link set lo up && CSBENCH_NETNS=1 exec "$0" "$@"' "$self" "$@"
fi
delay=${1:-10} top=${2:-d000}
root=${CSBENCH_ROOT:-/var/tmp/ciphersync-bench}
python3 ./gen.py create S "$root/data/S" 2>/dev/null
d=$(mktemp -d /var/tmp/csbench-workers.XXXXXX)
pids=()
cleanup() {
  for m in "$d"/mnt-* "$d/view"; do
    grep -qs " $m fuse" /proc/self/mounts && fusermount3 -uz "$m"
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$d"
}
trap cleanup EXIT
mkdir -p "$d/src" "$d/view" "$d/server"
cp -a "$root/data/S/$top" "$d/src/"
ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$d/client_key"
cp "$d/client_key.pub" "$d/authorized_keys"
port=2222 pport=2223
printf 'ListenAddress 127.0.0.1\nPort %s\nHostKey %s/host_key\nAuthorizedKeysFile %s/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nSubsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\nSetEnv SHLVL=1\nLogLevel ERROR\n' \
  $port "$d" "$d" >"$d/sshd_config"
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" & pids+=($!)
python3 ./delayproxy.py $pport $port "$delay" 2>/dev/null & pids+=($!)
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$pport) 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$pport $(cut -d' ' -f1,2 "$d/host_key.pub")" >"$d/known_hosts"
cat >"$d/cfg" <<CFG
Host bench
  HostName 127.0.0.1
  Port $pport
  User $(id -un)
  IdentityFile $d/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $d/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  Ciphers ^aes128-gcm@openssh.com
CFG
echo pw >"$d/pw"
gocryptfs -q -init -reverse -config "$d/conf" -passfile "$d/pw" "$d/src" >/dev/null 2>&1
gocryptfs -q -nosyslog -reverse -config "$d/conf" -passfile "$d/pw" "$d/src" "$d/view"
files=$(find "$d/view" -type f | wc -l)
bytes=$(du -sb "$d/view" | cut -f1)
echo "set S/$top through gocryptfs -reverse: $files files, $((bytes / 1000000)) MB; ${delay} ms each way; load $(cut -d' ' -f1 /proc/loadavg)"

now() { date +%s.%N; }
# run NAME SSHFS_OPTS WORKERS
run() {
  local name=$1 opts=$2 workers=$3 m="$d/mnt-$1"
  mkdir -p "$m" "$d/server/$name/files"
  # shellcheck disable=SC2086
  sshfs -F "$d/cfg" $opts "bench:$d/server/$name" "$m"
  local t0 t1
  t0=$(now)
  if ((workers == 1)); then
    rsync -a --omit-link-times --no-owner --no-group "$d/view/" "$m/files/"
  else
    # top-level files first (tiny), then the subdirectories dealt round-robin
    rsync -a --omit-link-times --no-owner --no-group --exclude='*/' "$d/view/" "$m/files/"
    find "$d/view" -mindepth 2 -maxdepth 2 -type d -printf '%P\n' | sort >"$d/dirs"
    local i wp=()
    for ((i = 0; i < workers; i++)); do
      awk -v n="$workers" -v i="$i" 'NR % n == i' "$d/dirs" >"$d/dirs.$i"
      (while read -r sub; do
        mkdir -p "$m/files/$sub"
        rsync -a --omit-link-times --no-owner --no-group "$d/view/$sub/" "$m/files/$sub/"
      done <"$d/dirs.$i") &
      wp+=($!)
    done
    wait "${wp[@]}"
  fi
  t1=$(now)
  fusermount3 -u "$m"
  printf '  %-48s %7.1f s\n' "$name ($opts, $workers rsync)" "$(echo "$t1 - $t0" | bc)"
}
run A "-o noatime" 1
run B "-o noatime -o max_conns=4" 1
run C "-o noatime -o max_conns=4" 4
run D "-o noatime -o max_conns=8" 8
mkdir -p "$d/server/R/files"
t0=$(now)
rsync -a -e "ssh -F $d/cfg" "$d/view/" "bench:$d/server/R/files/"
t1=$(now)
printf '  %-48s %7.1f s\n' "R (rsync over ssh, no sshfs)" "$(echo "$t1 - $t0" | bc)"
