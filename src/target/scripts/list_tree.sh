# shellcheck shell=sh
# Every entry below $1 as `<type> <octal mode> <size> <path>` NUL.
[ -d "$1" ] || exit 0
cd "$1" || exit 1
find . -mindepth 1 -printf '%y %m %s %P\0'
