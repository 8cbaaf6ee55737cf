# shellcheck shell=sh
# Copies pairs of files within the target, keeping modes and times:
# FROM TO FROM TO ...
while [ "$#" -ge 2 ]; do
  cp -p -- "$1" "$2"
  shift 2
done
