#!/usr/bin/env bash
# Run the NixOS module's own units under a real systemd: a debootstrapped
# Debian tree booted with systemd-nspawn --boot. See tests/systemd/README.md.
#
# Output: one line per scenario ("PASS name" / "FAIL name: why") and a final
# line "N passed, M failed"; exit status 1 on any failure. A missing tool is
# a failure with CI=true, else "SKIP systemd tests: <reason>" and exit 0.
#
# Environment:
#   CIPHERSYNC_BIN            binary to test (default: the one cargo builds)
#   CIPHERSYNC_PROFILE        cargo profile when building: debug (default; what
#                             `cargo test` already built) or release
#   CIPHERSYNC_EVAL_DIR       module evaluation (default: nix/eval/expected)
#   CIPHERSYNC_NSPAWN_CACHE   tree cache (default: /var/cache/ciphersync-nspawn)
#   CIPHERSYNC_DEBIAN_MIRROR  Debian mirror (default: the one apt uses)
#   CIPHERSYNC_NSPAWN_SUITE   Debian suite of the container (default: trixie)
#   CIPHERSYNC_BIG_MB         size of the data the stop scenario backs up (200)
#   KEEP=1                    keep the run directory (logs) after the run
#   ONLY=REGEX                run only the scenarios whose name matches
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROBE="python3 $HERE/probe.py"
# trixie: systemd 257. NixOS 26.05 runs systemd >= 257, and bookworm's 252
# refuses the module's units outright (RestartForceExitStatus= on a
# Type=oneshot service is accepted only since systemd 256).
SUITE=${CIPHERSYNC_NSPAWN_SUITE:-trixie}
PACKAGES=systemd,systemd-sysv,dbus,fuse3,gocryptfs,sshfs,rsync,openssh-client,openssh-server,curl
CACHE=${CIPHERSYNC_NSPAWN_CACHE:-/var/cache/ciphersync-nspawn}
TREE=$CACHE/$SUITE
EVAL_DIR=${CIPHERSYNC_EVAL_DIR:-$REPO/nix/eval/expected}
DOCS_EVAL=$EVAL_DIR/nixos-docs.json
PHOTOS_EVAL=$EVAL_DIR/nixos-photos.json
BIG_MB=${CIPHERSYNC_BIG_MB:-200}
# The storage server module's install step and scenarios.
# shellcheck source=tests/systemd/server.sh
. "$HERE/server.sh"
T0=$(date +%s)

skip() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL systemd-tests: $1"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "SKIP systemd tests: $1"
  exit 0
}
note() { echo "# $*" >&2; }

# --- prerequisites ---------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, nspawn, mount)"
for tool in debootstrap systemd-nspawn nsenter python3 flock mknod timeout findmnt; do
  command -v "$tool" >/dev/null || skip "$tool not found (apt-get install debootstrap systemd-container util-linux python3)"
done
[ -c /dev/fuse ] || skip "/dev/fuse missing (no FUSE in this kernel)"
[ -d /sys/fs/cgroup ] || skip "no cgroup file system"
[ -f "$DOCS_EVAL" ] || skip "$DOCS_EVAL missing (the module evaluation, see nix/eval)"

if [ -n "${CIPHERSYNC_BIN:-}" ]; then
  BIN=$CIPHERSYNC_BIN
else
  # The profile `cargo test` already built (a no-op rebuild in scripts/test.sh);
  # what is tested here does not depend on optimisation.
  PROFILE=${CIPHERSYNC_PROFILE:-debug}
  command -v cargo >/dev/null || skip "cargo not found and CIPHERSYNC_BIN not set"
  flag=; [ "$PROFILE" = release ] && flag=--release
  (cd "$REPO" && cargo build --locked --quiet $flag --bin ciphersync) >&2 ||
    { echo "FAIL build: cargo build $flag"; echo "0 passed, 1 failed"; exit 1; }
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/ciphersync
fi
[ -x "$BIN" ] || skip "$BIN is not an executable"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || skip "another run holds $CACHE/lock"

RUN=$(mktemp -d /tmp/ciphersync-nspawn.XXXXXX)
MACHINE=cstest-$$
NSPID='' CPID='' TMPTREE='' CHILD=''
CG2=$(sed -n 's/^0:://p' /proc/self/cgroup)
CG1=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
[ -d /run/systemd/nspawn ] && HAD_NSPAWN_DIR=1 || HAD_NSPAWN_DIR=0

unmount_under() { # unmount every mount at or below $1, deepest first
  local d=$1 m
  [ -n "$d" ] || return 0
  for m in $(awk -v d="$d" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$? i
  set +e
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then # a scenario or debootstrap
    pkill -TERM -P "$CHILD" 2>/dev/null; kill -TERM "$CHILD" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CHILD" 2>/dev/null
  fi
  if [ -n "$NSPID" ] && kill -0 "$NSPID" 2>/dev/null; then
    [ -n "$CPID" ] && timeout 10 nsenter -t "$CPID" -a systemctl poweroff >/dev/null 2>&1
    for i in $(seq 1 100); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$NSPID" 2>/dev/null; then
      kill -TERM "$NSPID" 2>/dev/null; sleep 2; kill -KILL "$NSPID" 2>/dev/null
      [ -n "$CPID" ] && kill -KILL "$CPID" 2>/dev/null
    fi
    wait "$NSPID" 2>/dev/null
  fi
  unmount_under "$RUN"
  [ -n "$TMPTREE" ] && { unmount_under "$TMPTREE"; rm -rf "$TMPTREE"; }
  # The cgroups nspawn made next to ours (host without systemd, --keep-unit).
  for base in "/sys/fs/cgroup/unified$CG2" "/sys/fs/cgroup/systemd$CG1"; do
    for sub in payload supervisor; do
      [ -d "${base%/}/$sub" ] && find "${base%/}/$sub" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  rm -rf "/run/systemd/nspawn/propagate/$MACHINE" "/run/systemd/nspawn/unix-export/$MACHINE" 2>/dev/null
  if [ "$HAD_NSPAWN_DIR" = 0 ]; then
    rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn/unix-export /run/systemd/nspawn 2>/dev/null
  fi
  if [ "${KEEP:-}" = 1 ]; then note "kept $RUN"; else rm -rf "$RUN"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- scenario plumbing -------------------------------------------------------
PASSED=0 FAILED=0
fail() { echo "$*" >"$RUN/why"; exit 1; }
scenario() { # scenario NAME FUNCTION
  local name=$1 fn=$2 rc t0=$SECONDS
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then
    note "$name: not run (ONLY=$ONLY)"
    return 0
  fi
  rm -f "$RUN/why"
  set +e
  # In the background and waited for, so that a signal to this script is
  # acted on at once (bash defers traps while a foreground child runs).
  (
    set -eEuo pipefail
    trap - INT TERM
    trap 'echo "line $LINENO: $BASH_COMMAND (exit $?)" >"$RUN/why"' ERR
    "$fn"
  ) >"$RUN/log.$name" 2>&1 &
  CHILD=$!
  wait $CHILD
  rc=$?
  CHILD=
  set -e
  note "$name: $((SECONDS - t0))s"
  if [ $rc = 0 ]; then
    echo "PASS $name"; PASSED=$((PASSED + 1))
  else
    echo "FAIL $name: $(cat "$RUN/why" 2>/dev/null || tail -1 "$RUN/log.$name")"; FAILED=$((FAILED + 1))
    sed 's/^/#   /' "$RUN/log.$name" | tail -15 >&2
  fi
}
abort() { # a step every scenario needs failed
  echo "FAIL $1"; FAILED=$((FAILED + 1))
  echo "$PASSED passed, $FAILED failed"
  exit 1
}

# The converter's own unit test (no root, no container).
s_units_self_test() { python3 "$HERE/units.py" --self-test; }
scenario units-py-self-test s_units_self_test

# --- the cached tree -------------------------------------------------------
debian_mirror() {
  [ -n "${CIPHERSYNC_DEBIAN_MIRROR:-}" ] && { echo "$CIPHERSYNC_DEBIAN_MIRROR"; return; }
  local m
  m=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(ORIGIN)' 2>/dev/null |
      awk '$2 !~ /-/ && $3 == "Debian" {print $1; exit}')
  [ -z "$m" ] && m=$(grep -rhoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | head -1 | tr -d ' ')
  echo "${m:-http://deb.debian.org/debian}"
}

STAMP="suite=$SUITE variant=minbase include=$PACKAGES"
TB=$(date +%s)
if [ "$(cat "$TREE/.ciphersync-stamp" 2>/dev/null)" != "$STAMP" ]; then
  for old in "$CACHE/$SUITE".tmp.*; do [ -d "$old" ] && { unmount_under "$old"; rm -rf "$old"; }; done
  TMPTREE=$(mktemp -d "$CACHE/$SUITE.tmp.XXXXXX")
  MIRROR=$(debian_mirror)
  note "debootstrap $SUITE from $MIRROR into $TMPTREE"
  mkdir -p "$CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" "$SUITE" "$TMPTREE" "$MIRROR" >"$RUN/debootstrap.log" 2>&1 &
  CHILD=$!
  if ! wait $CHILD; then
    tail -5 "$RUN/debootstrap.log" >&2
    [ "${CI:-}" = true ] || skip "debootstrap failed (no Debian mirror reachable?), see log above"
    abort "debootstrap: $(tail -1 "$RUN/debootstrap.log")"
  fi
  CHILD=
  echo "$STAMP" >"$TMPTREE/.ciphersync-stamp"
  rm -rf "$TREE.old"
  [ -d "$TREE" ] && mv "$TREE" "$TREE.old"
  mv "$TMPTREE" "$TREE"
  TMPTREE=
  rm -rf "$TREE.old"
fi
note "tree ready in $(( $(date +%s) - TB ))s"

# --- the per-run root: an overlay on the cached tree -----------------------
ROOT=$RUN/root
mkdir -p "$ROOT" "$RUN/upper" "$RUN/work"
if mount -t overlay overlay -o "lowerdir=$TREE,upperdir=$RUN/upper,workdir=$RUN/work" "$ROOT" 2>/dev/null; then
  note "root: overlayfs on the cached tree"
else
  note "overlayfs unavailable, copying the tree"
  rmdir "$ROOT"; cp -a --reflink=auto "$TREE" "$ROOT"
fi

# --- install the module's units, the binary and the test fixtures ---------
install -D -m 0755 "$BIN" "$ROOT/usr/local/bin/ciphersync"
python3 "$HERE/units.py" convert "$DOCS_EVAL" --root "$ROOT" --manifest "$RUN/docs.manifest.json" 2>"$RUN/units.err" ||
  abort "units: $(cat "$RUN/units.err")"
HAVE_PHOTOS=0
if [ -f "$PHOTOS_EVAL" ]; then
  python3 "$HERE/units.py" convert "$PHOTOS_EVAL" --root "$ROOT" --manifest "$RUN/photos.manifest.json" 2>"$RUN/units.err" ||
    abort "units: $(cat "$RUN/units.err")"
  HAVE_PHOTOS=1
fi
# The home-manager module's user units, for systemd-analyze --user verify
# (the user manager's search path is not involved: verify takes the files).
HM_EVAL=$EVAL_DIR/hm-music.json
HM_UNITDIR=/etc/ciphersync-test/user-units
HAVE_HM=0
if [ -f "$HM_EVAL" ]; then
  python3 "$HERE/units.py" convert-hm "$HM_EVAL" --root "$ROOT" --unitdir "$HM_UNITDIR" --manifest "$RUN/hm.user-units.json" 2>"$RUN/units.err" ||
    abort "units: $(cat "$RUN/units.err")"
  # The onFailure units the job names are the user's own: a stand-in each,
  # next to the units (verify searches the directories of the files it is given).
  for u in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["onFailure"]))' "$RUN/hm.user-units.json"); do
    printf '[Unit]\nDescription=ciphersync test: onFailure stand-in\n[Service]\nType=oneshot\nExecStart=/bin/true\n' >"$ROOT$HM_UNITDIR/$u"
  done
  HAVE_HM=1
fi
JOBENV=$($PROBE job-env "$DOCS_EVAL" docs 2>&1) || abort "job-env: the docs evaluation lacks what the test needs: $JOBENV"
eval "$JOBENV"

# The onFailure units the module names are the admin's; the test defines
# each one that the module does not: a oneshot that leaves a marker.
for u in $JOB_ONFAILURE; do
  [ -e "$ROOT/etc/systemd/system/$u" ] && continue
  file=$u; case $u in *@*.*) file="${u%%@*}@.${u##*.}" ;; esac
  [ -e "$ROOT/etc/systemd/system/$file" ] && continue
  cat >"$ROOT/etc/systemd/system/$file" <<EOF
[Unit]
Description=ciphersync test: onFailure marker
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/lib/ciphersync-test && date +%%s.%%N >> /var/lib/ciphersync-test/onfailure-%n'
EOF
done
# The port the job names (the test's sshd listens there).
[ "$JOB_TARGET_PORT" = 22 ] || echo "Port $JOB_TARGET_PORT" >>"$ROOT/etc/ssh/sshd_config"
# The server module: after the line above, as its Match blocks end
# sshd_config (NixOS writes extraConfig last).
server_install
# Plaintext with recognisable names and contents.
mkdir -p "$ROOT$JOB_SOURCE/plain-subdir-alpha"
echo "PLAINTEXT-MARKER-docs-1 the quick brown fox" >"$ROOT$JOB_SOURCE/plaintext-name-report.txt"
echo "PLAINTEXT-MARKER-docs-2 jumps over" >"$ROOT$JOB_SOURCE/plain-subdir-alpha/plaintext-name-notes.md"
head -c 200000 /dev/urandom >"$ROOT$JOB_SOURCE/plain-subdir-alpha/plaintext-name-blob.bin"

# /dev/fuse for the container: our own node, 0666 as NixOS makes it
# (programs.fuse), so that chmod inside never touches the host's node.
mknod -m 0666 "$RUN/fuse" c 10 229

# --- boot --------------------------------------------------------------------
TB=$(date +%s)
# A pure cgroup v2 tree inside, as on NixOS (the host may be hybrid).
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --register=no --keep-unit --private-network \
  --bind="$RUN/fuse:/dev/fuse" -D "$ROOT" -M "$MACHINE" --boot --console=pipe \
  </dev/null >"$RUN/console.log" 2>&1 &
NSPID=$!
# The container's PID 1 is the child of nspawn that is pid 1 in its own pid
# namespace ("NSpid: <host pid> 1"); nspawn's short-lived intermediate child
# is not. (60 s: a busy machine only makes the boot slower.)
for _ in $(seq 1 600); do
  CPID=
  for p in $(cat "/proc/$NSPID/task/$NSPID/children" 2>/dev/null); do
    if awk '$1 == "NSpid:" && $NF == 1 && NF == 3 {f = 1} END {exit !f}' "/proc/$p/status" 2>/dev/null; then
      CPID=$p
    fi
  done
  [ -n "$CPID" ] && break
  sleep 0.1
done
[ -n "$CPID" ] || abort "boot: nspawn started no container ($(tail -2 "$RUN/console.log" | tr '\n' ' '))"
c() { timeout "${CT:-120}" nsenter -t "$CPID" -a "$@"; }
state=
for _ in $(seq 1 600); do # until PID 1 answers on its private bus
  state=$(CT=60 c systemctl is-system-running --wait 2>/dev/null || true)
  case $state in running | degraded | maintenance) break ;; esac
  sleep 0.1
done
CGROOT="/sys/fs/cgroup/unified$CG2"; CGROOT="${CGROOT%/}/payload"
CR=/proc/$CPID/root
note "container $MACHINE (pid $CPID) $state in $(( $(date +%s) - TB ))s"
case $state in
  running) ;;
  degraded) note "degraded; failed units: $(c systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | xargs)" ;;
  *) abort "boot: systemd in the container is '${state:-unreachable}' ($(tail -3 "$RUN/console.log" | tr '\n' ' '))" ;;
esac

show() { c systemctl show -p "$2" --value "$1"; }
status_get() { $PROBE get "$CR$1/status.json" "$2"; }
fuse_clean() { # no FUSE mount in any namespace of the container or the host
  local out
  out=$($PROBE fuse-now "$CGROOT" "$RUN") || fail "FUSE mount left: $out"
}
start_unit() { # start_unit UNIT [timeout]: blocking start of a oneshot
  CT=${2:-120} c systemctl start "$1" || true
}
unit_ok() {
  local r
  r=$(show "$1" Result)
  [ "$r" = success ] || fail "$1 Result=$r ExecMainStatus=$(show "$1" ExecMainStatus): $(c journalctl -b -u "$1" --no-pager -n 5 -o cat | tr '\n' '|')"
}

BACKUP=ciphersync-docs-backup.service
VERIFY=ciphersync-docs-verify.service
STATE=$JOB_STATE_DIR

# --- fixtures that need the running container --------------------------------
setup_ssh() {
  local home key
  home=$(c getent passwd "$JOB_TARGET_USER" | cut -d: -f6)
  [ -n "$home" ] || fail "target user $JOB_TARGET_USER does not exist in the container"
  # The password file (under /run, a tmpfs, so only after boot).
  c install -d -m 0700 "$(dirname "$JOB_PASSWORD_FILE")"
  head -c 24 /dev/urandom | base64 >"$CR$JOB_PASSWORD_FILE"
  c chmod 0400 "$JOB_PASSWORD_FILE"
  c install -d -m 0700 "$(dirname "$JOB_IDENTITY_FILE")"
  c rm -f "$JOB_IDENTITY_FILE" "$JOB_IDENTITY_FILE.pub"
  c ssh-keygen -q -t ed25519 -N '' -C ciphersync-test -f "$JOB_IDENTITY_FILE"
  c install -d -m 0700 -o "$JOB_TARGET_USER" "$home/.ssh"
  cp "$CR$JOB_IDENTITY_FILE.pub" "$CR$home/.ssh/authorized_keys"
  c chown "$JOB_TARGET_USER" "$home/.ssh/authorized_keys"
  # Pin the container's real host key at the path the job file names (a
  # store path the module writes; its placeholder key is replaced here).
  key=$(cut -d' ' -f1,2 "$CR/etc/ssh/ssh_host_ed25519_key.pub")
  local pattern=$JOB_TARGET_HOST
  [ "$JOB_TARGET_PORT" = 22 ] || pattern="[$JOB_TARGET_HOST]:$JOB_TARGET_PORT"
  mkdir -p "$(dirname "$CR$JOB_KNOWN_HOSTS_FILE")"
  echo "$pattern $key" >"$CR$JOB_KNOWN_HOSTS_FILE"
  c install -d -m 0755 -o "$JOB_TARGET_USER" "$JOB_TARGET_PATH"
  c systemctl is-active --quiet ssh.service || c systemctl start ssh.service
  # The pinned key and the test key work (the unit's own ssh will too).
  c ssh -o BatchMode=yes -o UserKnownHostsFile="$JOB_KNOWN_HOSTS_FILE" -o StrictHostKeyChecking=yes \
    -i "$JOB_IDENTITY_FILE" -p "$JOB_TARGET_PORT" "$JOB_TARGET_USER@$JOB_TARGET_HOST" true ||
    fail "ssh to the container's sshd with the test key and pinned host key failed"
}
scenario setup-sftp-server setup_ssh

# Every unit the module renders is accepted by this systemd.
s_load() {
  local bad=
  for m in "$RUN"/*.manifest.json; do
    for u in $(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(' '.join([s+'.service' for s in m['services']]+[t+'.timer' for t in m['timers']]+[p+'.path' for p in m.get('paths', [])]))" "$m"); do
      ls=$(show "$u" LoadState)
      if [ "$ls" != loaded ]; then
        # PID 1 logged the reason before journald ran; ask the verifier.
        why=$(c systemd-analyze verify "/etc/systemd/system/$u" 2>&1 | grep -F "$u: " | grep -v "Refusing to start\|Failed to start" | head -1 || true)
        bad="$bad $u=$ls (${why:-$(show "$u" LoadError)});"
      fi
    done
  done
  echo "systemd $(c systemctl --version | head -1)"
  [ -z "$bad" ] || fail "systemd refuses module units:$bad"
}
scenario module-units-load s_load

# systemd's own verifier on every unit file both modules render: the
# system units of every NixOS evaluation, and the home-manager module's
# user units with --user. Any complaint about one of them fails (verify
# also reports what it finds wrong with units they reference). --man=no:
# Documentation= names man pages, which this minimal tree does not have
# (verify would run `man` for each).
s_verify_units() {
  local out rc files m
  files=
  for m in "$RUN"/docs.manifest.json "$RUN"/photos.manifest.json "$RUN"/server.manifest.json; do
    [ -f "$m" ] || continue
    files="$files $(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(' '.join('/etc/systemd/system/'+u+'.'+k for k, c in (('service', 'services'), ('timer', 'timers'), ('path', 'paths')) for u in m.get(c, [])))" "$m")"
  done
  [ -n "${files// /}" ] || fail "no system unit files rendered"
  rc=0; out=$(c systemd-analyze verify --man=no $files 2>&1) || rc=$?
  echo "== systemd-analyze verify (system): rc=$rc"; echo "$out"
  [ "$rc" = 0 ] || fail "systemd-analyze verify exit $rc: $(echo "$out" | head -3 | tr '\n' '|')"
  bad=$(echo "$out" | grep -F ciphersync || true)
  [ -z "$bad" ] || fail "systemd-analyze verify complains: $(echo "$bad" | head -3 | tr '\n' '|')"
  [ "$HAVE_HM" = 1 ] || fail "$HM_EVAL missing (the home-manager module's evaluation)"
  files=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(' '.join(sys.argv[2]+'/'+s+'.service' for s in m['services']) + ' ' + ' '.join(sys.argv[2]+'/'+t+'.timer' for t in m['timers']))" "$RUN/hm.user-units.json" "$HM_UNITDIR")
  # A user manager needs a runtime directory; verify only loads the files.
  c install -d -m 0700 /run/ciphersync-test-xdg
  rc=0; out=$(c env XDG_RUNTIME_DIR=/run/ciphersync-test-xdg systemd-analyze --user verify --man=no $files 2>&1) || rc=$?
  echo "== systemd-analyze --user verify: rc=$rc"; echo "$out"
  [ "$rc" = 0 ] || fail "systemd-analyze --user verify exit $rc: $(echo "$out" | head -3 | tr '\n' '|')"
  bad=$(echo "$out" | grep -F ciphersync || true)
  [ -z "$bad" ] || fail "systemd-analyze --user verify complains: $(echo "$bad" | head -3 | tr '\n' '|')"
  echo "verified: $(echo $files | wc -w) user unit files and the system units above"
  # Control: the same call on a unit with a bad value must complain, or the
  # checks above prove nothing.
  printf '[Service]\nType=bogus\nExecStart=/bin/true\n' >"$CR$HM_UNITDIR/ciphersync-verify-control.service"
  out=$(c env XDG_RUNTIME_DIR=/run/ciphersync-test-xdg systemd-analyze --user verify --man=no "$HM_UNITDIR/ciphersync-verify-control.service" 2>&1 || true)
  rm -f "$CR$HM_UNITDIR/ciphersync-verify-control.service"
  echo "== control: $out"
  echo "$out" | grep -F ciphersync-verify-control | grep -q bogus || fail "systemd-analyze verify did not complain about Type=bogus: $out"
}
scenario units-verify s_verify_units

# --- scenarios ---------------------------------------------------------------
s_backup() {
  start_unit $BACKUP
  unit_ok $BACKUP
  [ "$(show $BACKUP ActiveState)" = inactive ] || fail "ActiveState=$(show $BACKUP ActiveState)"
  c systemctl is-failed --quiet $BACKUP && fail "is-failed says failed"
  [ "$(status_get "$STATE" stages.backup.outcome)" = ok ] ||
    fail "status.json backup outcome: $(status_get "$STATE" stages.backup)"
  [ -f "$CR$JOB_TARGET_PATH/files/gocryptfs.conf" ] || fail "no files/gocryptfs.conf on the remote"
  c journalctl -b -u $BACKUP --no-pager -o cat | grep -q "Finished\|Deactivated successfully" ||
    fail "journal has no successful end of $BACKUP"
  # A first run on a fresh system has nothing "left behind" to clean up (the
  # unit's namespace does hold non-FUSE mounts: systemd's own bind mounts of
  # the RuntimeDirectory/ReadWritePaths, which are not the helper's to touch).
  stale=$(c journalctl -b -u $BACKUP --no-pager -o cat | grep "left behind" | head -1 || true)
  [ -z "$stale" ] || fail "first run on a fresh system cleans up a mount it did not make: '$stale'"
  fuse_clean
}
scenario backup-succeeds s_backup

s_ciphertext() {
  local remote=$CR$JOB_TARGET_PATH hits n
  n=$(find "$remote/files" -type f | wc -l)
  [ "$n" -ge 4 ] || fail "only $n files on the remote"
  hits=$(find "$remote" -iname '*plain*' -o -iname '*report*' -o -iname '*notes*' -o -iname '*alpha*' | head -3)
  [ -z "$hits" ] || fail "plaintext names on the remote: $hits"
  if grep -rlF "PLAINTEXT-MARKER" "$remote" >/dev/null 2>&1; then
    fail "plaintext content on the remote: $(grep -rlF PLAINTEXT-MARKER "$remote" | head -2)"
  fi
  # ... and it is a gocryptfs tree that the plain tool decrypts by hand.
  out=$(CT=60 c systemd-run --quiet --wait --pipe -p PrivateMounts=yes /bin/sh -c \
    "mkdir -p /run/cstest-restore && gocryptfs -q -ro -passfile '$JOB_PASSWORD_FILE' '$JOB_TARGET_PATH/files' /run/cstest-restore && cat /run/cstest-restore/plaintext-name-report.txt; fusermount3 -u /run/cstest-restore" 2>&1) || true
  echo "$out" | grep -q "PLAINTEXT-MARKER-docs-1" || fail "remote files/ does not decrypt by hand with gocryptfs: $out"
  fuse_clean
}
scenario remote-holds-only-ciphertext s_ciphertext

s_nofuse() {
  # New data so the run has work to do, watched every 50 ms while it runs.
  mkdir -p "$CR$JOB_SOURCE/more"
  for i in $(seq 1 20); do head -c 2000000 /dev/urandom >"$CR$JOB_SOURCE/more/f$i"; done
  c systemctl start --no-block $BACKUP
  $PROBE watch "$CGROOT" $BACKUP 300 "{\"host_prefix\": \"$RUN\", \"rw_paths\": [\"$STATE\", \"$JOB_SOURCE\"]}" >"$RUN/watch.json"
  cat "$RUN/watch.json"
  [ "$($PROBE get "$RUN/watch.json" unit_seen)" = true ] || fail "the unit never ran"
  [ "$($PROBE get "$RUN/watch.json" timed_out)" = false ] || fail "the unit did not finish in 300 s"
  [ "$($PROBE get "$RUN/watch.json" outside)" = "[]" ] || fail "FUSE mount visible outside the unit: $($PROBE get "$RUN/watch.json" outside)"
  inside=$($PROBE get "$RUN/watch.json" inside)
  echo "$inside" | grep -q gocryptfs || fail "never saw the gocryptfs mount inside the unit (samples: $($PROBE get "$RUN/watch.json" samples)): $inside"
  unit_ok $BACKUP
  fuse_clean
}
scenario no-fuse-mount-outside-unit s_nofuse

s_hardening() {
  # Every service of both evaluations, as systemd parsed it ...
  local ev svc bad=
  for ev in "$DOCS_EVAL" "$PHOTOS_EVAL" "$SERVER_EVAL"; do
    [ -f "$ev" ] || continue
    for svc in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["services"]))' "$ev"); do
      c systemctl show "$svc.service" >"$RUN/show.$svc"
      if ! $PROBE hardening "$ev" "$svc" "$RUN/show.$svc" >"$RUN/hardening.$svc"; then
        bad="$bad $svc: $(grep -v '^OK' "$RUN/hardening.$svc" | tr '\n' ';')"
      fi
      echo "== $svc"; cat "$RUN/hardening.$svc"
    done
  done
  [ -z "$bad" ] || fail "$bad"
  cp "$RUN/show.ciphersync-docs-backup" "$RUN/show.backup"
  # systemd ignores (with a warning) settings it does not know: none may be.
  warn=$(c journalctl -b --no-pager -o cat | grep -E "ciphersync-[a-z-]+\.(service|timer|path):[0-9]+: " | sort -u || true)
  [ -z "$warn" ] || fail "systemd rejected unit lines: $(echo "$warn" | head -3 | tr '\n' ';')"
  # ... and the kernel agrees, for the process that ran (sampled mid-run).
  main=$($PROBE get "$RUN/watch.json" main)
  [ -n "$main" ] && [ "$main" != null ] || fail "no mid-run sample of the main process (see no-fuse-mount-outside-unit)"
  echo "$main"
  nnp=$(echo "$main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"].get("NoNewPrivs"))')
  seccomp=$(echo "$main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"].get("Seccomp"))')
  rootmnt=$(echo "$main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mounts"]["/"])')
  statemnt=$(echo "$main" | python3 -c "import json,sys; print(json.load(sys.stdin)['mounts']['$STATE'])")
  want_nnp=$(python3 -c "import json; print(1 if json.load(open('$DOCS_EVAL'))['services']['ciphersync-docs-backup']['serviceConfig'].get('NoNewPrivileges') else 0)")
  [ "$nnp" = "$want_nnp" ] || fail "NoNewPrivs of the running process is $nnp, module wants $want_nnp"
  if [ -n "$(show $BACKUP SystemCallFilter)" ]; then
    # nspawn filters every container process already; the unit's filters
    # come on top of that.
    nf=$(echo "$main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"].get("Seccomp_filters", 0))')
    base=$(awk '/^Seccomp_filters:/ {print $2}' "/proc/$CPID/status")
    [ "$seccomp" = 2 ] && [ "${nf:-0}" -gt "${base:-0}" ] ||
      fail "SystemCallFilter set but the process has Seccomp=$seccomp with $nf filters (container init: $base)"
  fi
  if [ "$(show $BACKUP ProtectSystem)" = strict ]; then
    [ "$rootmnt" = ro ] || fail "ProtectSystem=strict but / is $rootmnt in the unit"
    [ "$statemnt" = rw ] || fail "state dir $STATE is $statemnt in the unit"
  fi
  capbnd=$(echo "$main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["CapBnd"])')
  shown=$(show $BACKUP CapabilityBoundingSet)
  c capsh --decode="$capbnd" >/dev/null 2>&1 || true
  python3 - "$capbnd" "$shown" <<'EOF' || fail "CapBnd of the running process is not within systemctl show's CapabilityBoundingSet"
import sys
names = ["cap_chown","cap_dac_override","cap_dac_read_search","cap_fowner","cap_fsetid","cap_kill","cap_setgid","cap_setuid","cap_setpcap","cap_linux_immutable","cap_net_bind_service","cap_net_broadcast","cap_net_admin","cap_net_raw","cap_ipc_lock","cap_ipc_owner","cap_sys_module","cap_sys_rawio","cap_sys_chroot","cap_sys_ptrace","cap_sys_pacct","cap_sys_admin","cap_sys_boot","cap_sys_nice","cap_sys_resource","cap_sys_time","cap_sys_tty_config","cap_mknod","cap_lease","cap_audit_write","cap_audit_control","cap_setfcap","cap_mac_override","cap_mac_admin","cap_syslog","cap_wake_alarm","cap_block_suspend","cap_audit_read","cap_perfmon","cap_bpf","cap_checkpoint_restore"]
mask = int(sys.argv[1], 16)
have = {n for i, n in enumerate(names) if mask >> i & 1}
shown = set(sys.argv[2].split())
# The container's own bounding set (nspawn's) is smaller than systemd's
# list, so the process may lack some; it must hold none beyond it.
if have - shown:
    print("process has", sorted(have - shown)); sys.exit(1)
EOF
}
scenario hardening-in-effect s_hardening

s_verify_ok() {
  start_unit $VERIFY
  unit_ok $VERIFY
  [ "$(status_get "$STATE" stages.verify.outcome)" = ok ] ||
    fail "status.json verify: $(status_get "$STATE" stages.verify)"
  fuse_clean
}
scenario verify-succeeds s_verify_ok

s_deep() {
  local DEEP=ciphersync-docs-deep-verify.service
  start_unit $DEEP
  unit_ok $DEEP
  [ "$(status_get "$STATE" stages.deep_verify.outcome)" = ok ] ||
    fail "status.json deep_verify: $(status_get "$STATE" stages.deep_verify)"
  fuse_clean
}
scenario deep-verify-succeeds s_deep

s_verify_flip() {
  [ -n "$JOB_ONFAILURE" ] || fail "the module's docs job sets no onFailure unit"
  c rm -rf /var/lib/ciphersync-test
  victim=$(find "$CR$JOB_TARGET_PATH/files" -type f -size +1k ! -name 'gocryptfs.*' -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  [ -n "$victim" ] || fail "no file to damage on the remote"
  $PROBE flip "$victim"
  start_unit $VERIFY
  $PROBE flip "$victim" # undo, for the scenarios after this one
  c systemctl is-failed --quiet $VERIFY || fail "verify unit not failed after a flipped byte (Result=$(show $VERIFY Result))"
  st=$(show $VERIFY ExecMainStatus)
  [ "$st" = 3 ] || fail "verify exit status $st, want 3 (differences)"
  [ "$(status_get "$STATE" stages.verify.outcome)" = mismatch ] ||
    fail "status.json verify: $(status_get "$STATE" stages.verify)"
  for u in $JOB_ONFAILURE; do
    for _ in $(seq 1 600); do [ "$(show "$u" ActiveState)" != activating ] && [ -n "$(show "$u" InvocationID)" ] && break; sleep 0.1; done
    [ -n "$(show "$u" InvocationID)" ] || fail "onFailure unit $u never started"
    [ "$(show "$u" Result)" = success ] || fail "onFailure unit $u Result=$(show "$u" Result)"
    if [ ! -e "$CR/etc/systemd/system/$u" ] || grep -q "onFailure marker" "$CR/etc/systemd/system/$u"; then
      [ -s "$CR/var/lib/ciphersync-test/onfailure-$u" ] || fail "onFailure marker of $u missing"
    fi
  done
  c systemctl reset-failed $VERIFY
  fuse_clean
}
scenario verify-detects-flipped-byte s_verify_flip

s_stop() {
  truncate -s "${BIG_MB}M" "$CR$JOB_SOURCE/big-sparse.img"
  c systemctl start --no-block $BACKUP
  $PROBE watch "$CGROOT" $BACKUP 300 \
    "{\"host_prefix\": \"$RUN\", \"stop_when_busy\": \"timeout 60 nsenter -t $CPID -a systemctl stop $BACKUP\", \"busy_seconds\": 1.0}" >"$RUN/watch-stop.json"
  cat "$RUN/watch-stop.json"
  [ "$($PROBE get "$RUN/watch-stop.json" stopped)" = true ] ||
    fail "the backup ended before it could be stopped mid-transfer (raise CIPHERSYNC_BIG_MB); comms: $($PROBE get "$RUN/watch-stop.json" comms)"
  [ "$($PROBE get "$RUN/watch-stop.json" outside)" = "[]" ] || fail "FUSE mount outside the unit: $($PROBE get "$RUN/watch-stop.json" outside)"
  as=$(show $BACKUP ActiveState)
  [ "$as" = inactive ] || [ "$as" = failed ] || fail "after stop ActiveState=$as"
  left=$($PROBE procs "$CGROOT")
  [ -z "$left" ] || fail "processes left: $left"
  [ ! -d "$CGROOT/system.slice/$BACKUP" ] || [ -z "$(cat "$CGROOT/system.slice/$BACKUP/cgroup.procs")" ] || fail "unit cgroup not empty"
  fuse_clean
  outcome=$(status_get "$STATE" stages.backup.outcome)
  [ "$outcome" = interrupted ] || fail "status.json backup outcome '$outcome' after stop, want interrupted: $(status_get "$STATE" stages.backup)"
  c systemctl reset-failed $BACKUP 2>/dev/null || true
  start_unit $BACKUP 150
  unit_ok $BACKUP
  [ "$(status_get "$STATE" stages.backup.outcome)" = ok ] || fail "next backup outcome: $(status_get "$STATE" stages.backup)"
  fuse_clean
}
scenario stop-during-large-backup s_stop

s_timers() {
  [ -n "$JOB_TIMERS" ] || fail "the module evaluation has no timers for docs"
  for t in $JOB_TIMERS; do
    [ "$(show "$t.timer" LoadState)" = loaded ] || fail "$t.timer LoadState=$(show "$t.timer" LoadState)"
    [ "$(show "$t.timer" ActiveState)" = active ] || fail "$t.timer ActiveState=$(show "$t.timer" ActiveState)"
    [ "$(show "$t.timer" UnitFileState)" = enabled ] || fail "$t.timer not enabled (wantedBy): $(show "$t.timer" UnitFileState)"
    trig=$(show "$t.timer" Triggers)
    [ "$trig" = "$t.service" ] || fail "$t.timer triggers '$trig'"
    cal=$(show "$t.timer" TimersCalendar)
    for spec in $(python3 -c "
import json; tc = json.load(open('$DOCS_EVAL'))['timers']['$t']['timerConfig']
v = tc.get('OnCalendar', []); v = v if isinstance(v, list) else [v]
print('\n'.join(s.replace(' ', '_') for s in v))"); do
      norm=$(c systemd-analyze calendar "${spec//_/ }" | sed -n 's/^ *Normalized form: //p')
      [[ "$cal" == *"OnCalendar=$norm ;"* ]] || fail "$t.timer schedule: want '$norm' ($spec), shown '$cal'"
    done
    # Not fired on its own (Persistent= with no earlier run must not start
    # a backup at boot).
    last=$(show "$t.timer" LastTriggerUSec)
    [ -z "$last" ] || [ "$last" = n/a ] || [ "$last" = 0 ] || fail "$t.timer fired on its own at $last"
    want_p=$(python3 -c "import json; print('yes' if json.load(open('$DOCS_EVAL'))['timers']['$t']['timerConfig'].get('Persistent') else 'no')")
    [ "$(show "$t.timer" Persistent)" = "$want_p" ] || fail "$t.timer Persistent=$(show "$t.timer" Persistent)"
    rd=$(python3 -c "import json; print(json.load(open('$DOCS_EVAL'))['timers']['$t']['timerConfig'].get('RandomizedDelaySec') or '')")
    if [ -n "$rd" ]; then
      got=$(show "$t.timer" RandomizedDelayUSec); want=$(c systemd-analyze timespan "$rd" | sed -n 's/^ *Human: //p')
      [ "$got" = "$want" ] || fail "$t.timer RandomizedDelayUSec=$got want $want"
    fi
  done
  # A timer started by hand runs its service: a transient timer that fires
  # the module's backup service now (the module's own timers fire on their
  # calendar, which the checks above pin). The big file of the stop
  # scenario is gone, so this run also moves a deletion into a snapshot.
  rm -f "$CR$JOB_SOURCE/big-sparse.img"
  local SVC=$BACKUP
  before=$(show $SVC InvocationID)
  cat >"$CR/run/systemd/system/cstest-hand.timer" <<EOF
[Timer]
OnActiveSec=1s
AccuracySec=100ms
Unit=$SVC
RemainAfterElapse=no
EOF
  c systemctl daemon-reload
  c systemctl start cstest-hand.timer
  # Deadlines for "eventually": generous, so that a busy machine only
  # makes them slower (journald, too, writes later under load).
  for _ in $(seq 1 1200); do
    inv=$(show $SVC InvocationID); as=$(show $SVC ActiveState)
    [ -n "$inv" ] && [ "$inv" != "$before" ] && [ "$as" != activating ] && break
    sleep 0.1
  done
  [ "$inv" != "$before" ] || fail "the timer started by hand did not run $SVC"
  unit_ok $SVC
  local logged=no
  for _ in $(seq 1 600); do
    if c journalctl -b -u $SVC --no-pager -o cat | grep -q "Started\|Finished\|Starting"; then
      logged=yes
      break
    fi
    sleep 0.1
  done
  [ "$logged" = yes ] || fail "no journal entries for the timed run"
  c systemctl stop cstest-hand.timer 2>/dev/null || true
}
scenario timers-scheduled-and-fire s_timers

# --- issue 18: hooks, pings, scheduling, credentials --------------------------
HOOKS=/var/lib/ciphersync-test
hooks_log() { cat "$CR$HOOKS/hooks.log" 2>/dev/null || true; }
wait_for() { # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds (deadline 120 s)
  local what=$1 i
  shift
  for i in $(seq 1 1200); do "$@" && return 0; sleep 0.1; done
  fail "gave up waiting for $what"
}
two_hook_lines() { [ "$(hooks_log | wc -l)" -ge 2 ]; }
# Request paths the healthchecks stand-in logged, in order.
pings() { sed -n 's/.*"GET \([^ ]*\) HTTP.*/\1/p' "$RUN/ping.log" 2>/dev/null || true; }
pinged() { pings | grep -qx "$1"; }

s_hooks_pings() {
  # A healthchecks stand-in: the host's python3 serving in the container's
  # network namespace (the container has no python). It answers 404 to
  # every ping, so this also shows that a failed ping fails no backup.
  mkdir -p "$RUN/www"
  # Appended to (O_APPEND), so that truncating the log between runs works.
  : >"$RUN/ping.log"
  # 9>&-: the server must not inherit the cache lock (a leaked server
  # would hold it for every later run).
  nsenter -t "$CPID" -n python3 -u -m http.server 8321 --bind 127.0.0.1 --directory "$RUN/www" >>"$RUN/ping.log" 2>&1 9>&- &
  PING_SERVER=$!
  trap 'kill "$PING_SERVER" 2>/dev/null || true' EXIT
  wait_for "the ping server to listen" grep -q "Serving HTTP" "$RUN/ping.log"

  # The unit settings the module renders, as systemd took them.
  [ "$(show $BACKUP Nice)" = 10 ] || fail "Nice=$(show $BACKUP Nice), want 10"
  case $(show $BACKUP IOSchedulingClass) in idle | 3) ;; *) fail "IOSchedulingClass=$(show $BACKUP IOSchedulingClass), want idle" ;; esac
  [ "$(show $BACKUP TimeoutStartUSec)" = 12h ] || fail "TimeoutStartUSec=$(show $BACKUP TimeoutStartUSec), want 12h (maxRuntime)"
  show $BACKUP ExecStart | grep -q "systemd-inhibit" || fail "ExecStart has no systemd-inhibit: $(show $BACKUP ExecStart)"
  [ "$(show $VERIFY Nice)" = 10 ] || fail "$VERIFY Nice=$(show $VERIFY Nice), want 10"

  # 1. A backup: preHook, the backup (inside the sleep inhibitor), postHook.
  c rm -f "$HOOKS/hooks.log" "$HOOKS/status-at-pre-hook.json" "$HOOKS/status-at-post-hook.json"
  echo "hooks run $(date +%s%N)" >"$CR$JOB_SOURCE/hooks-scenario.txt"
  start_unit $BACKUP
  unit_ok $BACKUP
  wait_for "both hooks to log" two_hook_lines
  [ "$(hooks_log)" = "$(printf 'pre-hook job=docs\npost-hook job=docs outcome=success exit=0')" ] ||
    fail "hook log after a good backup: $(hooks_log | tr '\n' '|')"
  # The backup ran between them: the preHook saw the last run's status,
  # the postHook this run's.
  local pre post now
  pre=$($PROBE get "$CR$HOOKS/status-at-pre-hook.json" stages.backup.finished_at)
  post=$($PROBE get "$CR$HOOKS/status-at-post-hook.json" stages.backup.finished_at)
  now=$(status_get "$STATE" stages.backup.finished_at)
  [ -n "$now" ] && [ "$post" = "$now" ] || fail "the postHook ran before the backup ended (it saw finished_at '$post', the run's is '$now')"
  [ "$pre" != "$now" ] || fail "the preHook ran after the backup (it saw this run's finished_at $now)"
  wait_for "the success ping" pinged /ping/docs
  [ "$(pings | tr '\n' ' ')" = "/ping/docs/start /ping/docs " ] || fail "pings of a good backup: $(pings | tr '\n' ' ')"

  # 2. A failing preHook: no backup, the postHook says failure, the
  # failure ping goes out.
  cp "$RUN/ping.log" "$RUN/ping.log.first"; : >"$RUN/ping.log"
  c rm -f "$HOOKS/hooks.log"
  c touch "$HOOKS/fail-pre-hook"
  local snaps_before
  snaps_before=$(find "$CR$JOB_TARGET_PATH/snapshots" -mindepth 1 -maxdepth 1 | wc -l)
  echo "must not be backed up $(date +%s%N)" >"$CR$JOB_SOURCE/hooks-scenario.txt"
  start_unit $BACKUP
  c rm -f "$HOOKS/fail-pre-hook"
  c systemctl is-failed --quiet $BACKUP || fail "backup unit not failed after a failing preHook (Result=$(show $BACKUP Result))"
  [ "$(show $BACKUP Result)" = exit-code ] || fail "Result=$(show $BACKUP Result), want exit-code"
  wait_for "both hooks to log" two_hook_lines
  [ "$(hooks_log)" = "$(printf 'pre-hook job=docs\npost-hook job=docs outcome=failure exit=')" ] ||
    fail "hook log after a failing preHook: $(hooks_log | tr '\n' '|')"
  [ "$(status_get "$STATE" stages.backup.finished_at)" = "$now" ] ||
    fail "the backup ran after a failing preHook: $(status_get "$STATE" stages.backup)"
  [ "$(find "$CR$JOB_TARGET_PATH/snapshots" -mindepth 1 -maxdepth 1 | wc -l)" = "$snaps_before" ] ||
    fail "a snapshot appeared after a failing preHook"
  wait_for "the failure ping" pinged /ping/docs/fail
  [ "$(pings | tr '\n' ' ')" = "/ping/docs/start /ping/docs/fail " ] || fail "pings of a failed preHook: $(pings | tr '\n' ' ')"
  c systemctl reset-failed $BACKUP
  # The next run backs the file up again.
  start_unit $BACKUP
  unit_ok $BACKUP
  fuse_clean
}
scenario hooks-pings-and-scheduling s_hooks_pings

# The password and the ssh key reach the unit as credentials: with the
# files themselves made inaccessible inside the unit, the backup works.
s_credentials() {
  [ -n "$JOB_IDENTITY_FILE" ] || fail "the docs job has no identity file"
  local dropin=/run/systemd/system/$BACKUP.d
  local paths="-$JOB_PASSWORD_FILE -$JOB_IDENTITY_FILE"
  # Control: what InaccessiblePaths= leaves of the password file, even for root.
  out=$(CT=60 c systemd-run --quiet --wait --pipe -p InaccessiblePaths="$JOB_PASSWORD_FILE" /bin/sh -c "wc -c <'$JOB_PASSWORD_FILE'" 2>&1 || true)
  [ "$(echo "$out" | tr -d ' ')" = 0 ] || fail "control: InaccessiblePaths= left the password file readable ($out)"
  c mkdir -p "$dropin"
  printf '[Service]\nInaccessiblePaths=%s\n' "$paths" >"$CR$dropin/cstest-credentials.conf"
  c systemctl daemon-reload
  # (systemctl show prints LoadCredential= as "[unprintable]": read the unit,
  # once: right after daemon-reload a second call may find the bus busy.)
  local unit=""
  for _ in $(seq 1 60); do
    unit=$(c systemctl cat $BACKUP 2>/dev/null || true)
    [ -n "$unit" ] && break
    sleep 1
  done
  grep -qx "LoadCredential=password:$JOB_PASSWORD_FILE" <<<"$unit" ||
    fail "LoadCredential of $BACKUP: $(grep LoadCredential <<<"$unit" | tr '\n' '|')"
  grep -qx "LoadCredential=identity:$JOB_IDENTITY_FILE" <<<"$unit" ||
    fail "no identity credential in $BACKUP: $(grep LoadCredential <<<"$unit" | tr '\n' '|')"
  echo "credentials run $(date +%s%N)" >"$CR$JOB_SOURCE/credentials.txt"
  start_unit $BACKUP
  rm -f "$CR$dropin/cstest-credentials.conf"
  c systemctl daemon-reload
  unit_ok $BACKUP
  [ "$(status_get "$STATE" stages.backup.outcome)" = ok ] || fail "status.json backup: $(status_get "$STATE" stages.backup)"
  [ "$(status_get "$STATE" stages.backup.stats.transferred)" -ge 1 ] || fail "nothing sent: $(status_get "$STATE" stages.backup)"
  fuse_clean
}
scenario credentials-instead-of-files s_credentials

s_nonroot() {
  [ "$HAVE_PHOTOS" = 1 ] || fail "$PHOTOS_EVAL missing (the non-root job's module evaluation)"
  eval "$($PROBE job-env "$PHOTOS_EVAL" photos)"
  local svc=ciphersync-photos-backup.service user=$JOB_USER
  [ "$user" != root ] || fail "the photos job runs as root in the module evaluation"
  c getent passwd "$user" >/dev/null || fail "user $user from the module does not exist"
  uid=$(c id -u "$user")
  [ "$(show $svc User)" = "$user" ] || fail "$svc User=$(show $svc User)"
  # Job fixtures: source with a root-only file, password file and target the user may use.
  c install -d -m 0755 "$JOB_SOURCE"
  echo "PLAINTEXT-MARKER-photos root only" >"$CR$JOB_SOURCE/root-only.jpg"
  c chown root:root "$JOB_SOURCE/root-only.jpg"; c chmod 0600 "$JOB_SOURCE/root-only.jpg"
  echo "PLAINTEXT-MARKER-photos public" >"$CR$JOB_SOURCE/public.jpg"
  # The password file stays root's (0600): it reaches the unit as a
  # credential (LoadCredential=), and inside the unit it is made
  # inaccessible, so the job cannot have read it any other way (alice's
  # CAP_DAC_READ_SEARCH would read a root-only file).
  c install -d -m 0700 "$(dirname "$JOB_PASSWORD_FILE")"
  head -c 24 /dev/urandom | base64 >"$CR$JOB_PASSWORD_FILE"
  c chown root:root "$JOB_PASSWORD_FILE"; c chmod 0600 "$JOB_PASSWORD_FILE"
  c mkdir -p "/run/systemd/system/$svc.d"
  printf '[Service]\nInaccessiblePaths=-%s\n' "$JOB_PASSWORD_FILE" >"$CR/run/systemd/system/$svc.d/cstest-credentials.conf"
  c systemctl daemon-reload
  if [ "$JOB_TARGET_TYPE" = local ]; then c install -d -m 0700 -o "$user" "$JOB_TARGET_PATH"; fi
  for i in 1 2 3 4 5; do head -c 3000000 /dev/urandom >"$CR$JOB_SOURCE/pic$i.raw"; done
  c ls -l /dev/fuse
  c systemctl start --no-block $svc
  $PROBE watch "$CGROOT" $svc 300 "{\"host_prefix\": \"$RUN\"}" >"$RUN/watch-photos.json"
  cat "$RUN/watch-photos.json"
  unit_ok $svc
  uids=$($PROBE get "$RUN/watch-photos.json" uids)
  [ -n "$uids" ] && [ "$uids" != "{}" ] || fail "no process of $svc was sampled"
  # Every command of the unit runs as the user. Not counted: systemd's own
  # child between fork and exec, still root by design ("(name)", or a digit:
  # systemd-executor run by fexecve() is named after its file descriptor),
  # and fusermount3, the setuid mount helper the non-root job mounts and
  # unmounts through by design (NixOS: security.wrappers), with the
  # /bin/mount and /bin/umount it runs as root to record the mount and its
  # end (libfuse's mount_util.c): a sample may catch any of them while it
  # holds root, and whether one is caught depends only on how busy the
  # machine is.
  python3 -c 'import json,sys; u=json.loads(sys.argv[1]); bad={k:v for k,v in u.items() if v!=[sys.argv[2]] and not k.startswith("(") and not k.isdigit() and k not in ("fusermount3", "mount", "umount")}; sys.exit(1 if bad else 0)' "$uids" "$uid" ||
    fail "processes of $svc not all running as $user ($uid): $uids"
  [ "$($PROBE get "$RUN/watch-photos.json" outside)" = "[]" ] || fail "FUSE mount outside the unit: $($PROBE get "$RUN/watch-photos.json" outside)"
  [ "$(status_get "$JOB_STATE_DIR" stages.backup.outcome)" = ok ] || fail "photos status: $(status_get "$JOB_STATE_DIR" stages.backup)"
  st_owner=$(c stat -c %U "$JOB_STATE_DIR/status.json")
  [ "$st_owner" = "$user" ] || fail "status.json owned by $st_owner, not $user"
  # The root-only file arrived: decrypt the target by hand and compare.
  [ "$JOB_TARGET_TYPE" = local ] || fail "photos target type $JOB_TARGET_TYPE (test expects local)"
  out=$(CT=60 c systemd-run --quiet --wait --pipe -p PrivateMounts=yes /bin/sh -c \
    "mkdir -p /run/cstest-restore2 && gocryptfs -q -ro -passfile '$JOB_PASSWORD_FILE' '$JOB_TARGET_PATH/files' /run/cstest-restore2 && cat /run/cstest-restore2/root-only.jpg; fusermount3 -u /run/cstest-restore2" 2>&1) || true
  echo "$out" | grep -q "PLAINTEXT-MARKER-photos root only" || fail "root-only file not in the backup: $out"
  fuse_clean
}
scenario non-root-job s_nonroot

server_scenarios

note "total $(( $(date +%s) - T0 ))s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
