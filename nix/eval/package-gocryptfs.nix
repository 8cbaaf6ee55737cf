# The gocryptfs nix/package.nix puts on the helper's PATH, evaluated with
# stand-ins for its inputs (nothing is built) and a gocryptfs of each
# version, stood in for by attributes like nixpkgs' (its pname, version and
# linker flags, an overrideAttrs):
#   "refused"   older than 2.5.0 (gocryptfs issue 802): evaluation fails;
#   "patched"   the fix of gocryptfs issue 686 is in: its postPatch holds
#               both substitutions, and the last `-X main.GitVersion=` of
#               its ldflags (after nixpkgs' own, kept) names the version
#               with `marker`, the suffix the helper reads as "has the fix"
#               (src/about.rs);
#   "unpatched" taken as nixpkgs builds it.
#   nix-instantiate --eval --strict --json nix/eval/package-gocryptfs.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib --argstr marker +ciphersync.686
# `--argstr mutant NAME` spoils what nix/package.nix's override returns, so
# that check.sh can show each way of losing the fix is caught (2.6.1 must
# then read "unpatched"): no-override (its result ignored), one-substitution
# (the root_node.go edit dropped), no-marker (the ldflags left as they were).
{
  nixpkgsLib,
  marker,
  mutant ? null,
}: let
  lib = import nixpkgsLib;
  inherit (lib) hasInfix hasPrefix;
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # What the fix must change, as `substituteInPlace FILE --replace-fail OLD
  # NEW`, compared word by word (see words).
  substitutions = [
    "substituteInPlace internal/fusefrontend_reverse/node_helpers.go --replace-fail 'rn.isExcludedPlain(filepath.Join(d.cPath, pName))' 'rn.isExcludedPlain(filepath.Join(d.pPath, pName))'"
    "substituteInPlace internal/fusefrontend_reverse/root_node.go --replace-fail 'if pPath == \"\" {' 'if pPath == \"\" || pPath == \".gocryptfs.reverse.conf\" {'"
  ];
  # A shell text's words, line continuations left out, one space apart.
  words = text: lib.concatStringsSep " " (builtins.filter (w: builtins.isString w && w != "" && w != "\\") (builtins.split "[ \t\n]+" text));

  spoil = old: new:
    if mutant == null
    then new
    else if mutant == "no-override"
    then old
    else if mutant == "one-substitution"
    then new // {postPatch = builtins.head (builtins.split "substituteInPlace [^ ]*root_node.go" new.postPatch);}
    else if mutant == "no-marker"
    then new // {ldflags = old.ldflags;}
    else throw "package-gocryptfs.nix: unknown mutant ${mutant}";

  # nixpkgs' gocryptfs as far as the override sees it: mkDerivation's
  # overrideAttrs merges what the function returns into the attributes.
  gocryptfsAttrs = attrs:
    fake "gocryptfs-${attrs.version}"
    // attrs
    // {overrideAttrs = f: gocryptfsAttrs (spoil attrs (attrs // f attrs));};
  nixpkgsLdflags = version: [
    "-X main.GitVersion=${version}"
    "-X main.GitVersionFuse=[vendored]"
    "-X main.BuildDate=unknown"
    "-buildid="
  ];
  gocryptfs = version:
    gocryptfsAttrs {
      pname = "gocryptfs";
      inherit version;
      ldflags = nixpkgsLdflags version;
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
      gocryptfs = gocryptfs version;
      sshfs = fake "sshfs";
      fuse-overlayfs = fake "fuse-overlayfs";
      rsync = fake "rsync";
      openssh = fake "openssh";
      fuse3 = fake "fuse3";
      coreutils = fake "coreutils";
    };

  # nixpkgs' linker flags kept, in their order, and the marker's last.
  hasFix = pkg: let
    ldflags = pkg.ldflags or [];
    ours = nixpkgsLdflags pkg.version;
    gitVersions = builtins.filter (hasPrefix "-X main.GitVersion=") ldflags;
  in
    lib.all (s: hasInfix (words s) (words (pkg.postPatch or ""))) substitutions
    && lib.take (builtins.length ours) ldflags == ours
    && gitVersions != []
    && lib.last gitVersions == "-X main.GitVersion=${pkg.version}${marker}";

  # The tools are forced where the wrapper's PATH is written.
  outcome = version: let
    tools = (packageWith version).passthru.runtimeTools;
    tried = builtins.tryEval (builtins.deepSeq (map toString tools) true);
    shipped = lib.findFirst (p: (p.pname or "") == "gocryptfs") null tools;
  in
    if !tried.success
    then "refused"
    else if hasFix shipped
    then "patched"
    else "unpatched";
in
  assert lib.assertOneOf "mutant" mutant [null "no-override" "one-substitution" "no-marker"];
    lib.genAttrs ["2.3.0" "2.4.0" "2.5.0" "2.6.1" "2.7.0"] outcome
