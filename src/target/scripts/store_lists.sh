# shellcheck shell=sh
# Keeps the client's list (stdin) as checksums/<id>.local.sha1 (the server
# stored its own), then removes the lists of all but the newest $2 runs.
id=$1 keep=$2
cd checksums || exit 1
cat >".$id.local.sha1.tmp"
mv -f ".$id.local.sha1.tmp" "$id.local.sha1"
# Only names of exactly this pattern count.
# shellcheck disable=SC2010
ls -1A | grep -E '^[0-9]{8}T[0-9]{6}Z[.](local|remote)[.]sha1$' | sed 's/[.].*//' |
  sort -ru | tail -n "+$((keep + 1))" >.stale || true
while read -r run; do
  rm -f "$run.local.sha1" "$run.remote.sha1"
done <.stale
rm -f .stale
