# shellcheck shell=bash
# The storage server module's units (nix/server-module.nix) in the
# container of run.sh, which sources this file: server_install before the
# boot, server_scenarios after the client scenarios. It uses run.sh's
# helpers (c, show, fail, scenario, wait_for, status_get, fuse_clean, ...).
# See README.md, "The storage server".

SERVER_EVAL=$EVAL_DIR/nixos-server.json
HAVE_SERVER=0
# The test's own files inside the container: keys, the client job, copies.
SRVT=/root/ciphersync-srvtest

# Before the boot: what the module renders, converted by units.py into the
# root (the accounts' users and shells, tmpfiles, authorized_keys.d, the
# sshd_config Match blocks, the seal service, timer and path unit).
server_install() {
  [ -f "$SERVER_EVAL" ] || return 0
  python3 "$HERE/units.py" convert "$SERVER_EVAL" --root "$ROOT" --name ciphersync-server \
    --manifest "$RUN/server.manifest.json" 2>"$RUN/units.err" || abort "units (server): $(cat "$RUN/units.err")"
  eval "$($PROBE server-env "$SERVER_EVAL")" || abort "server-env: $SERVER_EVAL lacks what the test needs"
  # NixOS's /var/empty (its activation script makes it), the accounts'
  # home: sshd changes into it at login.
  install -d -m 0555 "$ROOT/var/empty"
  HAVE_SERVER=1
}

# ssh/sftp/rsync as the client with ACCOUNT's key, pinned host key.
srv_ssh_opts() { echo "-i $SRVT/$1.key -o IdentitiesOnly=yes -o UserKnownHostsFile=$SRVT/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"; }
srv_ssh() { # srv_ssh KEY-ACCOUNT LOGIN-ACCOUNT COMMAND...
  local key=$1 login=$2
  shift 2
  # shellcheck disable=SC2046 # the options are words
  c ssh $(srv_ssh_opts "$key") "$login@127.0.0.1" "$@"
}
srv_sftp() { # srv_sftp BATCH-LINE: one sftp command as the sealed account
  # shellcheck disable=SC2046
  echo "$1" | c sftp -b - $(srv_ssh_opts "$SRV_SEALED") "$SRV_SEALED@127.0.0.1"
}
srv_job() { c /usr/local/bin/ciphersync -c "$SRVT/job.json" "$@"; }
# A client run as the module's units run one: in a mount namespace of
# its own (the FUSE mounts never show outside).
srv_job_unit() { CT=600 c systemd-run --quiet --wait --pipe -p PrivateMounts=yes /usr/local/bin/ciphersync -c "$SRVT/job.json" "$@"; }
stat_of() { c stat -c "$1" "$2"; }
path_unit_waiting() { [ "$(show "$1" ActiveState) $(show "$1" SubState)" = "active waiting" ]; }
timer_has_next_elapse() { [ -n "$(show "$1" NextElapseUSecRealtime)" ]; }
seal_not_running() { [ "$(show "$SRV_SEALED_UNIT.service" ActiveState)" != activating ]; }
sealed_record() { [ "$(stat_of '%U %a' "$SRV_SEALED_ROOT/records/$1.rec" 2>/dev/null)" = "root 440" ]; }

s_server_accounts() {
  [ "$HAVE_SERVER" = 1 ] || fail "$SERVER_EVAL missing (the server module's evaluation)"
  local u pw acct line shell chroot m
  # The module's users: system users in their own group, home /var/empty,
  # the shell the module wrote (which can only run serve).
  for acct in $SRV_ACCOUNTS; do
    pw=$(c getent passwd "$acct") || fail "account user $acct does not exist"
    shell=$($PROBE get "$RUN/server.manifest.json" "shells.$acct")
    [ "$(echo "$pw" | cut -d: -f6,7)" = "/var/empty:$shell" ] || fail "passwd of $acct: $pw (want home /var/empty, shell $shell)"
    [ "$(c id -gn "$acct")" = "$acct" ] || fail "$acct's group is $(c id -gn "$acct")"
    u=$(echo "$pw" | cut -d: -f3)
    [ "$u" -lt 1000 ] || fail "$acct is not a system user (uid $u)"
  done
  # tmpfiles: the plain account's dir is its own, 0700.
  [ "$(stat_of '%U %G %a' "$SRV_PLAIN_ROOT")" = "$SRV_PLAIN $SRV_PLAIN 700" ] ||
    fail "$SRV_PLAIN_ROOT is $(stat_of '%U %G %a' "$SRV_PLAIN_ROOT")"
  # Each chroot as sshd requires it (root's, writable by root only), the
  # store (here also /usr) bound read-only, and the account named in its
  # etc/ by the chroots service, alone.
  [ "$(show ciphersync-server-chroots.service Result)" = success ] ||
    fail "ciphersync-server-chroots.service: Result=$(show ciphersync-server-chroots.service Result)"
  for acct in $SRV_ACCOUNTS; do
    chroot=$(dirname "$SRV_PLAIN_CHROOT")/$acct
    [ "$(stat_of '%U %a' "$chroot")" = "root 755" ] || fail "$chroot is $(stat_of '%U %a' "$chroot")"
    for m in nix/store usr; do
      c findmnt -n -o OPTIONS "$chroot/$m" | tr , '\n' | grep -qx ro || fail "$chroot/$m is not mounted read-only"
    done
    [ "$(c cut -d: -f1 "$chroot/etc/passwd")" = "$acct" ] || fail "$chroot/etc/passwd: $(cat "$CR$chroot/etc/passwd")"
    [ "$(stat_of '%U %a' "$chroot/etc/passwd")" = "root 444" ] || fail "$chroot/etc/passwd is $(stat_of '%U %a' "$chroot/etc/passwd")"
  done
  # The seal service ran at boot (multi-user.target wants it) and prepared
  # the append-only layout: the root and records/, snapshots/ root's, the
  # account's group, 1770; the marker with the module's keepSealed.
  [ -n "$(show "$SRV_SEALED_UNIT.service" InvocationID)" ] || fail "$SRV_SEALED_UNIT.service did not run at boot"
  [ "$(show "$SRV_SEALED_UNIT.service" Result)" = success ] || fail "boot seal: Result=$(show "$SRV_SEALED_UNIT.service" Result)"
  for d in "$SRV_SEALED_ROOT" "$SRV_SEALED_ROOT/records" "$SRV_SEALED_ROOT/snapshots"; do
    [ "$(stat_of '%U %G %a' "$d")" = "root $SRV_SEALED 1770" ] || fail "$d is $(stat_of '%U %G %a' "$d") after the boot seal"
  done
  [ "$(cat "$CR$SRV_SEALED_ROOT/APPEND-ONLY")" = "$(printf 'ciphersync-server 1\nappend-only yes\nkeep-last %s\nkeep-days %s' "$SRV_KEEP_LAST" "$SRV_KEEP_DAYS")" ] ||
    fail "APPEND-ONLY: $(tr '\n' '|' <"$CR$SRV_SEALED_ROOT/APPEND-ONLY")"
  # sshd took the config with the module's Match blocks.
  c sshd -t || fail "sshd -t refuses the configuration"
  c systemctl is-active --quiet ssh.service || fail "ssh.service is $(show ssh.service ActiveState)"
  # Fresh keys in place of the sample's: units.py wrote the module's lines
  # to /etc/ssh/authorized_keys.d/<account>; each line's key is replaced by
  # a fresh one (its comment kept), as the known_hosts store file is.
  c install -d -m 0700 "$SRVT"
  for acct in $SRV_ACCOUNTS; do
    [ "$(cat "$CR/etc/ssh/authorized_keys.d/$acct")" = "$($PROBE get "$RUN/server.manifest.json" "authorized_keys.$acct" | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')" ] ||
      fail "authorized_keys.d/$acct differs from the module's keys"
    c rm -f "$SRVT/$acct.key" "$SRVT/$acct.key.pub"
    c ssh-keygen -q -t ed25519 -N '' -C "srvtest-$acct" -f "$SRVT/$acct.key"
    line=$(cut -d' ' -f1,2 "$CR$SRVT/$acct.key.pub")
    awk -v k="$line" '{ $1 = ""; $2 = ""; sub(/^ +/, ""); print k ($0 == "" ? "" : " " $0) }' \
      "$CR/etc/ssh/authorized_keys.d/$acct" >"$RUN/ak.$acct"
    c chmod 0644 "/etc/ssh/authorized_keys.d/$acct"
    cat "$RUN/ak.$acct" >"$CR/etc/ssh/authorized_keys.d/$acct"
    c chmod 0444 "/etc/ssh/authorized_keys.d/$acct"
  done
  echo "127.0.0.1 $(cut -d' ' -f1,2 "$CR/etc/ssh/ssh_host_ed25519_key.pub")" >"$CR$SRVT/known_hosts"
  # Each account's login runs serve for its own dir: the sealed one
  # answers with its marker, the plain one is not append-only.
  out=$(srv_ssh "$SRV_SEALED" "$SRV_SEALED" ciphersync-server info) || fail "ciphersync-server info as $SRV_SEALED failed: $out"
  echo "$out" | grep -qx "append-only yes" || fail "$SRV_SEALED's info: $out"
  out=$(srv_ssh "$SRV_PLAIN" "$SRV_PLAIN" ciphersync-server info) || fail "ciphersync-server info as $SRV_PLAIN failed: $out"
  echo "$out" | grep -qx "append-only no" || fail "$SRV_PLAIN's info: $out"
  # The ForceCommand runs nothing else, and a key logs in to its own
  # account only (AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u).
  if out=$(srv_ssh "$SRV_SEALED" "$SRV_SEALED" id 2>&1); then fail "the account ran id: $out"; fi
  echo "$out"
  echo "$out" | grep -q "uid=" && fail "the account ran id: $out"
  # A session sees its chroot only.
  out=$(srv_sftp "ls -1 /") || fail "sftp ls / as $SRV_SEALED failed: $out"
  echo "$out" | grep -qx "$SRV_REMOTE_ROOT" || fail "sftp ls / lacks $SRV_REMOTE_ROOT: $out"
  if echo "$out" | grep -qx "/root\|/home\|/var"; then fail "the chroot shows the host: $out"; fi
  if out=$(srv_ssh "$SRV_PLAIN" "$SRV_SEALED" ciphersync-server info 2>&1); then
    fail "$SRV_PLAIN's key logged in as $SRV_SEALED: $out"
  fi
  echo "$out" | grep -q "Permission denied" || fail "$SRV_PLAIN's key as $SRV_SEALED: $out"
}

s_server_backup_sealed() {
  [ "$HAVE_SERVER" = 1 ] || fail "$SERVER_EVAL missing"
  [ -s "$CR$SRVT/known_hosts" ] || fail "no keys (server-accounts-ready failed)"
  # The client job: the module's docs job file (as rendered, installed in
  # the container) with its target pointed at the sealed account over the
  # rsync transport, and its own source, state and key. Its own retention
  # (keep_last 1) would delete the first run: the server's word wins.
  python3 - "$CR/etc/ciphersync/docs.json" "$SRVT" "$SRV_SEALED" "$SRV_REMOTE_ROOT" >"$CR$SRVT/job.json" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))
t, acct, root = sys.argv[2], sys.argv[3], sys.argv[4]
job.update(name="srvtest", source="/srv/srvtest", state_dir="/var/lib/ciphersync-srvtest",
           runtime_dir="/run/ciphersync/srvtest", gocryptfs_config="/var/lib/ciphersync-srvtest/gocryptfs.reverse.conf",
           password_file=f"{t}/password", snapshots={"keep_last": 1})
job["target"].update(user=acct, host="127.0.0.1", port=22, path=root, transport="rsync",
                     identity_file=f"{t}/{acct}.key", known_hosts_file=f"{t}/known_hosts")
print(json.dumps(job, indent=2))
EOF
  head -c 24 /dev/urandom | base64 >"$CR$SRVT/password"
  c chmod 0400 "$SRVT/password"
  c install -d -m 0755 /srv/srvtest/reports
  echo "first version" >"$CR/srv/srvtest/reports/plan.txt"
  echo "kept" >"$CR/srv/srvtest/notes.txt"
  head -c 300000 /dev/urandom >"$CR/srv/srvtest/reports/blob.bin"
  # Files no run changes (the second run replaces or deletes 2 of 9, below
  # the job's max_delete_percent).
  for i in 1 2 3 4 5 6; do echo "unchanged $i" >"$CR/srv/srvtest/reports/same-$i.txt"; done
  c rm -rf "$SRVT/as-of-first"
  c cp -a /srv/srvtest "$SRVT/as-of-first"
  # Only the path unit may seal this run: the timer is stopped meanwhile
  # (started again in server-seal-units-healthy), the boot run is over.
  c systemctl stop "$SRV_SEALED_UNIT.timer"
  local before inv first
  # The boot run watches records/ until it has been quiet for --settle.
  wait_for "the boot seal run to finish" seal_not_running
  before=$(show "$SRV_SEALED_UNIT.service" InvocationID)
  srv_job init || fail "init failed"
  srv_job_unit backup || fail "backup to $SRV_SEALED@127.0.0.1 failed (exit $?)"
  [ "$(status_get /var/lib/ciphersync-srvtest stages.backup.outcome)" = ok ] ||
    fail "status.json backup: $(status_get /var/lib/ciphersync-srvtest stages.backup)"
  # It went through serve: the client recognised the server, and the
  # mirror was written by the account's login.
  [ "$($PROBE get "$CR/var/lib/ciphersync-srvtest/target-capabilities.json" ciphersync_server)" = true ] ||
    fail "the client did not see a ciphersync server: $(cat "$CR/var/lib/ciphersync-srvtest/target-capabilities.json")"
  [ "$(stat_of %U "$SRV_SEALED_ROOT/files/gocryptfs.conf")" = "$SRV_SEALED" ] ||
    fail "files/gocryptfs.conf belongs to $(stat_of %U "$SRV_SEALED_ROOT/files/gocryptfs.conf")"
  first=$(srv_job snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["id"])')
  [ -n "$first" ] || fail "no snapshot listed"
  echo "$first" >"$RUN/srv.first"
  # The path unit starts the seal service as the record lands.
  wait_for "the path unit to seal records/$first.rec" sealed_record "$first"
  inv=$(show "$SRV_SEALED_UNIT.service" InvocationID)
  [ -n "$inv" ] && [ "$inv" != "$before" ] || fail "the seal service did not run again (InvocationID $inv)"
  wait_for "the seal service to finish" seal_not_running
  [ "$(show "$SRV_SEALED_UNIT.service" Result)" = success ] || fail "seal Result=$(show "$SRV_SEALED_UNIT.service" Result)"
  # The record is the account's to read and nobody's to write; a snapshot
  # dir of the run (if it left one) is root's and read-only too.
  [ "$(stat_of '%U %G' "$SRV_SEALED_ROOT/records/$first.rec")" = "root $SRV_SEALED" ] || fail "record group"
  c setpriv --reuid="$SRV_SEALED" --regid="$SRV_SEALED" --clear-groups test -r "$SRV_SEALED_ROOT/records/$first.rec" ||
    fail "the account cannot read its sealed record"
  if c setpriv --reuid="$SRV_SEALED" --regid="$SRV_SEALED" --clear-groups test -w "$SRV_SEALED_ROOT/records/$first.rec"; then
    fail "the account can still write its sealed record"
  fi
  if [ -d "$CR$SRV_SEALED_ROOT/snapshots/$first" ]; then
    [ "$(stat_of '%U %a' "$SRV_SEALED_ROOT/snapshots/$first")" = "root 550" ] ||
      fail "snapshots/$first is $(stat_of '%U %a' "$SRV_SEALED_ROOT/snapshots/$first")"
  fi
  fuse_clean
}

s_server_delete_refused() {
  local first sum rec
  first=$(cat "$RUN/srv.first" 2>/dev/null) || fail "no first run (server-backup-sealed-by-path-unit failed)"
  rec=$SRV_SEALED_ROOT/records/$first.rec
  sum=$(sha1sum <"$CR$rec")
  # Control: the key logs in over sftp, sees the record, and may write
  # and delete what is its own (the mirror stays writable).
  out=$(srv_sftp "ls records") || fail "sftp ls as $SRV_SEALED failed: $out"
  echo "$out" | grep -q "$first.rec" || fail "sftp ls records lacks $first.rec: $out"
  srv_sftp "put /etc/debian_version files/cstest-control" || fail "control: sftp put into files/ failed"
  [ -f "$CR$SRV_SEALED_ROOT/files/cstest-control" ] || fail "control: the put left no file"
  srv_sftp "rm files/cstest-control" || fail "control: sftp rm of the account's own file failed"
  [ ! -e "$CR$SRV_SEALED_ROOT/files/cstest-control" ] || fail "control: the rm left the file"
  # The sealed run: every way to delete or replace it fails.
  for batch in "rm $SRV_REMOTE_ROOT/records/$first.rec" "rm records/$first.rec" "rename records/$first.rec records/x.rec" \
    "rename records records-gone" "chmod 666 records/$first.rec" "put /etc/debian_version records/$first.rec"; do
    if out=$(srv_sftp "$batch" 2>&1); then fail "sftp '$batch' succeeded: $out"; fi
    echo "refused: $batch: $(echo "$out" | tail -1)"
  done
  if [ -d "$CR$SRV_SEALED_ROOT/snapshots/$first" ]; then
    if srv_sftp "rmdir snapshots/$first"; then fail "sftp rmdir of the sealed snapshot dir succeeded"; fi
  fi
  # rsync --delete of an empty dir over records/, through serve's rsync.
  c install -d -m 0700 "$SRVT/empty"
  # shellcheck disable=SC2046
  c rsync -r --delete -e "ssh $(srv_ssh_opts "$SRV_SEALED")" "$SRVT/empty/" "$SRV_SEALED@127.0.0.1:$SRV_REMOTE_ROOT/records/" || true
  [ -f "$CR$rec" ] || fail "the sealed record is gone"
  [ "$(sha1sum <"$CR$rec")" = "$sum" ] || fail "the sealed record changed"
  [ "$(stat_of '%U %a' "$rec")" = "root 440" ] || fail "the sealed record is now $(stat_of '%U %a' "$rec")"
}

s_server_second_and_restore() {
  local first ids second
  first=$(cat "$RUN/srv.first" 2>/dev/null) || fail "no first run"
  echo "second version" >"$CR/srv/srvtest/reports/plan.txt"
  echo "new in the second run" >"$CR/srv/srvtest/added.txt"
  c rm -f /srv/srvtest/notes.txt
  srv_job_unit backup || fail "the second backup failed (exit $?)"
  [ "$(status_get /var/lib/ciphersync-srvtest stages.backup.outcome)" = ok ] ||
    fail "status.json backup: $(status_get /var/lib/ciphersync-srvtest stages.backup)"
  ids=$(srv_job snapshots --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)["snapshots"]))')
  # keep_last 1 on the client, yet both runs are there: the client's
  # retention deferred to the append-only server.
  [ "$(echo "$ids" | wc -w)" = 2 ] && [ "${ids%% *}" = "$first" ] || fail "snapshots after the second run: $ids"
  second=${ids##* }
  wait_for "the path unit to seal records/$second.rec" sealed_record "$second"
  # What the second run replaced or deleted (the first run's plan.txt and
  # notes.txt) is its snapshot dir, sealed with its record.
  [ "$(stat_of '%U %a' "$SRV_SEALED_ROOT/snapshots/$second" 2>&1)" = "root 550" ] ||
    fail "snapshots/$second is $(stat_of '%U %a' "$SRV_SEALED_ROOT/snapshots/$second" 2>&1)"
  if c setpriv --reuid="$SRV_SEALED" --regid="$SRV_SEALED" --clear-groups test -w "$SRV_SEALED_ROOT/snapshots/$second"; then
    fail "the account can write into the sealed snapshots/$second"
  fi
  out=$(srv_job prune 2>&1) || fail "prune: $out"
  echo "$out" | grep -q "append-only" || fail "prune did not defer to the server: $out"
  c rm -rf "$SRVT/first" "$SRVT/latest"
  srv_job_unit restore --snapshot "$first" --to "$SRVT/first" || fail "restore --snapshot $first failed"
  c diff -r "$SRVT/as-of-first" "$SRVT/first" || fail "restore --snapshot $first differs from the source as of the first run"
  srv_job_unit restore --to "$SRVT/latest" || fail "restore of the latest state failed"
  c diff -r /srv/srvtest "$SRVT/latest" || fail "the latest restore differs from the source"
  fuse_clean
}

s_server_units_healthy() {
  [ "$HAVE_SERVER" = 1 ] || fail "$SERVER_EVAL missing"
  local svc=$SRV_SEALED_UNIT.service path=$SRV_SEALED_UNIT.path timer=$SRV_SEALED_UNIT.timer n spec norm cal
  # The last seal run watches records/ until 10 s pass quietly (--settle);
  # meanwhile its path unit shows "running", not "waiting".
  wait_for "the last seal run to finish" seal_not_running
  c systemctl start "$timer"
  for u in "$svc" "$path" "$timer"; do
    echo "== systemctl status $u"
    c systemctl status --no-pager --full "$u" || true
    [ "$(show "$u" LoadState)" = loaded ] || fail "$u LoadState=$(show "$u" LoadState)"
    if c systemctl is-failed --quiet "$u"; then fail "$u is failed (Result=$(show "$u" Result))"; fi
    [ "$(show "$u" Result)" = success ] || fail "$u Result=$(show "$u" Result)"
  done
  [ "$(show "$svc" ExecMainStatus)" = 0 ] || fail "$svc ExecMainStatus=$(show "$svc" ExecMainStatus)"
  # Every run ended well: the boot run and the path unit's (one run may
  # seal both backups' records: it watches records/ until 10 s pass
  # quietly, --settle; a run that sealed nothing new starts none: seal
  # changes nothing that is already so, or it would trigger itself).
  n=$(c journalctl -b -u "$svc" --no-pager -o cat | grep -c "^Finished " || true)
  [ "$n" -ge 2 ] || fail "$svc finished $n times, want at least 2 (boot and the backups)"
  if c journalctl -b -u "$svc" --no-pager -o cat | grep -q "Failed with result\|Main process exited, code=exited, status=[1-9]"; then
    fail "$svc failed at some run: $(c journalctl -b -u "$svc" --no-pager -o cat | grep "Failed\|status=" | head -2 | tr '\n' '|')"
  fi
  # The path unit waits on records/ for the next run. The timer fires on
  # the hour (sealAt hourly): if it fires now, its run goes on for the
  # settle time, and meanwhile the path unit shows "running" and the timer
  # no next elapse. Both are polled, so the check holds at any time of day.
  wait_for "$path to wait again ($(show "$path" ActiveState) $(show "$path" SubState))" path_unit_waiting "$path"
  [ "$(show "$path" Triggers)" = "$svc" ] || fail "$path triggers $(show "$path" Triggers)"
  [ "$(show "$path" Paths)" = "$SRV_WATCHED (PathChanged)" ] || fail "$path watches: $(show "$path" Paths)"
  # The timer: loaded, enabled (timers.target wants it), active, with the
  # module's calendar and Persistent=.
  [ "$(show "$timer" ActiveState)" = active ] || fail "$timer ActiveState=$(show "$timer" ActiveState)"
  [ "$(show "$timer" UnitFileState)" = enabled ] || fail "$timer UnitFileState=$(show "$timer" UnitFileState)"
  [ "$(show "$timer" Triggers)" = "$svc" ] || fail "$timer triggers $(show "$timer" Triggers)"
  [ "$(show "$timer" Persistent)" = "$SRV_PERSISTENT" ] || fail "$timer Persistent=$(show "$timer" Persistent)"
  cal=$(show "$timer" TimersCalendar)
  while IFS= read -r spec; do
    norm=$(c systemd-analyze calendar "$spec" | sed -n 's/^ *Normalized form: //p')
    [[ "$cal" == *"OnCalendar=$norm ;"* ]] || fail "$timer schedule: want '$norm' ($spec), shown '$cal'"
  done <<<"$SRV_CALENDAR"
  wait_for "$timer to have a next elapse" timer_has_next_elapse "$timer"
}

server_scenarios() {
  scenario server-accounts-ready s_server_accounts
  scenario server-backup-sealed-by-path-unit s_server_backup_sealed
  scenario server-sealed-run-survives-account-key s_server_delete_refused
  scenario server-second-backup-and-restore s_server_second_and_restore
  scenario server-seal-units-healthy s_server_units_healthy
}
