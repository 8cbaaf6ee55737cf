#!/usr/bin/env bash
# The demo: installs what is missing, builds ciphersync, starts a throwaway
# sshd on 127.0.0.1 as the "SFTP server", and runs a real backup, verify,
# deep verify and restore of a sample tree; prints the status at the end.
# Everything lives in one temp dir, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked -q
bin="$PWD/target/release/ciphersync"

demo=$(mktemp -d /tmp/ciphersync-demo.XXXXXX)
sshd_pid=""
cleanup() {
  [[ -n "$sshd_pid" ]] && kill "$sshd_pid" 2>/dev/null || true
  # ciphersync unmounts on every way out; this only guards against surprises.
  grep -o " ${demo}[^ ]*" /proc/self/mounts 2>/dev/null | xargs -r -n1 fusermount3 -uz 2>/dev/null || true
  rm -rf "$demo"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a sample source tree in $demo/source"
mkdir -p "$demo/source/projects/notes" "$demo/source/empty dir" "$demo/server/backup"
echo "the plan for next year" > "$demo/source/projects/plan.txt"
echo "ünïcödé names work too" > "$demo/source/projects/notes/grüße.txt"
head -c 3000000 /dev/urandom > "$demo/source/projects/photo.raw"
ln -s plan.txt "$demo/source/projects/latest"
printf '#!/bin/sh\necho hi\n' > "$demo/source/run.sh" && chmod 755 "$demo/source/run.sh"

step "a throwaway sshd on 127.0.0.1 (the SFTP server; its files are in $demo/server)"
ssh-keygen -q -t ed25519 -N '' -f "$demo/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$demo/client_key"
cp "$demo/client_key.pub" "$demo/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$demo/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $demo/host_key
AuthorizedKeysFile $demo/authorized_keys
PidFile $demo/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
Subsystem sftp internal-sftp
LogLevel ERROR
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$demo/sshd_config" 2>"$demo/sshd.log" &
sshd_pid=$!
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$demo/host_key.pub")" > "$demo/known_hosts"

step "the job file ($demo/docs.json) and a password file"
head -c 24 /dev/urandom | base64 > "$demo/password" && chmod 600 "$demo/password"
cat > "$demo/docs.json" <<JOB
{
  "version": 1,
  "name": "docs",
  "source": "$demo/source",
  "password_file": "$demo/password",
  "gocryptfs_config": "$demo/state/gocryptfs.reverse.conf",
  "target": { "type": "sftp", "host": "127.0.0.1", "port": $port, "user": "$(id -un)",
              "path": "$demo/server/backup", "identity_file": "$demo/client_key",
              "known_hosts_file": "$demo/known_hosts" },
  "state_dir": "$demo/state",
  "runtime_dir": "$demo/run"
}
JOB
cat "$demo/docs.json"
cs() { echo "\$ ciphersync -c docs.json $*"; "$bin" -c "$demo/docs.json" "$@"; }

step "init: create the gocryptfs reverse config"
cs init
step "backup: rsync the encrypted view to the server (over sshfs)"
cs backup
step "what the server holds: only ciphertext"
find "$demo/server/backup" -maxdepth 3 | sed "s|$demo/server/||" | head -20
step "change a file, back up again: the old version goes to snapshots/"
echo "the revised plan" > "$demo/source/projects/plan.txt"
cs backup
ls "$demo/server/backup/snapshots"
step "verify: local encrypted sha1s against sha1s computed on the server"
cs verify
step "verify --deep: decrypt the encrypted view and compare with the source"
cs verify --deep
step "restore everything into an empty directory"
cs restore --to "$demo/restored"
diff -r "$demo/source" "$demo/restored" && echo "restored tree is identical to the source"
step "snapshots: every run can be rebuilt exactly"
cs snapshots
first=$(ls "$demo/server/backup/records" | head -1); first=${first%.rec}
cs restore --snapshot "$first" --to "$demo/restored-first" projects/plan.txt
echo "plan.txt as of $first: $(cat "$demo/restored-first/projects/plan.txt")"
step "status"
cs status
echo
echo "demo finished: backup, verify, deep verify and restore all succeeded"
