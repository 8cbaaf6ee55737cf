# The sample configurations the eval renders. The `docs` and `photos` jobs
# are also the input of the systemd-nspawn harness (tests/systemd/), which
# turns nix/eval/expected/nixos-*.json into real unit files.
{pkgs}: {
  # Root job, SFTP target on this machine's sshd.
  nixos-docs = {
    services.ciphersync.package = pkgs.ciphersync;
    services.ciphersync.jobs.docs = {
      source = "/srv/docs";
      exclude = [
        "*.tmp"
        "cache/"
      ];
      passwordFile = "/run/keys/ciphersync-docs";
      target.sftp = {
        host = "127.0.0.1";
        port = 22;
        user = "root";
        path = "/srv/backup/docs";
        identityFile = "/var/lib/ciphersync/docs/id_ed25519";
        knownHosts = [
          "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8/WLTpMMw6jIiI2+uTvIp+Qm+bZBkr ciphersync-eval-sample"
        ];
      };
      snapshots = {
        keepLast = 30;
        keepDays = 90;
      };
      startAt = "*-*-* 02:00:00";
      verify.startAt = "Sun *-*-* 04:00:00";
      verify.sampleBytes = 1073741824;
      deepVerify.startAt = "*-*-01 05:00:00";
      randomizedDelaySec = "10m";
      onFailure = ["notify-admin.service"];
      # The systemd suite reads what the hooks leave in
      # /var/lib/ciphersync-test, and fails the preHook on request.
      preHook = ''
        mkdir -p /var/lib/ciphersync-test
        cp /var/lib/ciphersync/docs/status.json /var/lib/ciphersync-test/status-at-pre-hook.json || true
        echo "pre-hook job=$CIPHERSYNC_JOB" >>/var/lib/ciphersync-test/hooks.log
        if [ -e /var/lib/ciphersync-test/fail-pre-hook ]; then exit 7; fi
      '';
      postHook = ''
        cp /var/lib/ciphersync/docs/status.json /var/lib/ciphersync-test/status-at-post-hook.json || true
        echo "post-hook job=$CIPHERSYNC_JOB outcome=$CIPHERSYNC_OUTCOME exit=$CIPHERSYNC_EXIT_STATUS" >>/var/lib/ciphersync-test/hooks.log
      '';
      monitoring.pingUrl = "http://127.0.0.1:8321/ping/docs";
      waitForTarget = 2;
      inhibitsSleep = true;
    };
  };

  # Non-root job, local target (a mounted disk). The module declares no
  # user: the job's user is a service account declared here, its group
  # taken from users.groups as NixOS configurations commonly do.
  nixos-photos = {
    users.users.alice = {
      isSystemUser = true;
      group = "alice";
    };
    users.groups.alice = {};
    services.ciphersync.package = pkgs.ciphersync;
    services.ciphersync.jobs.photos = {
      user = "alice";
      source = "/srv/photos";
      passwordFile = "/etc/ciphersync-keys/photos.password";
      filenames = "deterministic";
      target.local.path = "/mnt/usb/photos";
      maxDeletePercent = 20;
      # High enough not to slow the suite, but rsync must take it.
      target.local.bwlimit = 102400;
      target.local.spaceWarningPercent = 5;
      nice = 5;
      ioSchedulingClass = "best-effort";
      maxRuntime = "2h";
      # A partial backup fails this unit (onFailure fires).
      partialIsFailure = true;
      verify.startAt = [];
      persistentTimer = false;
    };
  };

  # Root jobs that back up a snapshot of their source (sourceSnapshot),
  # one per kind: the tools on each unit's path, the btrfs snapshot
  # directory (tmpfiles, ReadWritePaths=), /dev/zfs, and the device cgroup
  # lifted for lvm.
  nixos-snapshots = let
    job = source: path: {
      inherit source;
      passwordFile = "/run/keys/ciphersync-${baseNameOf source}";
      target.sftp = {
        host = "backup.example.org";
        user = "backup";
        inherit path;
        knownHosts = [
          "backup.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8/WLTpMMw6jIiI2+uTvIp+Qm+bZBkr"
        ];
      };
    };
  in {
    services.ciphersync.package = pkgs.ciphersync;
    services.ciphersync.jobs = {
      home = job "/home/alice/" "/backups/home" // {sourceSnapshot = "btrfs";};
      tank = job "/tank/projects" "/backups/tank" // {sourceSnapshot = "zfs";};
      srv = job "/srv/data" "/backups/srv" // {sourceSnapshot = "lvm";};
    };
  };

  # A user's job through home-manager: SFTP on port 23, rsync transport.
  hm-music = {
    home.username = "alice";
    home.homeDirectory = "/home/alice";
    services.ciphersync.package = pkgs.ciphersync;
    services.ciphersync.metrics.textfileDirectory = "/home/alice/.local/state/textfiles";
    services.ciphersync.jobs.music = {
      source = "/home/alice/Music";
      passwordFile = "/home/alice/.config/ciphersync/music.password";
      target.sftp = {
        host = "backup.example.org";
        port = 23;
        user = "alice";
        path = "/home/alice/music";
        identityFile = "/home/alice/.ssh/id_ed25519";
        knownHosts = [
          "[backup.example.org]:23 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8/WLTpMMw6jIiI2+uTvIp+Qm+bZBkr"
        ];
        transport = "rsync";
        remoteChecksums = "mount";
      };
      snapshots.keepDays = 365;
      onFailure = ["notify-alice.service"];
      preHook = "echo before";
      postHook = "echo \"after: $CIPHERSYNC_OUTCOME\"";
      monitoring.pingUrl = "https://hc-ping.com/eval-sample";
      target.sftp.bwlimit = 4096;
    };
  };

  # The storage server (nix/server-module.nix): an append-only account with
  # server-side retention and a plain one. The systemd-nspawn harness runs
  # its seal units against a real account dir.
  nixos-server = {
    services.ciphersync.server = {
      enable = true;
      package = pkgs.ciphersync;
      accounts.laptop = {
        authorizedKeys = [
          "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8/WLTpMMw6jIiI2+uTvIp+Qm+bZBkr laptop"
        ];
        appendOnly = true;
        keepSealed = {
          keepLast = 30;
          keepDays = 90;
        };
      };
      accounts.desktop = {
        authorizedKeys = [
          "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8/WLTpMMw6jIiI2+uTvIp+Qm+bZBkr desktop"
        ];
        quota = "500G";
      };
    };
  };
}
