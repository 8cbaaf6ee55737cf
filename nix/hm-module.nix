# home-manager module: services.ciphersync.{package,jobs} for one user.
#
# Per job <name>: ~/.config/ciphersync/<name>.json (validated at build time)
# and the systemd user units ciphersync-<name>-{backup,verify,deep-verify},
# each with a timer. State lives in $XDG_STATE_HOME/ciphersync/<name>, the
# mount points in $XDG_RUNTIME_DIR/ciphersync/<name> (the helper's default).
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.ciphersync;
  jobLib = import ./job-options.nix {inherit lib;};

  stateDir = name: "${config.xdg.stateHome}/ciphersync/${name}";
  configFile = name: "${config.xdg.configHome}/ciphersync/${name}.json";

  metricsDir = cfg.metrics.textfileDirectory;
  helperArgs = name:
    [
      "-c"
      (configFile name)
    ]
    ++ lib.optionals (metricsDir != null) [
      "--metrics-file"
      "${metricsDir}/ciphersync-${name}.prom"
    ];

  # systemd's quoting, not a shell's (nixpkgs' utils.escapeSystemdExecArgs).
  ciphersync = args: jobLib.escapeSystemdExecArgs (["${cfg.package}/bin/ciphersync"] ++ args);

  # No sandboxing options: in the user manager they need user namespaces and
  # each of them implies NoNewPrivileges=yes, which disables the setuid
  # fusermount3 every FUSE mount of a user goes through. Mounts made by a
  # user service live in the user's mount namespace; the helper unmounts on
  # every path out.
  serviceOf = name: job: stage: {
    # No network-online.target: a user manager cannot order against system
    # units; ssh reports an unreachable server and the stage fails cleanly.
    Unit = {
      Description = "ciphersync ${stage.what} of ${job.source} (job ${name})";
      OnFailure = job.onFailure;
    };
    Service =
      {
        Type = "oneshot";
        # /run/wrappers/bin first so that NixOS's setuid fusermount3 wins over
        # the plain copy the package's wrapper appends to PATH.
        # btrfs-progs for a btrfs sourceSnapshot (zfs and lvm are refused:
        # they need root).
        Environment = ["PATH=/run/wrappers/bin:${lib.makeBinPath ([pkgs.coreutils] ++ jobLib.snapshotTools {inherit pkgs job;})}"];
        ExecStart = ciphersync (helperArgs name ++ stage.args);
        # Exit 75: another stage of this job holds its lock. systemd accepts
        # RestartForceExitStatus= on oneshot units only from version 256 (older
        # ones refuse to load the unit), and home-manager also runs on
        # distributions with older systemd: so a clash counts as a skipped run
        # (not a failure, OnFailure= does not fire); the next timer runs it.
        # Exit 4 of a backup (partial) too, unless partialIsFailure.
        SuccessExitStatus = lib.concatStringsSep " " (["75"] ++ jobLib.partialExitStatus job stage);
        UMask = "0077";
      }
      // jobLib.schedulingOf job
      // lib.optionalAttrs (stage.suffix == "backup") (jobLib.backupUnit {
        inherit pkgs name job;
        # The user's manager has no sandbox to leave: the hooks run as the
        # user, like the helper.
        hookPrefix = "";
        # The first run creates the gocryptfs config (idempotent); backup
        # itself never creates one.
        init = [
          "${cfg.package}/bin/ciphersync"
          "-c"
          (configFile name)
          "init"
        ];
        backup = ["${cfg.package}/bin/ciphersync"] ++ helperArgs name ++ stage.args;
      });
  };

  timerOf = name: job: stage: {
    Unit.Description = "Timer of ciphersync ${stage.what} (job ${name})";
    Timer = {
      OnCalendar = lib.toList stage.startAt;
      Persistent = job.persistentTimer;
      RandomizedDelaySec = job.randomizedDelaySec;
    };
    Install.WantedBy = ["timers.target"];
  };

  perStage = filter: f:
    lib.mkMerge (
      lib.concatLists (
        lib.mapAttrsToList (
          name: job:
            map (stage: {"ciphersync-${name}-${stage.suffix}" = f name job stage;}) (
              lib.filter filter (jobLib.stages job)
            )
        )
        cfg.jobs
      )
    );
in {
  options.services.ciphersync = {
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.ciphersync or (pkgs.callPackage ./package.nix {});
      defaultText = lib.literalExpression "pkgs.ciphersync (this flake's overlay), else nix/package.nix built with pkgs";
      description = "The ciphersync package the units run.";
    };

    jobs = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule jobLib.jobModule);
      default = {};
      example = lib.literalExpression ''
        {
          photos = {
            source = "/home/alice/Pictures";
            passwordFile = "/home/alice/.config/ciphersync/photos.password";
            target.sftp = {
              host = "u123456.your-storagebox.de";
              port = 23;
              user = "u123456";
              path = "/home/alice-photos";
              knownHosts = [ "[u123456.your-storagebox.de]:23 ssh-ed25519 AAAA..." ];
            };
          };
        }
      '';
      description = "Backup jobs of this user. Each becomes ~/.config/ciphersync/<name>.json and three timed user units.";
    };

    metrics.textfileDirectory = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/home/alice/.local/state/node-exporter-textfiles";
      description = ''
        Directory where each stage writes the job's Prometheus metrics as
        `ciphersync-<job>.prom` (`--metrics-file`), for a node exporter's
        textfile collector that reads it. The user must be able to create
        files there. `null`: no metrics. (The NixOS module's option of the
        same name defaults to the node exporter's directory; a user's
        home-manager cannot see the system's, so here it is unset.)
      '';
    };
  };

  config = lib.mkIf (cfg.jobs != {}) {
    assertions =
      lib.concatLists (
        lib.mapAttrsToList (jobLib.assertionsFor "services.ciphersync.jobs") cfg.jobs
      )
      # A user's units cannot create or mount a ZFS dataset's or a logical
      # volume's snapshot; a btrfs snapshot of a subvolume the user owns
      # they can (see the option).
      ++ lib.mapAttrsToList (name: job: {
        assertion = !(lib.elem job.sourceSnapshot ["zfs" "lvm"]);
        message = "services.ciphersync.jobs.${name}.sourceSnapshot: \"${toString job.sourceSnapshot}\" needs root (it creates and mounts the snapshot), and home-manager units run as ${config.home.username}. Declare the job in the NixOS module (services.ciphersync.jobs, as root), or use \"btrfs\" or null.";
      })
      cfg.jobs;

    xdg.configFile =
      lib.mapAttrs' (
        name: job:
          lib.nameValuePair "ciphersync/${name}.json" {
            source =
              (jobLib.jobFile {
                inherit pkgs name job;
                inherit (cfg) package;
                stateDir = stateDir name;
              }).file;
          }
      )
      cfg.jobs;

    systemd.user.services = perStage (_: true) serviceOf;
    systemd.user.timers = perStage (stage: lib.toList stage.startAt != []) timerOf;

    home.packages = [cfg.package];
  };
}
