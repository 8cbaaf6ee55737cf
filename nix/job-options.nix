# The job submodule shared by the NixOS and the home-manager module, the
# assertions that catch contradictory jobs, and the rendering of a job into
# the JSON job file that the helper reads (docs/design.md, "Job config file").
#
#   jobLib = import ./job-options.nix { inherit lib; };
#   jobLib.jobModule           the submodule: types.attrsOf (types.submodule jobLib.jobModule)
#   jobLib.assertionsFor o n j assertions for job `n` (config `j`) declared under option path `o`
#   jobLib.jobFile { ... }     { value, file }: the job as a Nix value and the validated file
{lib}: let
  inherit (lib) mkOption types;

  inStore = p: p == builtins.storeDir || lib.hasPrefix "${builtins.storeDir}/" p;

  # Strings, not Nix paths: a path literal such as ./secret would be copied
  # into the world-readable store, so types.str rejects it outright.
  absolutePath =
    types.addCheck types.str (lib.hasPrefix "/")
    // {
      name = "absolutePath";
      description = "absolute path (string)";
    };

  secretPath =
    types.addCheck types.str (p: lib.hasPrefix "/" p && !inStore p)
    // {
      name = "secretPath";
      description = "absolute path outside the Nix store (string)";
    };

  # "HOSTS KEYTYPE KEY [COMMENT]", optionally after a marker such as
  # @cert-authority; a bare "KEYTYPE KEY" (a .pub file) is refused because ssh
  # would never match it against the host.
  knownHostsLine =
    types.strMatching "(@[a-z-]+ )?[^[:space:]]+ [^[:space:]]+ [^[:space:]]+( [^\n]*)?"
    // {
      description = "known_hosts line (\"HOSTS KEYTYPE BASE64KEY [COMMENT]\")";
    };

  # nixpkgs' unitNameType (nixos/lib/systemd-lib.nix), the type of NixOS's
  # own onFailure: what it refuses is refused here, at the job.
  unitName =
    types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)"
    // {
      description = "systemd unit name with its type suffix";
    };

  # nixpkgs' utils.escapeSystemdExecArg(s) (nixos/lib/utils.nix), which the
  # home-manager module cannot reach: each argument JSON-quoted (systemd
  # accepts C-style quoting), "%" and "$" doubled so that systemd expands
  # no specifier and no variable.
  escapeSystemdExecArg = arg: let
    s =
      if builtins.isPath arg
      then "${arg}"
      else if builtins.isString arg
      then arg
      else if builtins.isInt arg || builtins.isFloat arg || lib.isDerivation arg
      then toString arg
      else throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
  in
    lib.replaceStrings ["%" "$"] ["%%" "$$"] (builtins.toJSON s);
  escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;

  calendar = types.either types.str (types.listOf types.str);

  startAtOption = default: what:
    mkOption {
      type = calendar;
      inherit default;
      example = "*-*-* 03:15:00";
      description = ''
        When to run ${what}: a systemd calendar expression (OnCalendar=, see
        systemd.time(7)) or a list of them. An empty list creates no timer; the
        unit can still be started by hand.
      '';
    };

  # The target is one of two kinds, a tagged union (types.attrTag): exactly
  # one of `sftp` and `local`, each with only the options that apply to it,
  # so a local target cannot carry an ssh option at all.
  pathOption = where:
    mkOption {
      type = absolutePath;
      example = "/home/backups/docs";
      description = ''
        Absolute directory that holds `files/`, `snapshots/`, `checksums/`
        and `records/`, ${where}.
      '';
    };

  # rsync's --bwlimit, for both kinds of target (target.bwlimit in the job file).
  bwlimitOption = mkOption {
    type = types.nullOr (types.ints.between 1 4194304);
    default = null;
    example = 2048;
    description = ''
      Upper bound of the backup's transfer rate in KiB/s (rsync's
      `--bwlimit`), for the whole job: with several sshfs workers each gets
      its share. `null`: no bound. Restore is never limited.
    '';
  };

  # When the target's free space is low (target.space_warning_percent).
  spaceWarningOption = mkOption {
    type = types.ints.between 0 99;
    default = 10;
    example = 5;
    description = ''
      Below this share of free space on the target (in percent of its
      file system), each backup and prune logs a warning, `ciphersync
      status` shows one and the metric `ciphersync_target_space_low` is 1.
      `0`: never. The space is measured after each backup and prune
      (`df` on a server with a shell, else the SFTP server's statvfs; a
      server with neither says nothing).
    '';
  };

  sftpModule = {
    options = {
      bwlimit = bwlimitOption;
      spaceWarningPercent = spaceWarningOption;
      host = mkOption {
        type = types.str;
        example = "u123456.your-storagebox.de";
        description = "SSH host name or address of the SFTP server.";
      };
      port = mkOption {
        type = types.port;
        default = 22;
        example = 23;
        description = "SSH port of the SFTP server.";
      };
      user = mkOption {
        type = types.str;
        example = "u123456";
        description = "SSH user on the SFTP server.";
      };
      path = pathOption "on the server";
      identityFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/var/lib/ciphersync/docs/id_ed25519";
        description = ''
          Private ssh key for the server. Never a store path (the store is
          world-readable). `null` uses ssh's default keys of the user that runs
          the job.
        '';
      };
      knownHosts = mkOption {
        type = types.listOf knownHostsLine;
        default = [];
        example = [
          "[u123456.your-storagebox.de]:23 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIICf9svRenC/PLKIL9nk6K/pxQgoiFC41wTNvoIncOxs"
        ];
        description = ''
          The server's host keys as known_hosts lines; at least one is
          required (host keys are always checked). Public data: they are
          written to a known_hosts file in the Nix store. Get them with
          `ssh-keyscan -p PORT HOST` and compare the fingerprint
          (`ssh-keygen -lf FILE`) with the one your provider publishes. For a
          port other than 22 the host is written `[HOST]:PORT`.
        '';
      };
      transport = mkOption {
        type = types.enum [
          "sshfs"
          "rsync"
        ];
        default = "sshfs";
        example = "rsync";
        description = ''
          `sshfs`: mount the remote and rsync into the mount (works with
          SFTP-only servers). `rsync`: rsync over ssh (faster; the server must
          run rsync).
        '';
      };
      remoteChecksums = mkOption {
        type = types.enum [
          "auto"
          "ssh"
          "mount"
        ];
        default = "auto";
        example = "mount";
        description = ''
          How verify computes the remote sha1s. `auto`: on the server when the
          account allows it (a shell, or a whitelisted `sha1sum`), else by
          reading through the sshfs mount; the first contact finds out.
          `ssh`: on the server, and an error if the account cannot.
          `mount`: always read the files through the sshfs mount.
        '';
      };
      connections = mkOption {
        type = types.ints.between 1 16;
        default = 4;
        example = 8;
        description = ''
          With the `sshfs` transport: sshfs connections, and rsync workers
          over them (4 per connection, at most 16) that back up balanced
          lists of directories (at any depth) side by side; a restore from a
          local stage copies out with this many workers. Over sshfs one
          rsync waits several round trips per file; more workers pay off on
          a distant server.
        '';
      };
      maxConnections = mkOption {
        type = types.ints.between 2 64;
        default = 10;
        example = 6;
        description = ''
          The most ssh sessions a stage holds on the account at once: the
          sshfs connections and one command (or the `rsync` transport's
          rsync) beside them. `connections` is cut to fit, with one line
          saying so. The default suits OpenSSH's `MaxSessions` and a storage
          box that allows 10 connections per account; lower it by what else
          uses the account meanwhile (a `ciphersync mount` takes 1).
        '';
      };
    };
  };

  localModule = {
    options.path = pathOption "on this machine (a disk that is already mounted)";
    options.bwlimit = bwlimitOption;
    options.spaceWarningPercent = spaceWarningOption;
  };

  targetType = types.attrTag {
    sftp = mkOption {
      type = types.submodule sftpModule;
      description = "An SFTP account reached over ssh.";
    };
    local = mkOption {
      type = types.submodule localModule;
      description = "A directory on a disk that is already mounted (no ssh involved).";
    };
  };

  # "sftp" or "local", and that kind's options.
  targetKind = job:
    if job.target ? sftp
    then "sftp"
    else "local";
  targetOf = job: job.target.${targetKind job};

  snapshotsModule = {
    options = {
      keepLast = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 30;
        description = "Keep at least the newest N snapshots; `null`: no bound by count.";
      };
      keepDays = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 90;
        description = ''
          Keep the snapshots of the last N days; `null`: no bound by age. A
          snapshot is deleted when it falls outside both bounds that are set;
          with both `null` every snapshot is kept.
        '';
      };
    };
  };

  jobModule = {name, ...}: {
    options = {
      source = mkOption {
        type = absolutePath;
        example = "/srv/docs";
        description = "Plaintext directory to back up. It is only read.";
      };
      exclude = mkOption {
        type = types.listOf types.str;
        default = [];
        example = [
          "*.tmp"
          "cache/"
        ];
        description = "Paths to leave out of the backup: gitignore-style wildcard patterns relative to `source`, applied by `gocryptfs -reverse -exclude-wildcard` (so excluded files never enter the encrypted view).";
      };
      sourceSnapshot = mkOption {
        type = types.nullOr (
          types.enum [
            "btrfs"
            "zfs"
            "lvm"
          ]
        );
        default = null;
        example = "btrfs";
        description = ''
          Back up a read-only file system snapshot of `source`, taken at
          the start of each backup and removed at its end (the job file's
          `source_snapshot`, see the README's "Consistent sources"), instead
          of the live tree. `btrfs`: a snapshot of the subvolume holding
          the source, in `<parent of source>/.ciphersync-snapshots/<job>`
          (the NixOS module creates that directory and lets the units write
          there and nowhere else). `zfs`, `lvm`: a snapshot of the dataset
          or logical volume, mounted at `<runtime dir>/source`; these need
          root, so only NixOS jobs with `user = "root"` may use them. The
          units get the tools (btrfs-progs, zfs, lvm2 and util-linux) and,
          for these jobs only, the device access the kind needs.
          A non-root btrfs job needs a subvolume the user owns, mounted with
          `user_subvol_rm_allowed` (deleting a snapshot needs root
          otherwise). `null`: the live tree.
        '';
      };
      passwordFile = mkOption {
        type = secretPath;
        example = "/run/keys/ciphersync-${name}";
        description = ''
          File holding the gocryptfs password, readable only by the user that
          runs the job: a sops-nix or agenix secret, or a root-only file.
          Never a store path (the store is world-readable). Losing it loses
          the backup.
        '';
      };
      filenames = mkOption {
        type = types.enum [
          "encrypted"
          "plaintext"
          "deterministic"
        ];
        default = "encrypted";
        example = "deterministic";
        description = ''
          File name mode passed to `gocryptfs -init` when the gocryptfs
          config is created; changing it later has no effect on an existing
          config.
        '';
      };
      target = mkOption {
        type = targetType;
        example = {
          sftp = {
            host = "u123456.your-storagebox.de";
            port = 23;
            user = "u123456";
            path = "/home/backups/docs";
            knownHosts = ["[u123456.your-storagebox.de]:23 ssh-ed25519 AAAA..."];
          };
        };
        description = ''
          Where the encrypted copy goes: exactly one of `sftp` (an SFTP
          account) or `local` (a directory on a mounted disk).
        '';
      };
      snapshots = mkOption {
        type = types.submodule snapshotsModule;
        default = {};
        example = {
          keepLast = 30;
          keepDays = 90;
        };
        description = "Retention of the snapshots (the versions each backup replaced or deleted).";
      };
      maxDeletePercent = mkOption {
        type = types.ints.between 0 100;
        default = 50;
        example = 90;
        description = ''
          Deletion guard: a backup refuses to run when it would move more
          than this share (percent) of the remote files into a snapshot, as
          when the source is an empty, unmounted disk.
        '';
      };
      startAt = startAtOption "daily" "the backup";
      verify = mkOption {
        type = types.submodule {
          options.startAt = startAtOption "weekly" "the fast restore test";
          options.sampleBytes = mkOption {
            type = types.nullOr (types.ints.between 0 4611686018427387903);
            default = null;
            example = 1073741824;
            description = ''
              Bytes of remote files each verify reads back through sshfs and
              compares (the possession check: a server cannot answer it
              without the data). null: 1 % of the data, at most 256 MiB; 0
              turns it off.
            '';
          };
        };
        default = {};
        example = {
          startAt = "Sun *-*-* 05:00:00";
        };
        description = "The fast restore test (sha1 of the local encrypted view against the remote).";
      };
      deepVerify = mkOption {
        type = types.submodule {options.startAt = startAtOption "monthly" "the deep restore test";};
        default = {};
        example = {
          startAt = "*-*-01 06:00:00";
        };
        description = "The deep restore test (decrypt the local encrypted view and compare with the source).";
      };
      persistentTimer = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = "Persistent= of the timers: run a missed start as soon as the machine is up again.";
      };
      randomizedDelaySec = mkOption {
        type = types.str;
        default = "30m";
        example = "0";
        description = "RandomizedDelaySec= of the timers: a random delay up to this span (systemd.time(7)).";
      };
      onFailure = mkOption {
        type = types.listOf unitName;
        default = [];
        example = ["notify-admin.service"];
        description = "Units started when a stage fails (OnFailure= of each of the job's services).";
      };
      preHook = mkOption {
        type = types.lines;
        default = "";
        example = "btrfs subvolume snapshot -r /srv/docs /srv/.snapshots/docs-ciphersync";
        description = ''
          Shell commands (bash, `set -euo pipefail`) run before each backup
          (ExecStartPre=, after the start ping, before `init`). If they fail,
          the backup does not run and the unit fails. On NixOS they run as
          root outside the unit's sandbox (the `+` prefix), so that they can
          take a snapshot or stop a service; with home-manager as the user.
          `$CIPHERSYNC_JOB` holds the job name.
        '';
      };
      postHook = mkOption {
        type = types.lines;
        default = "";
        example = "btrfs subvolume delete /srv/.snapshots/docs-ciphersync";
        description = ''
          Shell commands (bash, `set -euo pipefail`) run after each backup
          (ExecStopPost=), also after a failed one or a failed `preHook`,
          with the same privileges as `preHook`. `$CIPHERSYNC_OUTCOME` is
          `success`, `partial` (exit 4: some source files could not be
          read, see `partialIsFailure`), `failure` or `skipped` (another
          stage held the job's lock: the run is retried), `$CIPHERSYNC_EXIT_STATUS` the helper's
          exit status or the signal that ended it (empty when it did not
          run, as after a failed preHook), `$CIPHERSYNC_JOB` the job name. A failing postHook
          fails the unit.
        '';
      };
      partialIsFailure = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Whether a `partial` backup (exit 4: everything that could be read
          is backed up and restorable, but some source files could not be
          read, e.g. permission denied or vanished while read) fails the
          backup unit. By default it does not: SuccessExitStatus=4 keeps
          the unit green and `onFailure` quiet, so that a file that
          vanishes every night does not teach admins to ignore red units;
          the journal names the files, `$CIPHERSYNC_OUTCOME` is `partial`
          and the metrics say `outcome="partial"` and count them
          (`ciphersync_backup_unreadable_files`). `true`: the unit fails,
          `onFailure` fires and the ping reports exit 4.
        '';
      };
      nice = mkOption {
        type = types.ints.between (-20) 19;
        default = 10;
        example = 0;
        description = "Nice= of the job's units: CPU priority of every stage (19 is the lowest).";
      };
      ioSchedulingClass = mkOption {
        type = types.enum [
          "realtime"
          "best-effort"
          "idle"
        ];
        default = "idle";
        example = "best-effort";
        description = ''
          IOSchedulingClass= of the job's units: `idle` reads the source only
          when no other process wants the disk (with the BFQ or CFQ I/O
          scheduler; others ignore it).
        '';
      };
      inhibitsSleep = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Hold a systemd sleep inhibitor while the backup runs
          (`systemd-inhibit --what=sleep --mode=block` around ExecStart=, as
          nixpkgs' restic module does). A job whose user is not root needs
          polkit's permission to block sleep (the default policy grants it).
        '';
      };
      maxRuntime = mkOption {
        type = types.str;
        default = "12h";
        example = "infinity";
        description = ''
          TimeoutStartSec= of the backup unit (systemd.time(7)): a backup
          still running after this span (hooks and pings included) is
          stopped as `systemctl stop` would, and the unit fails with result
          `timeout`. `infinity`: no bound.
        '';
      };
      waitForTarget = mkOption {
        type = types.nullOr (types.ints.between 0 1440);
        default = null;
        example = 10;
        description = ''
          Minutes a backup waits for its target before it gives up
          (`backup --wait-for-target`): a TCP connect to the sftp host and
          port, or a local target's directory, probed with a growing pause
          (1 s doubling to at most 60 s), for timers that fire right after
          resume or boot. The wait counts against `maxRuntime`. `null`: fail
          at once.
        '';
      };
      monitoring.pingUrl = mkOption {
        type = types.nullOr (types.strMatching "https?://[^[:space:]]+");
        default = null;
        example = "https://hc-ping.com/0b54cd0e-61ac-4a7c-9a2b-7b9b6d4b1c3e";
        description = ''
          A healthchecks.io-style URL pinged with curl around each backup:
          `<url>/start` before it, `<url>` after a success (a `partial`
          run is one unless `partialIsFailure`), `<url>/<exit
          status>` after a failure (`<url>/fail` when the helper did not run,
          as after a failed preHook, or was ended by a signal or a timeout). Nothing after a skipped run (exit 75). A
          ping that fails never fails the backup. The URL is not a secret
          to the module: it is written into the unit file (world-readable).
        '';
      };
    };
  };

  pathInside = parent: p: p == parent || lib.hasPrefix "${lib.removeSuffix "/" parent}/" p;

  assertionsFor = optionPath: name: job: let
    t = targetOf job;
    sftp = targetKind job == "sftp";
    at = "${optionPath}.${name}";
  in [
    {
      assertion = builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" name != null;
      message = "${at}: a job name may only hold letters, digits, '_', '-' and '.', and starts with a letter or digit (it names units and files).";
    }
    {
      assertion = !sftp || job.filenames != "plaintext";
      message = "${at}.filenames: \"plaintext\" is only for local targets: plaintext names keep symlink targets as they are, and sshfs (used by backup and restore) cannot read back a symlink pointing outside the mount. Use \"encrypted\" or \"deterministic\".";
    }
    {
      assertion = !sftp || t.knownHosts != [];
      message = "${at}.target.sftp.knownHosts: an sftp target needs the server's host key line(s); host keys are always checked. Get them with `ssh-keyscan -p ${toString t.port} ${t.host}` and check the fingerprint.";
    }
    {
      assertion = job.sourceSnapshot != "btrfs" || job.source != "/";
      message = "${at}.sourceSnapshot: \"btrfs\" cannot snapshot the source `/`: the snapshot lies next to the source, in its parent directory, and `/` has none. Back up a subvolume below it (e.g. /home).";
    }
    {
      assertion = sftp || !(pathInside job.source t.path || pathInside t.path job.source);
      message = "${at}: the local target.local.path (${t.path}) and source (${job.source}) must not contain each other.";
    }
  ];

  # Where a btrfs `sourceSnapshot` lies: next to the source, in its parent
  # (src/source_snapshot.rs, btrfs_layout; the helper resolves symlinks in
  # `source`, this does not).
  btrfsSnapshotDir = job: let
    source = lib.removeSuffix "/" job.source;
    parent = dirOf source;
  in
    if parent == "/"
    then "/.ciphersync-snapshots"
    else "${parent}/.ciphersync-snapshots";

  # The tools a job's `sourceSnapshot` runs (mount/umount for zfs and lvm,
  # which mount the snapshot); `zfs`: the system's own ZFS userland where
  # the NixOS zfs module sets one, so that it matches the kernel module.
  snapshotTools = {
    pkgs,
    job,
    zfs ? pkgs.zfs,
  }:
    lib.optionals (job.sourceSnapshot != null)
    {
      btrfs = [pkgs.btrfs-progs];
      zfs = [
        zfs
        pkgs.util-linux
      ];
      lvm = [
        pkgs.lvm2
        pkgs.util-linux
      ];
    }.${
      job.sourceSnapshot
    };

  # `runtimeDir = null` leaves runtime_dir out of the file: the helper then
  # uses $XDG_RUNTIME_DIR/ciphersync/<name> (home-manager, where the uid is
  # not known at evaluation time).
  #
  # `credentials = true` (NixOS): the units receive the password and the
  # identity as systemd credentials (LoadCredential=, see `loadCredential`
  # below) and the job file names them: inside a unit the helper reads
  # $CREDENTIALS_DIRECTORY/<name>; run by hand (no $CREDENTIALS_DIRECTORY),
  # it reads password_file and identity_file as before.
  render = {
    name,
    job,
    stateDir,
    runtimeDir,
    knownHostsFile,
    credentials ? false,
  }: let
    t = targetOf job;
  in
    {
      version = 1;
      inherit name;
      inherit (job) source exclude filenames;
      password_file = job.passwordFile;
      # In the state dir, not the default <source>/.gocryptfs.reverse.conf:
      # the units see the source read-only (ProtectSystem=strict, or a
      # non-root user that may only read it).
      gocryptfs_config = "${stateDir}/gocryptfs.reverse.conf";
      target =
        if targetKind job == "sftp"
        then
          {
            type = "sftp";
            inherit
              (t)
              host
              port
              user
              path
              transport
              ;
            known_hosts_file = knownHostsFile;
            remote_checksums = t.remoteChecksums;
            inherit (t) connections;
            max_connections = t.maxConnections;
            space_warning_percent = t.spaceWarningPercent;
          }
          // lib.optionalAttrs (t.identityFile != null) {identity_file = t.identityFile;}
          // lib.optionalAttrs (credentials && t.identityFile != null) {identity_credential = "identity";}
          // lib.optionalAttrs (t.bwlimit != null) {inherit (t) bwlimit;}
        else
          {
            type = "local";
            inherit (t) path;
            space_warning_percent = t.spaceWarningPercent;
          }
          // lib.optionalAttrs (t.bwlimit != null) {inherit (t) bwlimit;};
      snapshots = {
        keep_last = job.snapshots.keepLast;
        keep_days = job.snapshots.keepDays;
      };
      max_delete_percent = job.maxDeletePercent;
      state_dir = stateDir;
    }
    // lib.optionalAttrs credentials {password_credential = "password";}
    // lib.optionalAttrs (job.sourceSnapshot != null) {source_snapshot = job.sourceSnapshot;}
    // lib.optionalAttrs (job.verify.sampleBytes != null) {verify.sample_bytes = job.verify.sampleBytes;}
    // lib.optionalAttrs (runtimeDir != null) {runtime_dir = runtimeDir;};

  # The job file, validated at build time by the helper itself: a job the
  # helper would refuse fails the system build, not the first backup.
  # check-config only reads the file, so it runs in the build sandbox where
  # the paths the job names do not exist.
  jobFile = {
    pkgs,
    package,
    name,
    job,
    stateDir,
    runtimeDir ? null,
    credentials ? false,
  }: let
    knownHostsFile =
      if targetKind job == "sftp"
      then "${pkgs.writeText "ciphersync-${name}-known_hosts" (lib.concatLines job.target.sftp.knownHosts)}"
      else null;
    value = render {
      inherit
        name
        job
        stateDir
        runtimeDir
        knownHostsFile
        credentials
        ;
    };
    unchecked = (pkgs.formats.json {}).generate "ciphersync-${name}-unchecked.json" value;
  in {
    inherit value;
    file = pkgs.runCommand "ciphersync-${name}.json" {passthru.jobConfig = value;} ''
      ${package}/bin/ciphersync check-config ${unchecked}
      cp ${unchecked} $out
    '';
  };

  # LoadCredential= lines of a job's units: the credential names the job
  # file gives with `credentials = true`.
  loadCredential = job:
    ["password:${job.passwordFile}"]
    ++ lib.optional (targetKind job == "sftp" && job.target.sftp.identityFile != null)
    "identity:${job.target.sftp.identityFile}";

  # What both modules put around the helper's commands: scheduling of every
  # stage, and for the backup the hooks, the pings, the sleep inhibitor and
  # the time bound. Every command is an Exec* line, one to one (no
  # Nix-built script), so that tests/systemd runs exactly these lines.
  # `hookPrefix`: "+" on NixOS (the hooks run with full privileges, outside
  # the sandbox), "" in home-manager (the user's manager has none).
  # Exit 4 (`partial`: some source files could not be read) counts as a
  # success of the backup unit unless the job says otherwise
  # (partialIsFailure): SuccessExitStatus= values of a stage.
  partialExitStatus = job: stage:
    lib.optional (stage.suffix == "backup" && !job.partialIsFailure) "4";

  schedulingOf = job: {
    Nice = job.nice;
    IOSchedulingClass = job.ioSchedulingClass;
  };

  backupUnit = {
    pkgs,
    name,
    job,
    hookPrefix,
    init,
    backup,
  }: let
    bash = "${pkgs.bash}/bin/bash";
    url = job.monitoring.pingUrl;
    # $1: the URL, $2: start or end. systemd gives ExecStopPost= commands
    # $SERVICE_RESULT and $EXIT_STATUS (systemd.exec(5)). Exit 75 (another
    # stage holds the lock, the unit retries) ends nothing: no end ping.
    pingScript = ''
      url=$1
      case $2 in
      start) url=$url/start ;;
      *)
        [ "''${EXIT_STATUS:-}" != 75 ] || exit 0
        if [ "''${SERVICE_RESULT:-}" != success ]; then
          case ''${EXIT_STATUS:-} in
          "" | *[!0-9]*) url=$url/fail ;;
          *) url=$url/$EXIT_STATUS ;;
          esac
        fi
        ;;
      esac
      exec ${pkgs.curl}/bin/curl -fsS -m 10 --retry 3 -o /dev/null -- "$url"
    '';
    # "-": a failed ping never fails the backup.
    ping = phase: "-" + escapeSystemdExecArgs [bash "-c" pingScript "ciphersync-${name}-ping" url phase];
    hookPrelude = ''
      export CIPHERSYNC_JOB=${lib.escapeShellArg name}
    '';
    postPrelude = ''
      if [ "''${EXIT_STATUS:-}" = 75 ]; then
        CIPHERSYNC_OUTCOME=skipped
      elif [ "''${EXIT_STATUS:-}" = 4 ]; then
        CIPHERSYNC_OUTCOME=partial
      elif [ "''${SERVICE_RESULT:-}" = success ]; then
        CIPHERSYNC_OUTCOME=success
      else
        CIPHERSYNC_OUTCOME=failure
      fi
      CIPHERSYNC_EXIT_STATUS=''${EXIT_STATUS:-}
      export CIPHERSYNC_OUTCOME CIPHERSYNC_EXIT_STATUS
    '';
    hook = what: text:
      hookPrefix + escapeSystemdExecArgs [bash "-euo" "pipefail" "-c" text "ciphersync-${name}-${what}"];
    inhibit = [
      "${pkgs.systemd}/bin/systemd-inhibit"
      "--mode=block"
      "--what=sleep"
      "--who=ciphersync"
      "--why=Backup of ${job.source} (job ${name})"
    ];
  in
    {
      ExecStartPre =
        lib.optional (url != null) (ping "start")
        ++ lib.optional (job.preHook != "") (hook "pre-hook" (hookPrelude + job.preHook))
        ++ [(escapeSystemdExecArgs init)];
      ExecStart = escapeSystemdExecArgs (lib.optionals job.inhibitsSleep inhibit ++ backup);
      TimeoutStartSec = job.maxRuntime;
    }
    // (let
      stopPost =
        lib.optional (job.postHook != "") (hook "post-hook" (hookPrelude + postPrelude + job.postHook))
        ++ lib.optional (url != null) (ping "end");
    in
      lib.optionalAttrs (stopPost != []) {ExecStopPost = stopPost;});

  # The three stages of a job: unit name suffix, CLI arguments, timer.
  stages = job: [
    {
      suffix = "backup";
      what = "backup";
      args =
        ["backup"]
        ++ lib.optionals (job.waitForTarget != null) [
          "--wait-for-target"
          (toString job.waitForTarget)
        ];
      startAt = job.startAt;
    }
    {
      suffix = "verify";
      what = "restore test";
      args = ["verify"];
      startAt = job.verify.startAt;
    }
    {
      suffix = "deep-verify";
      what = "deep restore test";
      args = [
        "verify"
        "--deep"
      ];
      startAt = job.deepVerify.startAt;
    }
  ];
in {
  inherit
    jobModule
    assertionsFor
    render
    jobFile
    stages
    escapeSystemdExecArgs
    targetKind
    targetOf
    loadCredential
    schedulingOf
    partialExitStatus
    backupUnit
    btrfsSnapshotDir
    snapshotTools
    ;
  types = {
    inherit
      absolutePath
      secretPath
      knownHostsLine
      unitName
      ;
  };
}
