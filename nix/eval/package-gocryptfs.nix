# nix/package.nix refuses a gocryptfs older than 2.5.0 (its issue 802):
# the package evaluated with stand-ins for its inputs (nothing is built) and
# a gocryptfs of each version; "ok" or "refused" per version.
#   nix-instantiate --eval --strict --json nix/eval/package-gocryptfs.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  packageWith = version:
    import ../package.nix {
      inherit lib;
      stdenv = {
        buildPlatform.canExecute = _: true;
        hostPlatform = {};
      };
      # The package's attributes as given, not a derivation.
      rustPlatform.buildRustPackage = attrs: attrs;
      makeWrapper = fake "makeWrapper";
      installShellFiles = fake "installShellFiles";
      gocryptfs =
        fake "gocryptfs-${version}"
        // {
          pname = "gocryptfs";
          inherit version;
        };
      sshfs = fake "sshfs";
      fuse-overlayfs = fake "fuse-overlayfs";
      rsync = fake "rsync";
      openssh = fake "openssh";
      fuse3 = fake "fuse3";
      coreutils = fake "coreutils";
    };
  # The tools are forced where the wrapper's PATH is written.
  outcome = version: let
    tried = builtins.tryEval (builtins.deepSeq (map toString (packageWith version).passthru.runtimeTools) true);
  in
    if tried.success
    then "ok"
    else "refused";
in
  lib.genAttrs ["2.3.0" "2.4.0" "2.5.0" "2.6.1"] outcome
