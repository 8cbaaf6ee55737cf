#!/usr/bin/env bash
# Installs the tools ciphersync orchestrates and its tests use, with apt-get,
# only where they are missing. Needs root (or sudo) on Debian/Ubuntu.
# Rust itself is not installed here: building needs Rust >= 1.85 (rustup).
set -euo pipefail

packages=(gocryptfs sshfs fuse-overlayfs rsync openssh-server openssh-client fuse3 python3 time)
# The Nix parse check and the systemd-nspawn tests need these too.
# openssl: the remote hashing script's fast path, tested against sha1sum.
# python3-prometheus-client: its parser reads the --metrics-file output.
# rclone: `rclone serve sftp`, one of the server kinds of tests/e2e_servers.rs.
# The shellcheck package: the server-side scripts (src/target/scripts) are checked in a test.
# btrfs-progs: source_snapshot "btrfs" on a loop device (tests/e2e_source_snapshot.rs).
# acl, attr: getfacl/setfacl and getfattr/setfattr compare restored owners, ACLs and xattrs (tests/e2e_metadata.rs).
[[ "${1:-}" == "--test" ]] && packages+=(nix-bin debootstrap systemd-container iproute2 openssl python3-prometheus-client rclone shellcheck btrfs-progs acl attr)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# apt-get on a machine that is busy installing (unattended-upgrades on a
# fresh VM holds the dpkg lock for minutes): wait for the lock, bounded by
# CIPHERSYNC_APT_WAIT seconds (default 900), saying so, instead of failing.
apt_get() {
  local deadline=$((SECONDS + ${CIPHERSYNC_APT_WAIT:-900})) out rc
  while :; do
    rc=0
    out=$($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@" 2>&1) || rc=$?
    if ((rc == 0)); then return 0; fi
    if ! grep -qiE 'could not get lock|unable to acquire|lock-frontend|is another process using it' <<<"$out"; then
      printf '%s\n' "$out" >&2
      return "$rc"
    fi
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$out" >&2
      echo "install-deps: the apt/dpkg lock was still held after ${CIPHERSYNC_APT_WAIT:-900} s; run again when the other package manager is done" >&2
      return "$rc"
    fi
    echo "install-deps: waiting for the apt/dpkg lock (another package manager, e.g. unattended-upgrades, holds it)" >&2
    sleep 5
  done
}

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
