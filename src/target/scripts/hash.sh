# shellcheck shell=sh
# Hashes files/ into `sha1sum` format, sorted on the path (the byte order
# of the client's own list), keeps it as checksums/<id>.remote.sha1 and
# prints it. $1 is the verify run's id.
# - `openssl dgst -sha1` where the server has it (SHA-NI: about twice
#   sha1sum's speed), in sha1sum's format by `sed`; only for paths of the
#   characters encrypted names use, as openssl does not escape a newline in
#   a name. Everything else goes to sha1sum.
# - Several processes when the server has coreutils' nproc and stdbuf:
#   line-buffered, each output line is one write and cannot interleave.
# - Every list goes to a file first: `| sort` would hide a failure.
id=$1
mkdir -p checksums
cd files || exit 1
dir=../checksums/.$id.remote
kept=../checksums/$id.remote.sha1
in_parallel() {
  if command -v nproc >/dev/null 2>&1 && command -v stdbuf >/dev/null 2>&1; then
    xargs -0r -P "$(nproc)" -n 256 stdbuf -oL "$@"
  else
    xargs -0r "$@"
  fi
}
plain='*[!A-Za-z0-9._/-]*'
if [ "$(printf '' | openssl dgst -sha1 -r 2>/dev/null)" = 'da39a3ee5e6b4b0d3255bfef95601890afd80709 *stdin' ]; then
  find . -type f ! -path "$plain" -print0 | in_parallel openssl dgst -sha1 -r >"$dir.openssl"
  sed 's/^\([0-9a-f]\{40\}\) \*/\1  /' "$dir.openssl" >"$dir.unsorted"
  rm -f "$dir.openssl"
  find . -type f -path "$plain" -print0 | in_parallel sha1sum >>"$dir.unsorted"
else
  find . -type f -print0 | in_parallel sha1sum >"$dir.unsorted"
fi
sort -t ' ' -k 3 "$dir.unsorted" >"$dir.sha1.tmp"
rm -f "$dir.unsorted"
mv -f "$dir.sha1.tmp" "$kept"
cat "$kept"
