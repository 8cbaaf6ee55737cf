# The server goes away during a run: the unit fails cleanly, no mount and no
# FUSE daemon is left, the onFailure unit ran; once the server is back the
# next run succeeds.
{
  pkgs,
  self,
  ...
}: let
  common = import ./common.nix {inherit pkgs self;};
in
  pkgs.testers.runNixOSTest {
    name = "ciphersync-server-down";

    nodes = {
      server = common.server;
      client = {...}: {
        imports = [common.clientBase];
        services.ciphersync.jobs.docs = common.docsJob;
      };
    };

    testScript = ''
      ${common.pythonHelpers}

      start_all()
      server.wait_for_unit("sshd.service")
      client.wait_for_unit("multi-user.target")
      client.succeed("mkdir -p /srv/docs", "head -c 1000000 /dev/urandom > /srv/docs/first.bin")

      with subtest("a first backup succeeds"):
          client.succeed("systemctl start ciphersync-docs-backup.service")
          assert status(client)["stages"]["backup"]["outcome"] == "ok"

      with subtest("the server stops during a run"):
          # 40 MB through an 8 Mbit/s uplink: the transfer is surely still
          # running when sshd goes away.
          client.succeed("head -c 40000000 /dev/urandom > /srv/docs/big.bin")
          client.succeed("tc qdisc add dev eth1 root tbf rate 8mbit burst 64kbit latency 400ms")
          client.succeed("systemctl start --no-block ciphersync-docs-backup.service")
          client.wait_until_succeeds("pgrep -x rsync", timeout=120)
          client.sleep(5)
          # Stop sshd and end the sessions it left running (sshd keeps them
          # on stop), so the connection really goes away mid-transfer.
          server.succeed("systemctl stop sshd.service")
          server.succeed("pkill -KILL -u backup || true")
          client.wait_until_succeeds("systemctl is-failed ciphersync-docs-backup.service", timeout=600)
          s = status(client)["stages"]["backup"]
          assert s["outcome"] == "failed", s
          assert s["error"] is not None, s
          no_fuse_mounts(client)
          client.wait_until_succeeds("grep -q failed /run/notify-admin.log")

      with subtest("after the server is back the next run succeeds"):
          client.succeed("tc qdisc del dev eth1 root")
          server.succeed("systemctl start sshd.service")
          server.wait_for_unit("sshd.service")
          client.succeed("systemctl reset-failed ciphersync-docs-backup.service")
          client.succeed("systemctl start ciphersync-docs-backup.service")
          assert status(client)["stages"]["backup"]["outcome"] == "ok"
          client.succeed("systemctl start ciphersync-docs-verify.service")
          assert status(client)["stages"]["verify"]["outcome"] == "ok"
          no_fuse_mounts(client)
    '';
  }
