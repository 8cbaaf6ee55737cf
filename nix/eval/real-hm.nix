# Evaluates nix/hm-module.nix with home-manager's own modules instead of the
# stub (stubs/home-manager.nix): home-manager's core module list
# (modules/modules.nix with minimal = true: home-environment, files, xdg,
# systemd, ...; the full list also loads every programs/ and services/
# module, which needs a real pkgs for pkgs.formats and the like), with
# home-manager's unknown-option check on. pkgs stays the stub
# (stubs/pkgs.nix): nothing is built.
#
#   nix-instantiate --eval --strict --json nix/eval/real-hm.nix \
#     --arg nixpkgsLib $NIXPKGS_LIB/lib --arg homeManager $HOME_MANAGER \
#     --arg nixpkgs $NIXPKGS
#
# homeManager: a home-manager checkout (the flake's pin: release-26.05,
# 3cd22efe6471dc7365c822bd9ad73a21e55f38fb). nixpkgs: a directory with
# nixpkgs' nixos/modules/misc/{assertions,meta}.nix,
# modules/generic/meta-maintainers.nix and lib/ (home-manager imports them
# from pkgs.path): a nixpkgs checkout.
{
  nixpkgsLib,
  homeManager,
  nixpkgs,
}: let
  lib = import nixpkgsLib;
  stubPkgs = import ./stubs/pkgs.nix {inherit lib;};
  # Packages home-manager's core modules name in defaults and assertions:
  # fake store paths like the stub's own.
  fakes = ["glibcLocales" "man" "shared-mime-info"];
  pkgs =
    stubPkgs
    // lib.genAttrs fakes (name: {
      type = "derivation";
      inherit name;
      version = "0";
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    })
    // {
      # home-manager declares options of these types; nothing here uses them.
      formats =
        stubPkgs.formats
        // lib.genAttrs ["ini" "toml" "yaml" "keyValue"] (_: _: {
          type = lib.types.anything;
          generate = name: _: stubPkgs.writeText name "";
        });
      path = nixpkgs;
      inherit lib;
      stdenv = {
        isLinux = true;
        isDarwin = false;
        hostPlatform = {
          system = "x86_64-linux";
          isLinux = true;
          isDarwin = false;
        };
      };
    };
  samples = import ./samples.nix {inherit pkgs;};
  hmLib = import (homeManager + "/modules/lib/stdlib-extended.nix") lib;
  hmModules = import (homeManager + "/modules/modules.nix") {
    inherit pkgs;
    lib = hmLib;
    check = true;
    useNixpkgsModule = false;
    minimal = true;
  };
  # The minimal list refers to options of these two without importing them.
  extra = map (m: homeManager + "/modules/${m}") ["programs/fish.nix" "programs/man"];

  evalHm = modules:
    hmLib.evalModules {
      modules =
        hmModules
        ++ extra
        ++ [
          ../hm-module.nix
          {
            _module.args.pkgs = pkgs;
            home.stateVersion = "26.05";
          }
        ]
        ++ modules;
      class = "homeManager";
      specialArgs.modulesPath = homeManager + "/modules";
    };

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  ours = lib.filterAttrs (n: _: lib.hasPrefix "ciphersync-" n);

  music = let
    evaluated = evalHm [samples.hm-music];
    inherit (evaluated) config;
  in
    if failedAssertions config != []
    then throw "hm-music: ${lib.concatStringsSep "; " (failedAssertions config)}"
    else {
      configFile = lib.mapAttrs (_: f: f.source.jobConfig) (
        lib.filterAttrs (n: _: lib.hasPrefix "ciphersync/" n) config.xdg.configFile
      );
      services = ours config.systemd.user.services;
      timers = ours config.systemd.user.timers;
      # What this module adds (home.packages as a whole holds
      # home-manager's own, which would need real packages).
      packages = map toString (lib.concatMap (d: d.value) (
        lib.filter (d: d.file == toString ../hm-module.nix) evaluated.options.home.packages.definitionsWithLocations
      ));
    };

  outcome = modules: let
    config = (evalHm modules).config;
    forced = builtins.tryEval (builtins.deepSeq config.services.ciphersync.jobs (
      builtins.deepSeq (failedAssertions config) true
    ));
  in
    if !forced.success
    then "rejected"
    else if failedAssertions config == []
    then "ok"
    else failedAssertions config;
in {
  hm-music = music;
  # The same cases as eval.nix, against home-manager's own declarations.
  cases = {
    valid-music = outcome [samples.hm-music];
    hm-sftp-without-knownHosts = outcome [
      (lib.recursiveUpdate samples.hm-music {
        services.ciphersync.jobs.music.target.sftp.knownHosts = [];
      })
    ];
    unknown-option = outcome [
      (lib.recursiveUpdate samples.hm-music {services.ciphersync.jobs.music.targte = {};})
    ];
    local-and-sftp-at-once = outcome [
      (lib.recursiveUpdate samples.hm-music {
        services.ciphersync.jobs.music.target.local.path = "/mnt/usb/music";
      })
    ];
  };
}
