#!/usr/bin/env bash
# The seed's shell pipeline, as the benchmark runs it (issue 6): the scheme by
# hand, without ciphersync. Used as the baseline that ciphersync must beat.
#
#   seed.sh init    SRC REMOTE_PATH WORK PASSFILE SSH_CONFIG
#   seed.sh backup  SRC REMOTE_PATH WORK PASSFILE SSH_CONFIG
#   seed.sh verify  SRC REMOTE_PATH WORK PASSFILE SSH_CONFIG
#   seed.sh restore SRC REMOTE_PATH WORK PASSFILE SSH_CONFIG DEST
#
# backup:  gocryptfs -reverse (config in SRC/.gocryptfs.reverse.conf, the
#          seed's default) + sshfs (default options) +
#          rsync -abEP --backup-dir=../snapshots/<ts> --delete
# verify:  find | xargs sha1sum of the encrypted view and, over ssh, of the
#          remote files/; sort both; diff. Both lists are kept in checksums/.
# restore: sshfs + gocryptfs (forward) of files/ + cp -a.
# The host alias "bench" is defined in SSH_CONFIG (ssh's default ciphers).
set -euo pipefail
export LC_ALL=C
cmd=$1 src=$2 rpath=$3 work=$4 pass=$5 sshcfg=$6
cipher=$work/cipher mnt=$work/remote plain=$work/plain
mkdir -p "$cipher" "$mnt" "$plain"
unmount_all() {
  for m in "$plain" "$cipher" "$mnt"; do
    if grep -qs " $m fuse" /proc/self/mounts; then fusermount3 -u "$m" || fusermount3 -uz "$m"; fi
  done
}
trap unmount_all EXIT
ts=$(date -u +%Y%m%dT%H%M%S.%NZ)

case $cmd in
init)
  gocryptfs -q -init -reverse -passfile "$pass" "$src"
  ssh -F "$sshcfg" bench "mkdir -p '$rpath/files' '$rpath/snapshots' '$rpath/checksums'"
  ;;
backup)
  gocryptfs -q -reverse -passfile "$pass" "$src" "$cipher"
  sshfs -F "$sshcfg" "bench:$rpath" "$mnt"
  rsync -abEP --backup-dir="../snapshots/$ts" --delete "$cipher/" "$mnt/files/" >/dev/null
  ;;
verify)
  gocryptfs -q -reverse -passfile "$pass" "$src" "$cipher"
  (cd "$cipher" && find . -type f -print0 | xargs -0 sha1sum) | sort >"$work/local.sha1"
  ssh -F "$sshcfg" bench "cd '$rpath/files' && find . -type f -print0 | xargs -0 sha1sum" | sort >"$work/remote.sha1"
  ssh -F "$sshcfg" bench "cat > '$rpath/checksums/local-$ts.sha1'" <"$work/local.sha1"
  ssh -F "$sshcfg" bench "cat > '$rpath/checksums/remote-$ts.sha1'" <"$work/remote.sha1"
  diff -q "$work/local.sha1" "$work/remote.sha1"
  ;;
restore)
  dest=$7
  mkdir -p "$dest"
  sshfs -F "$sshcfg" "bench:$rpath" "$mnt"
  gocryptfs -q -ro -passfile "$pass" "$mnt/files" "$plain"
  cp -a "$plain/." "$dest/"
  ;;
*)
  echo "usage: seed.sh init|backup|verify|restore SRC REMOTE_PATH WORK PASSFILE SSH_CONFIG [DEST]" >&2
  exit 2
  ;;
esac
