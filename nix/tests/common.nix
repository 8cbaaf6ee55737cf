# Shared by the VM tests: the SFTP server node, the client's base module and
# the job they back up. Keys are nixpkgs' public snake-oil test keys
# (nixos/tests/ssh-keys.nix), imported, not copied: the ECDSA pair is the
# server's host key (pinned in the job's knownHosts), the ed25519 pair is
# the client's login key for the server's `backup` account.
{
  pkgs,
  self,
}: let
  keys = import (pkgs.path + "/nixos/tests/ssh-keys.nix") pkgs;
  package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;

  # Test secret. A real system takes it from sops-nix, agenix or a
  # root-only file; the job only ever names the path.
  password = "correct horse battery staple";
in rec {
  inherit keys package password;

  # "server" is the node's host name in the test network; port 22, so the
  # known_hosts line names the host without brackets.
  hostKeyLine = "server ${keys.snakeOilPublicKey}";

  # An SFTP account `backup` whose directories the jobs write to.
  server = {...}: {
    services.openssh = {
      enable = true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
      };
      hostKeys = [
        {
          type = "ecdsa";
          path = "/etc/ssh/ssh_host_ecdsa_key";
        }
      ];
    };
    # sshd refuses a world-readable host key, so it is copied out of the
    # store with a private mode.
    environment.etc."ssh/ssh_host_ecdsa_key" = {
      source = keys.snakeOilPrivateKey;
      mode = "0600";
    };
    users.users.backup = {
      isNormalUser = true;
      openssh.authorizedKeys.keys = [keys.snakeOilEd25519PublicKey];
    };
    systemd.tmpfiles.rules = [
      "d /srv/backup 0700 backup users -"
      "d /srv/backup/docs 0700 backup users -"
      "d /srv/backup/music 0700 backup users -"
    ];
    # rsync for transport = "rsync", sha1sum (coreutils) for the remote
    # checksums, gocryptfs for decrypting the copy by hand.
    environment.systemPackages = [
      pkgs.rsync
      pkgs.gocryptfs
    ];
    programs.fuse.enable = true;
    boot.kernelModules = ["fuse"];
  };

  # The client: the module, the key and password files, a notification unit
  # for onFailure, and no NTP (the timers test sets the clock).
  clientBase = {...}: {
    imports = [self.nixosModules.default];
    services.ciphersync.package = package;
    environment.etc."ciphersync-keys/id_ed25519" = {
      source = keys.snakeOilEd25519PrivateKey;
      mode = "0600";
    };
    environment.etc."ciphersync-keys/docs.password" = {
      text = password;
      mode = "0600";
    };
    systemd.services.notify-admin = {
      description = "Record that a ciphersync stage failed";
      serviceConfig.Type = "oneshot";
      script = "echo \"$(date) failed\" >> /run/notify-admin.log";
    };
    services.timesyncd.enable = false;
    environment.systemPackages = [
      pkgs.jq
      pkgs.gocryptfs
    ];
    virtualisation.memorySize = 1024;
  };

  # The job every NixOS scenario backs up; timers off unless a test sets
  # them, so that nothing runs before the test script asks.
  docsJob = {
    source = "/srv/docs";
    passwordFile = "/etc/ciphersync-keys/docs.password";
    target.sftp = {
      host = "server";
      user = "backup";
      path = "/srv/backup/docs";
      identityFile = "/etc/ciphersync-keys/id_ed25519";
      knownHosts = [hostKeyLine];
    };
    snapshots.keepLast = 10;
    startAt = [];
    verify.startAt = [];
    deepVerify.startAt = [];
    randomizedDelaySec = "0";
    onFailure = ["notify-admin.service"];
  };

  # Python helpers for the test scripts.
  pythonHelpers = ''
    import json


    def status(machine, path="/var/lib/ciphersync/docs/status.json"):
        return json.loads(machine.succeed(f"cat {path}"))


    def no_fuse_mounts(machine):
        # fuse.sshfs / fuse.gocryptfs in the mount namespace of any process:
        # a system unit mounts in its own (PrivateMounts=), which the test
        # shell's /proc/mounts does not show. fusectl is fine. grep reads
        # the files itself: `cat ... | grep -q` under the driver's pipefail
        # fails with cat's SIGPIPE once grep has found a mount, and
        # machine.fail() took that for "no mount".
        machine.fail("grep -qs ' - fuse\\.' /proc/[0-9]*/mountinfo")
        machine.fail("pgrep -x 'gocryptfs|sshfs'")
  '';
}
