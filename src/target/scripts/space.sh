# shellcheck shell=sh
# Prints `space SIZE USED AVAILABLE` (KiB) of the file system that holds
# directory $1, from POSIX `df -P -k`. The numbers are the first run of
# three whole numbers followed by a percentage on df's data line, so a
# file system or mount point name with spaces cannot shift them. Exit 45
# when df prints no such line (or is missing).
df -P -k -- "$1" 2>/dev/null | awk '
  NR > 1 {
    for (i = 2; i + 3 <= NF; i++) {
      if ($i ~ /^[0-9]+$/ && $(i + 1) ~ /^[0-9]+$/ && $(i + 2) ~ /^[0-9]+$/ && $(i + 3) ~ /^[0-9]+%$/) {
        print "space", $i, $(i + 1), $(i + 2)
        found = 1
        exit
      }
    }
  }
  END { if (!found) exit 45 }
'
