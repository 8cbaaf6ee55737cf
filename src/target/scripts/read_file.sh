# shellcheck shell=sh
# Prints at most $2 bytes of file $1; exit 44 when it is not there.
[ -f "$1" ] || exit 44
head -c "$2" -- "$1"
