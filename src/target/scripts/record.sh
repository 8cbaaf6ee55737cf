# shellcheck shell=sh
# Writes records/<id>.rec after a run and prints `<files> <bytes> <stamps>`.
#   $1 id, $2 the header as a printf format with %s for files and bytes,
#   $3 1 to leave out dot names (rsync temp files; encrypted names never
#   start with a dot), $4 the last run's id when files/ is known to hold
#   what its record lists (then its entries are copied), $5 the stamps of
#   files/ when no rsync ran since they were taken.
# Every step writes a file, so a failure is not hidden by a pipe.
id=$1 head=$2 skip_dots=$3 last=$4 known_stamps=$5
tmp=records/.$id

# The last record's entries under the new header, when that record has the
# expected header and its entries add up to its counts (damage must not be
# carried forward).
copy_last() {
  rec=records/$last.rec
  [ -n "$last" ] && [ -f "$rec" ] || return 1
  [ "$(sed -n 1p "$rec")" = 'ciphersync-record 1' ] || return 1
  [ "$(sed -n 2p "$rec")" = "snapshot $last" ] || return 1
  body=$(awk 'NF == 0 { print NR + 1; exit }' "$rec")
  [ -n "$body" ] || return 1
  tail -n "+$body" "$rec" >"$tmp.entries"
  counts=$(head -n "$body" "$rec" |
    sed -n -e 's/^files \([0-9][0-9]*\)$/\1/p' -e 's/^bytes \([0-9][0-9]*\)$/\1/p' | tr '\n' ' ')
  [ "$(count_entries "$tmp.entries")" = "${counts% }" ]
}

list_files() {
  if [ "$skip_dots" = 1 ]; then
    (cd files && find . -mindepth 1 ! -name '.*' \( -type f -printf '%y %m %s %P\n' -o \( -type d -o -type l \) -printf '%y %m 0 %P\n' \)) >"$tmp.unsorted"
  else
    (cd files && find . -mindepth 1 \( -type f -printf '%y %m %s %P\n' -o \( -type d -o -type l \) -printf '%y %m 0 %P\n' \)) >"$tmp.unsorted"
  fi
  sort -t ' ' -k 4 "$tmp.unsorted" >"$tmp.entries"
  rm -f "$tmp.unsorted"
}

if copy_last; then
  copied=1
else
  copied=0 known_stamps=
  list_files
fi
counts=$(count_entries "$tmp.entries")
[ "$counts" != bad ] || {
  echo "files/ holds an entry the record format cannot hold" >&2
  exit 1
}
# shellcheck disable=SC2086 # two numbers, split on purpose
set -- $counts
# shellcheck disable=SC2059 # the header is the format
{
  printf "$head" "$1" "$2"
  cat "$tmp.entries"
} >"$tmp.rec.tmp"
rm -f "$tmp.entries"
mv -f "$tmp.rec.tmp" "records/$id.rec"
if [ "$copied" = 1 ] && [ -n "$known_stamps" ]; then
  stamps=$known_stamps
else
  stamps=$(stamps_of files "$tmp.stamps")
fi
echo "$counts $stamps"
