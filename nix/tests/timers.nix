# The timers are installed and fire after a clock jump; a second run with no
# change transfers nothing.
{
  pkgs,
  self,
  ...
}: let
  common = import ./common.nix {inherit pkgs self;};
in
  pkgs.testers.runNixOSTest {
    name = "ciphersync-timers";

    nodes = {
      server = common.server;
      client = {...}: {
        imports = [common.clientBase];
        # Fixed dates in the future rather than "daily": a jump from the
        # VM's real clock then elapses exactly the timers the test means,
        # never two stages at once (they would contend for the job's lock).
        services.ciphersync.jobs.docs =
          common.docsJob
          // {
            startAt = [
              "2031-03-10 03:00:00"
              "2031-03-11 03:00:00"
            ];
            verify.startAt = "2031-03-10 04:00:00";
            deepVerify.startAt = "2031-06-01 05:00:00";
            randomizedDelaySec = "0";
          };
      };
    };

    testScript = ''
      ${common.pythonHelpers}

      start_all()
      server.wait_for_unit("sshd.service")
      client.wait_for_unit("timers.target")
      client.succeed("mkdir -p /srv/docs", "echo hello > /srv/docs/a.txt")

      with subtest("the three timers are listed"):
          timers = client.succeed("systemctl list-timers --all --no-pager")
          for stage in ["backup", "verify", "deep-verify"]:
              assert f"ciphersync-docs-{stage}.timer" in timers, timers
          client.fail("test -e /var/lib/ciphersync/docs/status.json")


      def jump_to(when):
          # systemd notices the clock change and fires timers whose time passed.
          client.succeed(f"date -s '{when}'")


      def wait_stage(stage):
          client.wait_until_succeeds(
              f"jq -e '.stages.{stage}.outcome == \"ok\"' /var/lib/ciphersync/docs/status.json",
              timeout=600,
          )
          s = status(client)["stages"][stage]
          return s


      with subtest("the backup timer fires after a clock jump"):
          jump_to("2031-03-10 03:00:30")
          first = wait_stage("backup")

      with subtest("the verify timer fires after a clock jump"):
          jump_to("2031-03-10 04:00:30")
          wait_stage("verify")

      with subtest("the next day's backup transfers nothing"):
          jump_to("2031-03-11 03:00:30")
          client.wait_until_succeeds(
              f"jq -e '.stages.backup.started_at != \"{first['started_at']}\" and .stages.backup.outcome == \"ok\"'"
              " /var/lib/ciphersync/docs/status.json",
              timeout=600,
          )
          second = status(client)["stages"]["backup"]
          assert second["stats"]["transferred"] == 0, second
          assert second["stats"]["deleted"] == 0, second
    '';
  }
