# The storage server (issue 16): a server node whose account is declared
# only through services.ciphersync.server (append-only, sealed by the
# module's units), a client node through services.ciphersync.jobs. Backup,
# sealing, a client that tries to delete the sealed history with the
# account's own key and fails, and a restore of the sealed snapshot.
#
# Besides the module, the server node only gets its ssh host key (the
# client pins it); no user, directory or sshd setting is written by hand.
{
  pkgs,
  self,
  ...
}: let
  common = import ./common.nix {inherit pkgs self;};
  inherit (common) keys;
  # The account's dir on the server, and as the account sees it from
  # inside its chroot (/var/lib/ciphersync-server/laptop).
  root = "/var/lib/ciphersync-server/laptop/data";
  remote = "/data";
  # What the client's key may run over ssh in the attacks below.
  sshOpts = "-i /etc/ciphersync-keys/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=/etc/ciphersync-keys/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes";
in
  pkgs.testers.runNixOSTest {
    name = "ciphersync-server";

    nodes = {
      server = {...}: {
        imports = [self.nixosModules.server];
        services.ciphersync.server = {
          enable = true;
          package = common.package;
          accounts.laptop = {
            authorizedKeys = [keys.snakeOilEd25519PublicKey];
            appendOnly = true;
            keepSealed.keepLast = 10;
          };
        };
        services.openssh.hostKeys = [
          {
            type = "ecdsa";
            path = "/etc/ssh/ssh_host_ecdsa_key";
          }
        ];
        environment.etc."ssh/ssh_host_ecdsa_key" = {
          source = keys.snakeOilPrivateKey;
          mode = "0600";
        };
      };
      client = {...}: {
        imports = [common.clientBase];
        services.ciphersync.jobs.docs =
          common.docsJob
          // {
            target.sftp =
              common.docsJob.target.sftp
              // {
                user = "laptop";
                path = remote;
                transport = "rsync";
              };
            # The client's own retention would delete the first run: the
            # server's word wins.
            snapshots.keepLast = 1;
          };
        environment.etc."ciphersync-keys/known_hosts".text = common.hostKeyLine + "\n";
        environment.systemPackages = [pkgs.openssh pkgs.rsync];
      };
    };

    testScript = ''
      ${common.pythonHelpers}

      start_all()
      server.wait_for_unit("sshd.service")
      server.wait_for_unit("multi-user.target")
      client.wait_for_unit("multi-user.target")

      with subtest("the module prepared the append-only account"):
          server.succeed("systemctl start ciphersync-server-seal-laptop.service")
          server.succeed("grep -qx 'append-only yes' ${root}/APPEND-ONLY")
          server.succeed("grep -qx 'keep-last 10' ${root}/APPEND-ONLY")
          assert server.succeed("stat -c '%U %G %a' ${root}").strip() == "root laptop 1770"
          assert server.succeed("getent passwd laptop").strip().split(":")[6].find("ciphersync-serve-laptop") >= 0
          # The chroot sshd requires: root's, writable by root only, with
          # the store bound read-only and the account named in its etc/.
          assert server.succeed("stat -c '%U %a' /var/lib/ciphersync-server/laptop").strip() == "root 755"
          server.succeed("findmnt -n -o OPTIONS /var/lib/ciphersync-server/laptop/nix/store | grep -qw ro")
          server.succeed("systemctl is-active ciphersync-server-chroots.service")
          server.succeed("grep -q '^laptop:x:' /var/lib/ciphersync-server/laptop/etc/passwd")
          assert server.succeed("wc -l < /var/lib/ciphersync-server/laptop/etc/passwd").strip() == "1"

      client.succeed(
          "mkdir -p /srv/docs/reports",
          "echo 'first version' > /srv/docs/reports/plan.txt",
          "echo 'kept' > /srv/docs/notes.txt",
          "cp -a /srv/docs /root/as-of-first",
      )

      with subtest("a backup goes through ciphersync serve"):
          client.succeed("systemctl start ciphersync-docs-backup.service")
          assert status(client)["stages"]["backup"]["outcome"] == "ok"
          caps = json.loads(client.succeed("cat /var/lib/ciphersync/docs/target-capabilities.json"))
          assert caps["ciphersync_server"] is True, caps
          first = json.loads(client.succeed("ciphersync snapshots docs --json"))["snapshots"][0]["id"]

      with subtest("the path unit seals the run as its record lands"):
          server.wait_until_succeeds(f"test \"$(stat -c %U ${root}/records/{first}.rec)\" = root")
          assert server.succeed(f"stat -c %a ${root}/records/{first}.rec").strip() == "440"

      with subtest("a second backup; verify uses the server's sums"):
          client.succeed("echo 'second version' > /srv/docs/reports/plan.txt")
          client.succeed("systemctl start ciphersync-docs-backup.service")
          server.succeed("systemctl start ciphersync-server-seal-laptop.service")
          client.succeed("systemctl start ciphersync-docs-verify.service")
          assert status(client)["stages"]["verify"]["outcome"] == "ok"
          ids = [s["id"] for s in json.loads(client.succeed("ciphersync snapshots docs --json"))["snapshots"]]
          assert len(ids) == 2 and ids[0] == first, ids

      with subtest("the client's prune defers to the server"):
          out = client.succeed("ciphersync prune docs 2>&1")
          assert "append-only" in out and "keep-last 10" in out, out

      with subtest("the client cannot delete sealed history with the account's key"):
          # The key works: serve answers its own query.
          assert "append-only yes" in client.succeed("ssh ${sshOpts} laptop@server ciphersync-server info")
          for batch in [
              f"rm ${remote}/records/{first}.rec",
              f"rename ${remote}/records/{first}.rec ${remote}/records/x.rec",
              "rmdir ${remote}/snapshots",
              "rename ${remote}/records ${remote}/gone",
          ]:
              client.fail(f"echo '{batch}' | sftp -b - ${sshOpts} laptop@server")
          client.fail(f"ssh ${sshOpts} laptop@server rm -rf ${remote}/records")
          client.fail(f"ssh ${sshOpts} laptop@server sh -c true")
          client.succeed("mkdir -p /root/empty")
          client.fail("rsync -r --delete -e 'ssh ${sshOpts}' /root/empty/ laptop@server:${remote}/records/")
          server.succeed(f"test -f ${root}/records/{first}.rec")
          assert len(json.loads(client.succeed("ciphersync snapshots docs --json"))["snapshots"]) == 2

      with subtest("the account sees its chroot and nothing of the server"):
          listed = client.succeed("echo 'ls -1 /' | sftp -b - ${sshOpts} laptop@server")
          assert "/data" in listed and "/root" not in listed and "/home" not in listed, listed
          client.fail("echo 'get /etc/shadow /root/shadow' | sftp -b - ${sshOpts} laptop@server")
          client.succeed("echo 'get /etc/passwd /root/their-passwd' | sftp -b - ${sshOpts} laptop@server")
          assert client.succeed("cut -d: -f1 /root/their-passwd").split() == ["laptop"]

      with subtest("the sealed first snapshot restores"):
          client.succeed("mkdir /root/first")
          client.succeed(f"ciphersync restore docs --snapshot {first} --to /root/first")
          client.succeed("diff -r /root/as-of-first /root/first")
          client.succeed("mkdir /root/latest")
          client.succeed("ciphersync restore docs --to /root/latest")
          client.succeed("diff -r /srv/docs /root/latest")
          no_fuse_mounts(client)
    '';
  }
