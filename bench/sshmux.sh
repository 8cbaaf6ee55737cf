#!/usr/bin/env bash
# How much a fresh ssh connection costs against one multiplexed over a
# ControlMaster (why ciphersync opens one master connection per stage and
# runs its ssh calls over it). Throwaway sshd on 127.0.0.1 in a private network
# namespace; optional delay proxy:  bench/sshmux.sh [DELAY_MS] [N]
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
if [[ "${CSBENCH_NETNS:-}" != 1 ]]; then
  exec unshare -n -- bash -c 'ip link set lo up && CSBENCH_NETNS=1 exec "$0" "$@"' "$self" "$@"
fi
delay=${1:-0} n=${2:-10}
d=$(mktemp -d /tmp/csbench-mux.XXXXXX)
pids=()
cleanup() {
  ssh -F "$d/cfg" -O exit bench 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$d"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$d/client_key"
cp "$d/client_key.pub" "$d/authorized_keys"
port=2222 pport=2223
printf 'ListenAddress 127.0.0.1\nPort %s\nHostKey %s/host_key\nAuthorizedKeysFile %s/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nLogLevel ERROR\n' \
  $port "$d" "$d" >"$d/sshd_config"
# SHLVL=1 keeps bash from sourcing ~/.bashrc for ssh commands (as bench.py
# does); RC=1 measures with the account's .bashrc instead.
[[ "${RC:-0}" == 1 ]] || echo "SetEnv SHLVL=1" >>"$d/sshd_config"
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" & pids+=($!)
connect=$port
if [[ $delay != 0 ]]; then
  python3 ./delayproxy.py $pport $port "$delay" 2>/dev/null & pids+=($!)
  connect=$pport
fi
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$connect) 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$connect $(cut -d' ' -f1,2 "$d/host_key.pub")" >"$d/known_hosts"
cat >"$d/cfg" <<CFG
Host bench
  HostName 127.0.0.1
  Port $connect
  User $(id -un)
  IdentityFile $d/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $d/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  Ciphers ^aes128-gcm@openssh.com
  ControlPath $d/mux.sock
CFG
t() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
fresh=() mux=()
for _ in $(seq "$n"); do fresh+=("$(t ssh -F "$d/cfg" -o ControlMaster=no -o ControlPath=none bench true)"); done
ssh -F "$d/cfg" -o ControlMaster=yes -o ControlPersist=60 -fN bench
for _ in $(seq "$n"); do mux+=("$(t ssh -F "$d/cfg" bench true)"); done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "delay ${delay} ms each way, $n runs, .bashrc sourced: ${RC:-0}, load $(cut -d' ' -f1 /proc/loadavg):"
echo "  fresh ssh connection per command: median $(med "${fresh[@]}") ms (all: ${fresh[*]})"
echo "  over a ControlMaster:             median $(med "${mux[@]}") ms (all: ${mux[*]})"
