# shellcheck shell=sh
# Backup's first round trip: creates the layout, and prints
#   [C<files/gocryptfs.conf>] NUL [<newest id> NUL (<its record> | =<stamps of files/>)]
# The record is not sent when it is $1 (the run the client already knows):
# the stamps of files/ are, to show whether anything touched files/ since.
known=$1
mkdir -p files snapshots checksums records
if [ -f files/gocryptfs.conf ]; then
  printf C
  cat files/gocryptfs.conf
fi
printf '\0'
last=$(newest_record)
[ -n "$last" ] || exit 0
printf '%s\0' "${last%.rec}"
if [ "$last" = "$known.rec" ]; then
  printf '=%s' "$(stamps_of files records/.preflight.stamps)"
else
  cat "records/$last"
fi
