{
  lib,
  stdenv,
  rustPlatform,
  makeWrapper,
  installShellFiles,
  gocryptfs,
  sshfs,
  fuse-overlayfs,
  rsync,
  openssh,
  fuse3,
  coreutils,
}: let
  cargoToml = lib.importTOML ../Cargo.toml;

  # gocryptfs before 2.5.0 can serve a stale gocryptfs.diriv and hard-links
  # the .name files of hard-linked long names in -reverse mode (its issue
  # 802): names the backup stores can become undecryptable. Refused here,
  # at evaluation, rather than warned about at every run (the helper still
  # warns for a gocryptfs found on PATH). nixpkgs packages 2.6.1, the latest
  # release (not checked at the flake's pin).
  floorChecked =
    lib.throwIfNot (lib.versionAtLeast (lib.getVersion gocryptfs) "2.5.0")
    "ciphersync: gocryptfs ${lib.getVersion gocryptfs} is older than 2.5.0, whose -reverse mode can make backed-up file names undecryptable (gocryptfs issue 802); build ciphersync with a newer one (callPackage nix/package.nix { gocryptfs = ...; })"
    gocryptfs;

  # gocryptfs up to 2.6.1 has its issue 686
  # (https://github.com/rfjakob/gocryptfs/issues/686): -reverse checks a long
  # name's gocryptfs.longname.*.name file against the -exclude-wildcard
  # patterns by the *encrypted* path of its directory, so with every
  # allow-list (`/*`, `!/docs`) reading those files fails (EPERM) and a
  # backup holding a long name fails on every run; and the reverse config
  # itself can be excluded. Fixed upstream by commit
  # 5f5c34ac78cb9d1765ce9cabe87420c32f9d867e, on master after v2.6.1 and in
  # no release. A fetchpatch of it would need the hash of its normalised
  # patch, which could not be computed without downloading it, so the fix
  # (two lines) is written here as the same two edits:
  #   - node_helpers.go: the .name file's exclude check takes the plaintext
  #     path of its directory (d.pPath) instead of the encrypted one
  #     (d.cPath);
  #   - root_node.go: isExcludedPlain never excludes the reverse config,
  #     .gocryptfs.reverse.conf (upstream names it configfile.ConfReverseName;
  #     the literal spares an import edit).
  # Both lines read the same from 2.5.0 to 2.6.1. --replace-fail: a source
  # in which either is not found (a release or snapshot that changed them)
  # fails the build instead of shipping unfixed. No import changes, so the
  # vendored modules (vendorHash) stay the same. Releases after 2.6.1 are
  # taken as they are: they are cut from master, which has the fix, and the
  # helper reads them as fixed too.
  #
  # The helper decides by the version `gocryptfs -version` prints whether
  # excludes that reach the bug are refused (src/about.rs), so the patched
  # build says so: the last `-X main.GitVersion=` of the linker flags wins
  # over nixpkgs' own (the Go linker keeps the last -X of a name), and
  # 2.6.1 prints as `gocryptfs 2.6.1+ciphersync.686; go-fuse ...`
  # (GOCRYPTFS_FIX_686_MARKER in src/about.rs; nix/eval/check.sh checks that
  # the two agree).
  fix686Marker = "+ciphersync.686";
  withFix686 = pkg:
    pkg.overrideAttrs (old: {
      postPatch =
        (old.postPatch or "")
        + ''
          substituteInPlace internal/fusefrontend_reverse/node_helpers.go --replace-fail \
            'rn.isExcludedPlain(filepath.Join(d.cPath, pName))' \
            'rn.isExcludedPlain(filepath.Join(d.pPath, pName))'
          substituteInPlace internal/fusefrontend_reverse/root_node.go --replace-fail \
            'if pPath == "" {' \
            'if pPath == "" || pPath == ".gocryptfs.reverse.conf" {'
        '';
      ldflags = (old.ldflags or []) ++ ["-X main.GitVersion=${lib.getVersion pkg}${fix686Marker}"];
    });
  checkedGocryptfs =
    if lib.versionOlder (lib.getVersion gocryptfs) "2.6.2"
    then withFix686 floorChecked
    else floorChecked;

  # The helper orchestrates these tools and never reimplements them.
  runtimeTools = [
    checkedGocryptfs
    sshfs
    fuse-overlayfs # `ciphersync mount --snapshot`: the union of a run's layers
    rsync
    openssh
    fuse3
    coreutils
  ];
in
  rustPlatform.buildRustPackage {
    pname = "ciphersync";
    inherit (cargoToml.package) version;

    # Only what cargo needs: a change to nix/, the README or scripts/ does not
    # rebuild the package.
    src = lib.fileset.toSource {
      root = ../.;
      fileset = lib.fileset.unions [
        ../Cargo.toml
        ../Cargo.lock
        ../src
        (lib.fileset.maybeMissing ../tests)
      ];
    };

    cargoLock.lockFile = ../Cargo.lock;

    nativeBuildInputs = [
      makeWrapper
      installShellFiles
    ];

    # Unit tests run here. The end-to-end tests need sshd and /dev/fuse, which
    # the build sandbox does not have; they skip themselves with a printed
    # reason unless CI=true, where a missing tool is an error. The sandbox's
    # environment is clean, but make sure CI cannot leak in.
    preCheck = ''
      unset CI
    '';

    # --suffix, not --prefix: the caller's PATH comes first. On NixOS the units
    # put /run/wrappers/bin on PATH, so the setuid-root `fusermount3` wrapper
    # found there wins over fuse3's plain (not setuid) copy appended here,
    # which non-root users cannot mount with. Root needs no setuid helper and
    # gets the pinned tools from the suffix when its PATH lacks them.
    # The man page and the completions come from the clap definition, printed
    # by the built binary's hidden `man` and `completions` commands (not when
    # cross-compiling, where the binary cannot run here).
    postInstall =
      lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
        $out/bin/ciphersync man > ciphersync.1
        installManPage ciphersync.1
        installShellCompletion --cmd ciphersync \
          --bash <($out/bin/ciphersync completions bash) \
          --fish <($out/bin/ciphersync completions fish) \
          --zsh <($out/bin/ciphersync completions zsh)
      ''
      + ''
        wrapProgram $out/bin/ciphersync --suffix PATH : ${lib.makeBinPath runtimeTools}
      '';

    passthru = {inherit runtimeTools;};

    meta = {
      description = "Encrypted remote backups built from gocryptfs, sshfs and rsync";
      mainProgram = "ciphersync";
      platforms = lib.platforms.linux;
    };
  }
