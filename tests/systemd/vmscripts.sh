#!/usr/bin/env bash
# Run the testScripts of the NixOS VM tests (nix/tests/*.nix) unchanged
# against two systemd-nspawn containers, `client` and `server`, built from
# what the modules render for each test's nodes. See tests/systemd/README.md
# ("The VM tests' scripts").
#
# Output: one line per test: "PASS vm-<test>", "FAIL vm-<test>: why", or
# "SKIP vm-<test>: ..." when a line of the script cannot run here (the line,
# and why; a test with such a line never counts as passed), then
# "N passed, M failed". Exit 1 on any failure. A missing prerequisite gives
# "SKIP vm-tests: <reason>" and exit 0, or a failure when CI=true.
#
# Environment (as tests/systemd/run.sh, plus):
#   NIXPKGS_LIB            nixpkgs.lib checkout (the nodes are evaluated with it)
#   CIPHERSYNC_BIN         binary to test (default: the one cargo builds)
#   CIPHERSYNC_PROFILE     cargo profile when building (debug)
#   CIPHERSYNC_NSPAWN_CACHE  tree cache (/var/cache/ciphersync-nspawn)
#   CIPHERSYNC_DEBIAN_MIRROR Debian mirror (the one apt uses)
#   VM_TESTS               the tests to run (default: all five), space-separated
#   KEEP=1                 keep the run directory (logs, evaluations)
# Usage: tests/systemd/vmscripts.sh [--tree-only]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SUITE=trixie
# run.sh's list plus what the test scripts and the nodes' systemPackages
# call: jq (client), tc (iproute2, server-down), nc (wait_for_open_port),
# pgrep/pkill (procps), and pam_systemd (libpam-systemd) for user@.service
# (the user manager of a lingering user, home-manager test).
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,fuse3,gocryptfs,sshfs,rsync,openssh-client,openssh-server,jq,iproute2,netcat-openbsd,procps
CACHE=${CIPHERSYNC_NSPAWN_CACHE:-/var/cache/ciphersync-nspawn}
TREE=$CACHE/$SUITE-vmscripts

skip() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL vm-tests: $1"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "SKIP vm-tests: $1"
  exit 0
}
note() { echo "# $*" >&2; }

# Like nix/eval's evaluation with nixpkgs' lib, which no machine here ships:
# without its path this skips, with the reason, in CI too; and it does so
# before building a tree it would not use.
if [ "${1:-}" != --tree-only ]; then
  if [ -z "${NIXPKGS_LIB:-}" ]; then
    echo "SKIP vm-tests: set NIXPKGS_LIB=<nixpkgs.lib checkout> (the nodes are evaluated with it, see nix/eval/README.md)"
    exit 0
  fi
  [ -f "$NIXPKGS_LIB/lib/default.nix" ] || skip "NIXPKGS_LIB=$NIXPKGS_LIB has no lib/default.nix"
fi

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, nspawn, mount, network namespaces)"
for tool in debootstrap systemd-nspawn nsenter python3 flock mknod ip nix-instantiate ssh-keygen; do
  command -v "$tool" >/dev/null ||
    skip "$tool not found (apt-get install debootstrap systemd-container util-linux iproute2 python3 nix-bin openssh-client)"
done
[ -c /dev/fuse ] || skip "/dev/fuse missing (no FUSE in this kernel)"
[ -d /sys/fs/cgroup ] || skip "no cgroup file system"

debian_mirror() {
  if [ -n "${CIPHERSYNC_DEBIAN_MIRROR:-}" ]; then
    echo "$CIPHERSYNC_DEBIAN_MIRROR"
    return
  fi
  local m
  # shellcheck disable=SC2016 # apt-get's own $(...) format, not a shell expansion
  m=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(ORIGIN)' 2>/dev/null |
    awk '$2 !~ /-/ && $3 == "Debian" {print $1; exit}')
  echo "${m:-http://deb.debian.org/debian}"
}

# The tree: built once, renamed into place only when complete, rebuilt when
# the package list changes (a stamp), serialised with run.sh by the cache lock.
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || skip "another run holds $CACHE/lock"
STAMP="suite=$SUITE variant=minbase include=$PACKAGES"
if [ "$(cat "$TREE/.ciphersync-stamp" 2>/dev/null)" != "$STAMP" ]; then
  for old in "$TREE".tmp.*; do [ -d "$old" ] && rm -rf "$old"; done
  tmp=$(mktemp -d "$TREE.tmp.XXXXXX")
  mirror=$(debian_mirror)
  note "debootstrap $SUITE from $mirror into $tmp"
  mkdir -p "$CACHE/debs"
  if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" \
    "$SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -5 "$tmp.log" >&2
    rm -rf "$tmp"
    skip "debootstrap failed (no Debian mirror reachable?), see the log above"
  fi
  rm -f "$tmp.log"
  echo "$STAMP" >"$tmp/.ciphersync-stamp"
  rm -rf "$TREE"
  mv "$tmp" "$TREE"
fi
note "tree $TREE ready"
[ "${1:-}" = --tree-only ] && exit 0


if [ -n "${CIPHERSYNC_BIN:-}" ]; then
  BIN=$CIPHERSYNC_BIN
else
  PROFILE=${CIPHERSYNC_PROFILE:-debug}
  command -v cargo >/dev/null || skip "cargo not found and CIPHERSYNC_BIN not set"
  flags=(--locked --quiet --bin ciphersync)
  [ "$PROFILE" = release ] && flags+=(--release)
  if ! (cd "$REPO" && cargo build "${flags[@]}") >&2; then
    echo "FAIL build: cargo build ${flags[*]}"
    echo "0 passed, 1 failed"
    exit 1
  fi
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/ciphersync
fi
[ -x "$BIN" ] || skip "$BIN is not an executable"

# shellcheck disable=SC2086 # VM_TESTS is a space-separated list
exec python3 "$HERE/vmscripts.py" --tree "$TREE" --bin "$BIN" \
  --nixpkgs-lib "$(cd "$NIXPKGS_LIB/lib" && pwd)" ${VM_TESTS:-}
