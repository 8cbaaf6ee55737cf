# shellcheck shell=sh
# Put in front of every script here (target/shell.rs): the server's sh runs
# lib.sh + the script, in the target's root, with the script's values as
# positional arguments (`sh -s -- ARG...`). Layout names are those of
# target/mod.rs (FILES, SNAPSHOTS, CHECKSUMS, RECORDS); the tests in
# shell.rs run every script with a real sh against those constants.
set -e
export LC_ALL=C

# Prints the sha1 of a sorted listing of every entry below $1 with
# its type, mode, size, mtime and link count: what rsync's quick check
# compares, for the whole tree at once. Two equal stamps mean $1 was not
# touched in between. Any failure (or an empty listing) gives `none`, which
# never equals stamps. $2 is a scratch file.
stamps_of() {
  if find "$1" -mindepth 1 -printf '%y %m %s %T@ %n %P\n' >"$2" &&
    sort "$2" >"$2.sorted" && [ -s "$2.sorted" ]; then
    sha1sum <"$2.sorted" | cut -c 1-40
  else
    echo none
  fi
  rm -f "$2" "$2.sorted"
}

# The newest record's file name (records/<id>.rec), or nothing.
# (ls | grep: only names of exactly this pattern count, whatever else is there)
# shellcheck disable=SC2010
newest_record() {
  ls -1A records | grep -E '^[0-9]{8}T[0-9]{6}Z[.]rec$' | sort | tail -n 1 || true
}

# Reads record entry lines; prints the user's files and their bytes
# (gocryptfs' own files left out), or `bad` when a line is not an entry.
count_entries() {
  awk '$0 !~ /^[fdl] [0-7]+ [0-9]+ ./ { bad = 1 }
    $1 == "f" { n = $4; sub(/.*\//, "", n);
      if (n == "gocryptfs.diriv" || $4 == "gocryptfs.conf" || n ~ /^gocryptfs[.]longname[.].*[.]name$/) next;
      files++; bytes += $3 }
    END { if (bad) print "bad"; else printf "%.0f %.0f", files, bytes }' "$@"
}
