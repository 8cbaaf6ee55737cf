# A user's job declared through home-manager's NixOS module runs as that
# user (systemd user units, setuid fusermount3) and restores.
{
  pkgs,
  self,
  home-manager,
  ...
}: let
  common = import ./common.nix {inherit pkgs self;};
  uid = 1000;
in
  pkgs.testers.runNixOSTest {
    name = "ciphersync-home-manager";

    nodes = {
      server = common.server;
      client = {...}: {
        imports = [
          common.clientBase
          home-manager.nixosModules.home-manager
        ];

        users.users.alice = {
          isNormalUser = true;
          inherit uid;
          # Her user manager runs from boot, without a login.
          linger = true;
        };
        environment.etc."ciphersync-keys/alice_ed25519" = {
          source = common.keys.snakeOilEd25519PrivateKey;
          mode = "0400";
          user = "alice";
        };
        environment.etc."ciphersync-keys/alice.password" = {
          text = common.password;
          mode = "0400";
          user = "alice";
        };

        home-manager.useGlobalPkgs = true;
        home-manager.useUserPackages = true;
        home-manager.users.alice = {...}: {
          imports = [self.homeManagerModules.default];
          home.stateVersion = "26.05";
          services.ciphersync.package = common.package;
          services.ciphersync.jobs.music = {
            source = "/home/alice/Music";
            passwordFile = "/etc/ciphersync-keys/alice.password";
            target.sftp = {
              host = "server";
              user = "backup";
              path = "/srv/backup/music";
              identityFile = "/etc/ciphersync-keys/alice_ed25519";
              knownHosts = [common.hostKeyLine];
            };
            startAt = [];
            verify.startAt = [];
            deepVerify.startAt = [];
          };
        };
      };
    };

    testScript = ''
      ${common.pythonHelpers}

      def as_alice(command):
          # su starts no systemd session (nixpkgs' su PAM service has no
          # pam_systemd), so XDG_RUNTIME_DIR is set here as a login sets it:
          # the helper keeps its mount points there (the job file of a
          # home-manager job has no runtime_dir).
          return client.succeed(
              f"su - alice -c 'export XDG_RUNTIME_DIR=/run/user/${toString uid}; {command}'"
          )


      def user_systemctl(args):
          return as_alice(f"systemctl --user {args}")


      start_all()
      server.wait_for_unit("sshd.service")
      client.wait_for_unit("home-manager-alice.service")
      client.wait_for_unit("user@${toString uid}.service")

      as_alice("mkdir -p ~/Music/album && echo la-la-la > ~/Music/album/song.txt")
      client.succeed("test -f /home/alice/.config/ciphersync/music.json")

      with subtest("the user unit backs up as alice"):
          user_systemctl("start ciphersync-music-backup.service")
          state = "/home/alice/.local/state/ciphersync/music/status.json"
          s = status(client, state)
          assert s["stages"]["backup"]["outcome"] == "ok", s
          assert client.succeed(f"stat -c %U {state}").strip() == "alice"
          server.fail("grep -r -F la-la-la /srv/backup/music")
          no_fuse_mounts(client)

      with subtest("the user unit verifies"):
          user_systemctl("start ciphersync-music-verify.service")
          assert status(client, state)["stages"]["verify"]["outcome"] == "ok"

      with subtest("alice restores by hand"):
          as_alice("mkdir ~/restored && ciphersync restore music --to ~/restored")
          client.succeed("diff -r /home/alice/Music /home/alice/restored")
          no_fuse_mounts(client)
    '';
  }
