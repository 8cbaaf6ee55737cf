# Backup, verify, a corrupted server copy, repair, restore, and decryption
# of the server copy by hand with plain gocryptfs (no ciphersync).
{
  pkgs,
  self,
  ...
}: let
  common = import ./common.nix {inherit pkgs self;};
in
  pkgs.testers.runNixOSTest {
    name = "ciphersync-backup-restore";

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

      client.succeed(
          "mkdir -p /srv/docs/reports",
          "echo 'top secret plaintext' > /srv/docs/reports/quarterly-report.txt",
          "head -c 200000 /dev/urandom > /srv/docs/reports/blob.bin",
          "echo 'second file' > /srv/docs/notes.txt",
      )

      with subtest("backup succeeds and records ok"):
          client.succeed("systemctl start ciphersync-docs-backup.service")
          s = status(client)
          assert s["stages"]["backup"]["outcome"] == "ok", s
          no_fuse_mounts(client)

      with subtest("the server holds no plaintext name or content"):
          server.succeed("test -f /srv/backup/docs/files/gocryptfs.conf")
          server.fail("grep -r -F 'top secret plaintext' /srv/backup/docs")
          server.fail("grep -r -F 'second file' /srv/backup/docs")
          names = server.succeed("find /srv/backup/docs")
          for plain in ["quarterly-report", "blob.bin", "notes.txt", "reports"]:
              assert plain not in names, f"{plain} visible on the server:\n{names}"

      with subtest("verify succeeds"):
          client.succeed("systemctl start ciphersync-docs-verify.service")
          assert status(client)["stages"]["verify"]["outcome"] == "ok"

      with subtest("a flipped byte on the server fails verify and is named"):
          # The only large file under files/ is blob.bin's ciphertext.
          victim = server.succeed(
              "find /srv/backup/docs/files -type f -size +100k | head -n 1"
          ).strip()
          assert victim, "no ciphertext of blob.bin found"
          # Change byte 1000 in place, one added modulo 256 (same size and
          # mtime class of change a failing disk makes). GNU tr refuses a
          # descending range such as '\377-\000'.
          server.succeed(
              f"dd if='{victim}' bs=1 skip=1000 count=1 2>/dev/null"
              r" | tr '\000-\377' '\001-\377\000'"
              f" | dd of='{victim}' bs=1 seek=1000 count=1 conv=notrunc 2>/dev/null"
          )
          client.fail("systemctl start ciphersync-docs-verify.service")
          v = status(client)["stages"]["verify"]
          assert v["outcome"] == "mismatch", v
          assert "reports/blob.bin" in v["stats"]["changed"], v
          client.wait_until_succeeds("grep -q failed /run/notify-admin.log")

      with subtest("backup repairs the copy, verify is ok again"):
          client.succeed("systemctl start ciphersync-docs-backup.service")
          client.succeed("systemctl start ciphersync-docs-verify.service")
          assert status(client)["stages"]["verify"]["outcome"] == "ok"

      with subtest("restore into a new directory equals the source"):
          client.succeed("mkdir /root/restored")
          client.succeed("ciphersync restore docs --to /root/restored")
          client.succeed("diff -r /srv/docs /root/restored")
          no_fuse_mounts(client)

      with subtest("plain gocryptfs on the server reads the copy"):
          server.succeed(
              "install -m 600 /dev/null /root/password",
              "echo -n '${common.password}' > /root/password",
              "mkdir /root/plain",
              "gocryptfs -ro -passfile /root/password /srv/backup/docs/files /root/plain",
          )
          server.succeed("grep -qx 'top secret plaintext' /root/plain/reports/quarterly-report.txt")
          server.succeed("fusermount3 -u /root/plain")
    '';
  }
