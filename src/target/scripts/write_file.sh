# shellcheck shell=sh
# Replaces file $1 with stdin in one step: a temporary name first, so that
# a broken link never leaves half a file under the real name.
tmp=$(dirname -- "$1")/.$(basename -- "$1").tmp
cat >"$tmp"
mv -f -- "$tmp" "$1"
