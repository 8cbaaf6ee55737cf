#!/usr/bin/env bash
# Installs the tools ciphersync orchestrates and its tests use, with apt-get,
# only where they are missing. Needs root (or sudo) on Debian/Ubuntu.
# Rust itself is not installed here: building needs Rust >= 1.85 (rustup).
set -euo pipefail

packages=(gocryptfs sshfs rsync openssh-server openssh-client fuse3 python3 time)
# The Nix parse check and the systemd-nspawn tests need these too.
# openssl: the remote hashing script's fast path, tested against sha1sum.
[[ "${1:-}" == "--test" ]] && packages+=(nix-bin debootstrap systemd-container iproute2 openssl)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
