# A stand-in for nixpkgs' package set (pkgs), enough for the modules: every
# package is an attrset whose outPath is a fixed fake store path, so the
# rendered output does not depend on any real store and is the same on
# every machine. Not a copy of any nixpkgs file: nothing here is built.
{lib}: let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
in
  lib.genAttrs [
    "bash"
    "btrfs-progs"
    "ciphersync"
    "coreutils"
    "curl"
    "findutils"
    "fish"
    "fuse"
    "fuse3"
    "gnugrep"
    "gnused"
    "gocryptfs"
    "lvm2"
    "openssh"
    "rsync"
    "shadow"
    "sshfs"
    "systemd"
    "util-linux"
    "xonsh"
    "zfs"
    "zsh"
  ]
  fake
  // {
    # Modules must not build the package here: the eval sets it explicitly.
    callPackage = _: _: throw "stub pkgs: callPackage is not available; set services.ciphersync.package";

    writeText = name: text: fake name // {inherit text;};
    writeShellScript = name: text: fake name // {inherit text;};
    writeShellScriptBin = name: text: fake name // {inherit text;};

    # The derivation's passthru is kept, as mkDerivation does, so that the
    # harness can reach the job value behind the job file; the build script
    # is kept to check that it runs `ciphersync check-config`.
    runCommand = name: env: script:
      fake name
      // (env.passthru or {})
      // {
        passthru = env.passthru or {};
        buildCommand = script;
      };

    formats.json = _: {
      generate = name: value: fake name // {text = builtins.toJSON value;};
    };
  }
