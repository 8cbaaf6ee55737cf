# shellcheck shell=sh
# Creates each directory given (and its parents).
mkdir -p -- "$@"
