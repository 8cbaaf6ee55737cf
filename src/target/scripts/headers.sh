# shellcheck shell=sh
# The header of every record, oldest first: `<id> NUL <header lines> NUL`.
[ -d records ] || exit 0
cd records || exit 1
# Only names of exactly this pattern (no space, no glob character) count.
# shellcheck disable=SC2010
for f in $(ls -1A | grep -E '^[0-9]{8}T[0-9]{6}Z[.]rec$' | sort); do
  printf '%s\0' "${f%.rec}"
  sed '/^$/q' "$f"
  printf '\0'
done
