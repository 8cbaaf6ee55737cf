# shellcheck shell=sh
# Deletes the temp files (`.name.XXXXXX`) an rsync killed in the middle
# leaves in files/, and prints how many there were. Only run when names are
# encrypted: no encrypted name starts with a dot.
find files -type f -name '.*' -print -delete | wc -l
