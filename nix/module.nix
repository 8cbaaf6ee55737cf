# NixOS module: services.ciphersync.{package,jobs}.
#
# Per job <name>: /etc/ciphersync/<name>.json (validated at build time), and
# the oneshot services ciphersync-<name>-{backup,verify,deep-verify}, each
# with a timer. State (gocryptfs config, status.json, lock) lives in
# /var/lib/ciphersync/<name>, the mount points in /run/ciphersync/<name>.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.ciphersync;
  jobLib = import ./job-options.nix {inherit lib;};

  stateDir = name: "/var/lib/ciphersync/${name}";
  runtimeDir = name: "/run/ciphersync/${name}";
  configFile = name: "/etc/ciphersync/${name}.json";

  jobFileOf = name: job:
    jobLib.jobFile {
      inherit pkgs name job;
      inherit (cfg) package;
      stateDir = stateDir name;
      runtimeDir = runtimeDir name;
      credentials = true;
    };

  helperArgs = name: file:
    [
      "-c"
      file
    ]
    ++ metricsArgs name;

  # systemd's quoting, not a shell's (nixpkgs' utils.escapeSystemdExecArgs).
  ciphersync = args: jobLib.escapeSystemdExecArgs (["${cfg.package}/bin/ciphersync"] ++ args);

  # The node exporter's textfile directory, when this machine runs the node
  # exporter with its textfile collector (on by default): nixpkgs has no
  # option for the directory, it is the --collector.textfile.directory flag
  # in extraFlags ("--flag=DIR", "--flag DIR", or the flag and DIR as two
  # list elements). `or`: evaluates without the prometheus options, too.
  nodeExporter = config.services.prometheus.exporters.node or {};
  textfileFlag = "--collector.textfile.directory";
  textfileDirIn = flags:
    if flags == []
    then null
    else let
      flag = lib.head flags;
      rest = lib.tail flags;
    in
      if flag == textfileFlag
      then
        (
          if rest == []
          then null
          else lib.head rest
        )
      else if lib.hasPrefix "${textfileFlag}=" flag
      then lib.removePrefix "${textfileFlag}=" flag
      else if lib.hasPrefix "${textfileFlag} " flag
      then lib.removePrefix "${textfileFlag} " flag
      else textfileDirIn rest;
  nodeTextfileDirectory =
    if (nodeExporter.enable or false) && !(lib.elem "textfile" (nodeExporter.disabledCollectors or []))
    then textfileDirIn (nodeExporter.extraFlags or [])
    else null;
  metricsDir = cfg.metrics.textfileDirectory;
  metricsArgs = name:
    lib.optionals (metricsDir != null) [
      "--metrics-file"
      "${metricsDir}/ciphersync-${name}.prom"
    ];

  # systemd.exec(5): for a process without CAP_SYS_ADMIN (any User= other
  # than root) each of these settings installs a seccomp filter and therefore
  # implies NoNewPrivileges=yes. NoNewPrivileges makes the kernel ignore the
  # setuid bit of /run/wrappers/bin/fusermount3, and a non-root user cannot
  # mount FUSE without it. So these are set for root jobs only; non-root jobs
  # keep the mount-namespace, device and capability confinement below.
  seccompHardening = job: {
    NoNewPrivileges = true; # root mounts FUSE itself (mount(2)), it execs no setuid helper
    ProtectKernelTunables = true; # /proc/sys, /sys read-only: FUSE tools only read /proc/self/mountinfo
    ProtectKernelModules = true; # no module loading; the fuse module is loaded at boot (boot.kernelModules)
    ProtectKernelLogs = true; # no tool reads the kernel log
    ProtectClock = true; # no tool sets the clock (also implies DeviceAllow=char-rtc r)
    ProtectHostname = true; # nothing sets the host name
    LockPersonality = true; # nothing changes the execution domain
    MemoryDenyWriteExecute = true; # Rust, Go (gocryptfs) and C (sshfs, rsync, ssh) need no W+X memory
    RestrictRealtime = true; # no realtime scheduling
    RestrictNamespaces = true; # the unit's mount namespace is made by systemd before exec; the tools create none
    # AF_UNIX: fusermount3 hands the /dev/fuse fd back over a socketpair
    # (_FUSE_COMMFD) and the helper talks to its children over pipes and
    # sockets. AF_INET/AF_INET6: ssh to the server. AF_NETLINK: glibc's
    # getaddrinfo(AI_ADDRCONFIG) asks the kernel which address families are
    # configured.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    SystemCallArchitectures = "native"; # all tools are native binaries
    # @system-service lacks @mount: mount(2)/umount2(2) are what FUSE needs
    # (gocryptfs and sshfs mount directly as root; fusermount3 -u unmounts).
    SystemCallFilter = [
      "@system-service"
      "@mount"
    ];
    # A syscall outside the filter fails with EPERM instead of killing the
    # process, so a tool's optional fast path (e.g. splice in libfuse) falls
    # back instead of leaving a dead FUSE daemon behind.
    SystemCallErrorNumber = "EPERM";
    # rsync -a recreates setuid/setgid bits of source files on a local target;
    # on an sftp target the server's sftp-server creates the files.
    RestrictSUIDSGID = jobLib.targetKind job == "sftp";
    # Root keeps the capabilities FUSE mounting (CAP_SYS_ADMIN), reading any
    # source (CAP_DAC_*) and preserving owners on a local target (CAP_CHOWN,
    # CAP_FOWNER, CAP_FSETID, CAP_MKNOD) need; these it never needs.
    CapabilityBoundingSet =
      "~"
      + lib.concatStringsSep " " [
        "CAP_SYS_MODULE"
        "CAP_SYS_TIME"
        "CAP_SYS_BOOT"
        "CAP_SYS_PTRACE"
        "CAP_SYS_RAWIO"
        "CAP_SYS_PACCT"
        "CAP_SYS_TTY_CONFIG"
        "CAP_NET_ADMIN"
        "CAP_NET_RAW"
        "CAP_MAC_ADMIN"
        "CAP_MAC_OVERRIDE"
        "CAP_AUDIT_CONTROL"
        "CAP_AUDIT_WRITE"
        "CAP_WAKE_ALARM"
        "CAP_SYSLOG"
        "CAP_BPF"
        "CAP_PERFMON"
        "CAP_LINUX_IMMUTABLE"
        "CAP_LEASE"
        "CAP_BLOCK_SUSPEND"
      ];
  };

  userConfinement = {
    # No NoNewPrivileges (nor anything implying it, see above): fusermount3
    # is setuid root.
    NoNewPrivileges = false;
    # Read every file of the source without owning it. Ambient, so gocryptfs
    # -reverse (a plain exec of the helper) inherits it.
    AmbientCapabilities = ["CAP_DAC_READ_SEARCH"];
    # The bounding set also caps what the setuid fusermount3 may use:
    # CAP_SYS_ADMIN for mount(2)/umount2(2) of /dev/fuse mounts.
    CapabilityBoundingSet = [
      "CAP_DAC_READ_SEARCH"
      "CAP_SYS_ADMIN"
    ];
  };

  # What a job's `sourceSnapshot` needs from its units, beyond the sandbox
  # below; every stage gets it, since any stage may have to remove a
  # snapshot a killed run left (src/source_snapshot.rs, remove_stale).
  # The snapshot is mounted (zfs, lvm) in the runtime dir, which the units
  # already write, inside their own mount namespace (PrivateMounts=).
  snapshotSandbox = job: let
    kind = job.sourceSnapshot;
  in
    {
      readWritePaths = [];
      devicePolicy = "closed";
      deviceAllow = [];
    }
    // (
      if kind == "btrfs"
      then {
        # The snapshot directory next to the source, created by tmpfiles
        # (below): the only place in the source's file system the units
        # may write. "-": the source's file system not mounted yet fails
        # in the helper, which names it, not at namespace setup.
        readWritePaths = ["-${jobLib.btrfsSnapshotDir job}"];
      }
      else if kind == "zfs"
      then {
        # zfs(8) talks to the kernel module through /dev/zfs.
        deviceAllow = ["/dev/zfs rw"];
      }
      else if kind == "lvm"
      then {
        # lvm2 scans every block device for physical volumes and creates
        # the snapshot's device-mapper devices (/dev/mapper/control,
        # dm-*): which disks those are is the machine's, so the device
        # cgroup is lifted for this job only (DevicePolicy=auto with no
        # DeviceAllow= allows every device).
        devicePolicy = "auto";
        # lvm2's lock files, its hints and its metadata backups and
        # archives (locking_dir under /run/lock, /run/lvm, backup_dir).
        readWritePaths = [
          "/run/lock"
          "-/run/lvm"
          "-/etc/lvm"
        ];
      }
      else {}
    );

  # Directories the snapshot kinds need before any unit starts.
  snapshotTmpfiles = job:
    lib.optional (job.sourceSnapshot == "btrfs")
    "d ${jobLib.btrfsSnapshotDir job} 0700 ${job.user} - -"
    ++ lib.optional (job.sourceSnapshot == "lvm") "d /run/lvm 0700 root root -";

  serviceOf = name: job: stage: let
    isRoot = job.user == "root";
    local = jobLib.targetKind job == "local";
    file = configFile name;
    snapshot = snapshotSandbox job;
  in {
    description = "ciphersync ${stage.what} of ${job.source} (job ${name})";
    wants = ["network-online.target"];
    after = ["network-online.target"];
    inherit (job) onFailure;
    # Non-root: /run/wrappers/bin first, so its setuid fusermount3 wins over
    # the plain copy the package's wrapper appends to PATH. Root mounts
    # with the plain one and runs no setuid wrapper (NoNewPrivileges=).
    path =
      lib.optional (!isRoot) "/run/wrappers"
      ++ jobLib.snapshotTools {
        inherit pkgs job;
        zfs = config.boot.zfs.package or pkgs.zfs;
      };
    # A running backup must not be restarted by nixos-rebuild switch; the
    # next timer run picks up the new configuration.
    restartIfChanged = false;
    unitConfig = {
      RequiresMountsFor = [job.source] ++ lib.optional local job.target.local.path;
      Documentation = "man:gocryptfs(1) man:sshfs(1) man:rsync(1)";
    };
    serviceConfig =
      {
        Type = "oneshot";
        # The user's own primary group: no Group=, so that nothing here
        # reads users.users (a job user given as
        # config.users.users.<name>.name would make that a cycle).
        User = job.user;
        ExecStart = ciphersync (helperArgs name file ++ stage.args);
        # The password and the ssh key reach the unit as systemd
        # credentials: systemd (as root) reads the files and puts copies
        # readable by the unit alone under $CREDENTIALS_DIRECTORY, whose
        # names the job file gives (password_credential,
        # target.identity_credential). The files themselves may stay
        # root-only, whatever the job's user.
        LoadCredential = jobLib.loadCredential job;
        # Exit 75: another stage of this job holds its lock (e.g. the weekly
        # verify fires while the daily backup runs). Retry later instead of
        # failing (a restart is not a failure, OnFailure= does not fire).
        RestartForceExitStatus = "75";
        RestartSec = "5min";
        UMask = "0077";

        StateDirectory = "ciphersync/${name}";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "ciphersync/${name}";
        RuntimeDirectoryMode = "0700";
        # The three units share the runtime dir. Without this, the end of one
        # (say a verify that found the lock held) would remove the directory,
        # and with it the mount points of the stage still running.
        RuntimeDirectoryPreserve = true;

        # FUSE mounts are made in the unit's own mount namespace: a crash or
        # SIGKILL cannot leave a stale mount in the host, and other users
        # never see the plaintext views.
        PrivateMounts = true;
        # Everything read-only but the state and runtime dirs (and a local
        # target). The read-only remount covers every mount that exists when
        # the unit starts, FUSE mounts included, so anything the helper
        # writes must be listed here; the mounts it makes itself (in the
        # runtime dir) come later and keep their own flags. /dev (and so
        # /dev/fuse), /proc and /sys are left alone by ProtectSystem=.
        ProtectSystem = "strict";
        # A local target that does not exist (an unplugged disk) is optional
        # ("-"): the unit then reaches the helper, which says what is
        # missing, instead of failing at namespace setup (226/NAMESPACE).
        ReadWritePaths =
          [
            (stateDir name)
            (runtimeDir name)
          ]
          ++ lib.optional local "-${job.target.local.path}"
          # "-": a textfile directory that is not there yet fails no stage.
          ++ lib.optional (metricsDir != null) "-${metricsDir}"
          ++ snapshot.readWritePaths;
        # The source may live under /home; it is only read. ssh reads
        # ~/.ssh/config and keys but writes no known_hosts (a pinned file).
        ProtectHome = "read-only";
        # ssh, sshfs and gocryptfs need no shared /tmp.
        PrivateTmp = true;
        ProtectControlGroups = true; # cgroup tree read-only; nothing writes it
        # A private /dev (PrivateDevices=) would lack /dev/fuse; instead the
        # device cgroup allows /dev/fuse next to the pseudo devices of
        # DevicePolicy=closed (/dev/null, /dev/zero, /dev/urandom, ...).
        DevicePolicy = snapshot.devicePolicy;
        DeviceAllow = lib.optionals (snapshot.devicePolicy != "auto") (["/dev/fuse rw"] ++ snapshot.deviceAllow);
        KeyringMode = "private"; # no tool uses the kernel keyring
      }
      # Exit 4: a partial backup (some source files could not be read) is
      # not a failure unless partialIsFailure; the journal names the files.
      // lib.optionalAttrs (jobLib.partialExitStatus job stage != []) {
        SuccessExitStatus = lib.concatStringsSep " " (jobLib.partialExitStatus job stage);
      }
      # Every stage is a low-priority neighbour (Nice=, IOSchedulingClass=).
      // jobLib.schedulingOf job
      // lib.optionalAttrs (stage.suffix == "backup") (jobLib.backupUnit {
        inherit pkgs name job;
        # The hooks run with full privileges, outside the sandbox: a
        # snapshot or a stopped database needs what the helper must not have.
        hookPrefix = "+";
        # The first run creates the gocryptfs config (idempotent). backup
        # itself never creates one: a lost config must never silently become
        # a new key.
        init = [
          "${cfg.package}/bin/ciphersync"
          "-c"
          file
          "init"
        ];
        backup = ["${cfg.package}/bin/ciphersync"] ++ helperArgs name file ++ stage.args;
      })
      // (
        if isRoot
        then seccompHardening job
        else userConfinement
      );
  };

  timerOf = job: stage: {
    wantedBy = ["timers.target"];
    timerConfig = {
      OnCalendar = lib.toList stage.startAt;
      Persistent = job.persistentTimer;
      RandomizedDelaySec = job.randomizedDelaySec;
    };
  };

  perStage = f:
    lib.mkMerge (
      lib.concatLists (
        lib.mapAttrsToList (
          name: job:
            map (stage: {
              "ciphersync-${name}-${stage.suffix}" = f name job stage;
            }) (jobLib.stages job)
        )
        cfg.jobs
      )
    );

  userJobModule = {...}: {
    options.user = lib.mkOption {
      type = lib.types.strMatching "[a-z_][a-z0-9_-]*[$]?";
      default = "root";
      example = "backup";
      description = ''
        User the job's units run as, with its primary group. The module
        declares no user: a user other than root must be declared in
        `users.users` (for a service account: `isSystemUser = true` and a
        group). A non-root user reads the source through
        CAP_DAC_READ_SEARCH and mounts through the setuid fusermount3; the
        passwordFile and identityFile must be readable by it.
      '';
    };
  };
in {
  options.services.ciphersync = {
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.ciphersync or (pkgs.callPackage ./package.nix {});
      defaultText = lib.literalExpression "pkgs.ciphersync (this flake's overlay), else nix/package.nix built with pkgs";
      description = "The ciphersync package the units run.";
    };

    jobs = lib.mkOption {
      type = lib.types.attrsOf (
        lib.types.submodule [
          jobLib.jobModule
          userJobModule
        ]
      );
      default = {};
      example = lib.literalExpression ''
        {
          docs = {
            source = "/srv/docs";
            passwordFile = "/run/secrets/ciphersync-docs";
            target.sftp = {
              host = "u123456.your-storagebox.de";
              port = 23;
              user = "u123456";
              path = "/home/backups/docs";
              identityFile = "/var/lib/ciphersync/docs/id_ed25519";
              knownHosts = [ "[u123456.your-storagebox.de]:23 ssh-ed25519 AAAA..." ];
            };
            snapshots = { keepLast = 30; keepDays = 90; };
            onFailure = [ "notify-admin.service" ];
          };
        }
      '';
      description = "Backup jobs. Each becomes /etc/ciphersync/<name>.json and three timed units.";
    };

    metrics.textfileDirectory = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = nodeTextfileDirectory;
      defaultText = lib.literalExpression "the node exporter's --collector.textfile.directory (from services.prometheus.exporters.node.extraFlags) when the node exporter runs with its textfile collector, else null";
      example = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        Directory where each stage writes the job's Prometheus metrics as
        `ciphersync-<job>.prom` (`--metrics-file`), for the node exporter's
        textfile collector. The job's user must be able to create files
        there. `null`: no metrics.
      '';
    };
  };

  config = lib.mkIf (cfg.jobs != {}) {
    assertions =
      lib.concatLists (
        lib.mapAttrsToList (jobLib.assertionsFor "services.ciphersync.jobs") cfg.jobs
      )
      ++ [
        (
          let
            targets =
              lib.mapAttrsToList (
                _: job: "${(jobLib.targetOf job).host or ""}:${(jobLib.targetOf job).path}"
              )
              cfg.jobs;
          in {
            assertion = lib.length targets == lib.length (lib.unique targets);
            message = "services.ciphersync.jobs: two jobs write to the same target (host and path); each job needs its own target.path.";
          }
        )
      ]
      # Only read here, in an assertion: the module declares no user, so
      # that users.users and users.groups never depend on a job (a job user
      # given as config.users.users.<name>.name, a user whose group is
      # config.users.groups.<name>.name).
      ++ lib.mapAttrsToList (name: job: {
        assertion = job.user == "root" || !(lib.elem job.sourceSnapshot ["zfs" "lvm"]);
        message = "services.ciphersync.jobs.${name}.sourceSnapshot: \"${toString job.sourceSnapshot}\" needs root (it creates and mounts the snapshot); the job runs as ${job.user}. Run it as root (user = \"root\"), or use \"btrfs\" or null.";
      })
      cfg.jobs
      ++ lib.mapAttrsToList (name: job: {
        assertion = job.user == "root" || config.users.users ? ${job.user};
        message = "services.ciphersync.jobs.${name}.user: user ${job.user} is not declared; declare it, e.g. users.users.${job.user} = { isSystemUser = true; group = \"${job.user}\"; }; users.groups.${job.user} = { };";
      })
      cfg.jobs;

    environment.etc =
      lib.mapAttrs' (
        name: job:
          lib.nameValuePair "ciphersync/${name}.json" {
            source = (jobFileOf name job).file;
          }
      )
      cfg.jobs;

    systemd.services = perStage serviceOf;

    systemd.tmpfiles.rules = lib.concatLists (lib.mapAttrsToList (_: snapshotTmpfiles) cfg.jobs);

    systemd.timers = lib.mkMerge (
      lib.concatLists (
        lib.mapAttrsToList (
          name: job:
            map (stage: {"ciphersync-${name}-${stage.suffix}" = timerOf job stage;}) (
              lib.filter (stage: lib.toList stage.startAt != []) (jobLib.stages job)
            )
        )
        cfg.jobs
      )
    );

    # fusermount3 as a setuid wrapper in /run/wrappers/bin and /etc/fuse.conf.
    programs.fuse.enable = true;
    # Loaded at boot: the units may not load modules (ProtectKernelModules=).
    boot.kernelModules = ["fuse"];

    environment.systemPackages = [cfg.package];
  };
}
