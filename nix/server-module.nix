# NixOS module: services.ciphersync.server, the storage-server side.
#
# Per account <name>: a system user <name> in its own group <name> (sealing
# hands sealed runs to root with the account's group, so the group must be
# the account's alone), and a `Match User` block that locks its logins into
# <dataDir>/<name> (ChrootDirectory) and runs nothing but
# `ciphersync serve --root /data` (ForceCommand). Inside the chroot:
#
#   data/       the account's dir (<dataDir>/<name>/data on the host), the
#               client's target.path "/data"
#   nix/store   a read-only bind mount of the host's store: serve, rsync,
#               sftp-server, the account's shell and their libraries
#   dev/null    sftp-server opens it at start
#   etc/passwd, etc/group
#               the account's own lines only (sftp-server refuses to start
#               for a uid it cannot name); written at boot by
#               ciphersync-server-chroots.service, since NixOS picks a
#               system user's uid at activation
#
# OpenSSH requires the chroot and every directory above it to be root's
# and writable by nobody else; the account writes only below data/.
# An appendOnly account also gets ciphersync-server-seal-<name>.service
# (root runs `serve --seal` on the data dir), started at boot, by a timer
# and whenever a record lands in records/ (a path unit).
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.ciphersync.server;
  jobLib = import ./job-options.nix {inherit lib;};

  # The account's chroot (root's), and its dir below it as the host sees
  # it; inside the chroot the dir is `insideRoot`.
  chrootOf = name: "${cfg.dataDir}/${name}";
  rootOf = name: "${chrootOf name}/data";
  insideRoot = "/data";
  sealUnit = name: "ciphersync-server-seal-${name}";

  # The account's ForceCommand (sshd passes it to the account's shell,
  # below, which ignores it and runs the same command).
  serveArgs = name: account:
    [
      "${cfg.package}/bin/ciphersync"
      "serve"
      "--root"
      insideRoot
      "--sftp-server"
      cfg.sftpServer
      "--rsync"
      "${pkgs.rsync}/bin/rsync"
    ]
    ++ lib.optionals (account.quota != null) ["--quota" account.quota];
  # sshd runs a ForceCommand as `SHELL -c COMMAND` inside the chroot, and
  # nologin would print its refusal instead of serving. The account's
  # shell is therefore this script: it takes no input from the client
  # (sshd hands the request over in SSH_ORIGINAL_COMMAND) and can only
  # become `ciphersync serve` for this account, whatever it is asked to
  # run. Given to users.users as the script's store path (which the chroot
  # sees through its /nix/store), not as a shell package: NixOS would
  # name a package by /run/current-system/sw/bin/..., which is not in the
  # chroot.
  shellScriptOf = name: account:
    pkgs.writeShellScriptBin "ciphersync-serve-${name}" ''
      exec ${lib.escapeShellArgs (serveArgs name account)}
    '';
  shellOf = name: account: "${shellScriptOf name account}/bin/ciphersync-serve-${name}";

  sealArgs = name: account:
    [
      "${cfg.package}/bin/ciphersync"
      "serve"
      "--seal"
      "--account"
      name
      "--root"
      (rootOf name)
      # Keep watching records/ until it has been quiet for 10 s: systemd
      # watches nothing while this service runs, so a record renamed in
      # during a seal would otherwise wait for the timer.
      "--settle"
      "10"
    ]
    ++ lib.optionals (account.keepSealed.keepLast != null) ["--keep-last" (toString account.keepSealed.keepLast)]
    ++ lib.optionals (account.keepSealed.keepDays != null) ["--keep-days" (toString account.keepSealed.keepDays)];

  # The confinement of the module's root services (serviceConfig): they
  # may write `writable` and nothing else, with capabilities `caps`.
  rootConfined = writable: caps: {
    ReadWritePaths = writable;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateNetwork = true;
    NoNewPrivileges = true;
    CapabilityBoundingSet = caps;
  };

  matchBlock = name: account: ''
    Match User ${name}
      ChrootDirectory ${chrootOf name}
      ForceCommand ${lib.escapeShellArgs (serveArgs name account)}
      AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u
      AllowAgentForwarding no
      AllowTcpForwarding no
      AllowStreamLocalForwarding no
      X11Forwarding no
      PermitTunnel no
      PermitTTY no
      PermitUserRC no
      PermitListen none
      PermitOpen none
  '';

  accounts = cfg.accounts;
  appendOnly = lib.filterAttrs (_: a: a.appendOnly) accounts;

  accountOptions = {name, ...}: {
    options = {
      authorizedKeys = lib.mkOption {
        type = lib.types.listOf lib.types.singleLineStr;
        default = [];
        example = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... root@laptop"];
        description = ''
          Public keys that log in as the account `${name}`; every login runs
          `ciphersync serve` for the account, never a shell.
        '';
      };
      appendOnly = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          Seal every finished run (its record, snapshot dirs and metadata
          dir become root's and read-only): a client holding the account's key can add
          runs but never delete or change a sealed one. `files/` (the mirror)
          stays writable. The client's `prune` then says what the server
          keeps and deletes nothing.
        '';
      };
      keepSealed = {
        keepLast = lib.mkOption {
          type = lib.types.nullOr lib.types.ints.positive;
          default = null;
          example = 30;
          description = "With appendOnly: keep the newest N sealed runs (and every run within keepDays); null keeps all.";
        };
        keepDays = lib.mkOption {
          type = lib.types.nullOr lib.types.ints.positive;
          default = null;
          example = 90;
          description = "With appendOnly: keep the sealed runs of the last N days; null keeps all.";
        };
      };
      sealAt = lib.mkOption {
        type = lib.types.either lib.types.str (lib.types.listOf lib.types.str);
        default = "hourly";
        description = ''
          With appendOnly: when the seal service runs besides boot and every
          new record (systemd OnCalendar); it also applies keepSealed.
        '';
      };
      quota = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "[0-9]+[KMGT]?");
        default = null;
        example = "500G";
        description = ''
          The account's size limit, a number with an optional K/M/G/T
          suffix (powers of 1024), checked by `ciphersync serve --quota`:
          over it, backups are refused with a line naming the account, its
          usage and the quota, while restores, verify and deletions still
          work. Usage is measured when a backup starts, so one run may
          exceed the quota by its own size; a filesystem project quota on
          the account dir is the hard limit (see the README's
          storage-server section).
        '';
      };
    };
  };
in {
  options.services.ciphersync.server = {
    enable = lib.mkEnableOption "the ciphersync storage server (`ciphersync serve` accounts over OpenSSH)";
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.ciphersync or (pkgs.callPackage ./package.nix {});
      defaultText = lib.literalExpression "pkgs.ciphersync (this flake's overlay), else nix/package.nix built with pkgs";
      description = "The ciphersync package the accounts run.";
    };
    dataDir = lib.mkOption {
      # No blanks: the path goes into tmpfiles lines and sshd_config.
      type = lib.types.strMatching "/[A-Za-z0-9._+/-]*[A-Za-z0-9._+-]";
      default = "/var/lib/ciphersync-server";
      description = ''
        Where the accounts live: per account the chroot `<dataDir>/<name>`
        (root's) and the account's dir `<dataDir>/<name>/data`, which the
        client sees as `/data` (its `target.path`).
      '';
    };
    sftpServer = lib.mkOption {
      type = lib.types.str;
      default = "${config.services.openssh.package}/libexec/sftp-server";
      defaultText = lib.literalExpression "\"\${config.services.openssh.package}/libexec/sftp-server\"";
      description = "The sftp-server that serve runs for the SFTP subsystem (started in the account's dir); a path in the Nix store, the only part of the host an account's chroot sees.";
    };
    accountShells = lib.mkOption {
      type = lib.types.attrsOf lib.types.package;
      internal = true;
      readOnly = true;
      description = "Each account's shell script (users.users.<name>.shell is its bin/ciphersync-serve-<name>), for the renderings the tests check.";
    };
    accounts = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule accountOptions);
      default = {};
      example = lib.literalExpression ''
        {
          laptop = {
            authorizedKeys = ["ssh-ed25519 AAAA... root@laptop"];
            appendOnly = true;
            keepSealed = { keepLast = 30; keepDays = 90; };
          };
        }
      '';
      description = ''
        One storage account per client: a system user of that name whose
        shell can only run `ciphersync serve`, its chroot and dir below
        dataDir, and an sshd `Match User` block that locks it into the
        chroot and lets it run `ciphersync serve` only. A client job points at it
        with `target.sftp = { user = "<name>"; path = "<dataDir>/<name>";
        transport = "rsync"; }`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      [
        {
          # serve refuses an sftp-server command line with arguments.
          assertion = config.services.openssh.sftpFlags == [];
          message = "services.ciphersync.server: services.openssh.sftpFlags must be empty (ciphersync serve refuses an SFTP subsystem with arguments)";
        }
      ]
      ++ lib.concatLists (lib.mapAttrsToList (name: a: [
          {
            assertion = builtins.match "[a-z_][a-z0-9_-]{0,30}" name != null;
            message = "services.ciphersync.server.accounts.${name}: the name is a system user name: lowercase letters, digits, `_` and `-`, at most 31 characters";
          }
          {
            assertion = a.appendOnly || (a.keepSealed.keepLast == null && a.keepSealed.keepDays == null);
            message = "services.ciphersync.server.accounts.${name}: keepSealed applies to sealed runs only; set appendOnly = true";
          }
          {
            assertion = a.authorizedKeys != [];
            message = "services.ciphersync.server.accounts.${name}: authorizedKeys is empty, no client could log in";
          }
        ])
        accounts);

    services.ciphersync.server.accountShells = lib.mapAttrs shellScriptOf accounts;

    services.openssh.enable = lib.mkDefault true;
    # `Match all` ends the blocks: whatever another module appends to
    # extraConfig after them applies to every user again.
    services.openssh.extraConfig = lib.mkIf (accounts != {}) (
      lib.concatStrings (lib.mapAttrsToList matchBlock accounts) + "Match all\n"
    );

    users.users =
      lib.mapAttrs (name: a: {
        isSystemUser = true;
        group = name;
        description = "ciphersync storage account ${name}";
        # Not the account dir: nothing the client writes is ever read as
        # the account's ssh configuration (authorized_keys, rc).
        home = "/var/empty";
        shell = shellOf name a;
        openssh.authorizedKeys.keys = a.authorizedKeys;
      })
      accounts;
    users.groups = lib.mapAttrs (_: _: {}) accounts;

    # The data dir and each chroot are root's and 0755 (sshd's rule for
    # every component of a ChrootDirectory); an account dir is the
    # account's (0700), or, append-only, root's with the account's group
    # and the sticky bit (1770), the layout `serve --seal` keeps.
    systemd.tmpfiles.rules =
      ["d ${cfg.dataDir} 0755 root root -"]
      ++ lib.concatLists (lib.mapAttrsToList (
          name: a: [
            "d ${chrootOf name} 0755 root root -"
            "d ${chrootOf name}/dev 0755 root root -"
            "c ${chrootOf name}/dev/null 0666 root root - 1:3"
            "d ${chrootOf name}/etc 0755 root root -"
            (
              if a.appendOnly
              then "d ${rootOf name} 1770 root ${name} -"
              else "d ${rootOf name} 0700 ${name} ${name} -"
            )
          ]
        )
        accounts);

    # The store, read-only, in every chroot: the account's shell, serve,
    # rsync and sftp-server run from it. It shows the account store paths
    # it could read on the host anyway, and nothing it could write.
    fileSystems = lib.mapAttrs' (name: _:
      lib.nameValuePair "${chrootOf name}/nix/store" {
        device = "/nix/store";
        fsType = "none";
        options = ["bind" "ro"];
      })
    accounts;

    systemd.services =
      lib.optionalAttrs (accounts != {}) {
        ciphersync-server-chroots = {
          description = "Name the ciphersync storage accounts inside their chroots";
          wantedBy = ["multi-user.target"];
          # Before the first login: sftp-server will not start for an
          # account it cannot name.
          before = ["sshd.service"];
          after = ["systemd-tmpfiles-setup.service"];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = lib.mapAttrsToList (name: _:
              jobLib.escapeSystemdExecArgs [
                "${cfg.package}/bin/ciphersync"
                "serve"
                "--chroot"
                (chrootOf name)
                "--account"
                name
              ])
            accounts;
          }
          # Root writes each chroot's etc/ and nothing else; it owns what
          # it writes, so it needs no capability.
          // rootConfined (lib.mapAttrsToList (name: _: "${chrootOf name}/etc") accounts) "";
        };
      }
      // lib.mapAttrs' (name: a:
      lib.nameValuePair (sealUnit name) {
        description = "Seal the finished ciphersync runs of account ${name}";
        wantedBy = ["multi-user.target"];
        after = ["systemd-tmpfiles-setup.service"];
        restartIfChanged = false;
        serviceConfig = {
          Type = "oneshot";
          ExecStart = jobLib.escapeSystemdExecArgs (sealArgs name a);
          Nice = 10;
          IOSchedulingClass = "idle";
        }
        # Root changes owners and modes below the account dir and nothing
        # else.
        // rootConfined [(rootOf name)] "CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH";
      })
    appendOnly;

    systemd.timers = lib.mapAttrs' (name: a:
      lib.nameValuePair (sealUnit name) {
        wantedBy = ["timers.target"];
        timerConfig = {
          OnCalendar = lib.toList a.sealAt;
          Persistent = true;
        };
      })
    appendOnly;

    # A run's record is written last (renamed into records/): seal it as
    # soon as it lands. systemd watches nothing while the service a path
    # unit triggers runs, so the seal watches records/ itself (--settle)
    # and seals what lands meanwhile; only a record that lands in the
    # moment between its exit and systemd watching again waits for the
    # timer (sealAt) or the next boot.
    systemd.paths = lib.mapAttrs' (name: _:
      lib.nameValuePair (sealUnit name) {
        wantedBy = ["paths.target"];
        pathConfig = {
          PathChanged = "${rootOf name}/records";
          Unit = "${sealUnit name}.service";
        };
      })
    appendOnly;

    environment.systemPackages = [cfg.package];
  };
}
