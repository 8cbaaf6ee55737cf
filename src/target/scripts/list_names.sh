# shellcheck shell=sh
# The names in directory $1, one per line (nothing when it is missing).
[ -d "$1" ] || exit 0
cd "$1" || exit 1
ls -1A
