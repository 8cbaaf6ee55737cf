# Evaluates the VM test definitions in nix/tests without nixpkgs: the
# tester returns its arguments, the nodes are evaluated with the module
# stubs (options the stubs do not declare, such as services.openssh, are
# absorbed by a freeform type), and the ciphersync jobs they declare must
# pass the modules' types and assertions. check.sh then compiles each
# testScript with Python. Nothing here boots a VM.
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  stubPkgs = import ./stubs/pkgs.nix {inherit lib;};
  system = "x86_64-linux";

  pkgs =
    stubPkgs
    // {
      path = ./stubs/nixpkgs;
      stdenv.hostPlatform.system = system;
      testers.runNixOSTest = args: args;
      jq =
        stubPkgs.ciphersync
        // {
          name = "jq";
          outPath = "/nix/store/00000000000000000000000000000000-jq";
        };
    };

  self = {
    nixosModules.default = ../module.nix;
    nixosModules.server = ../server-module.nix;
    homeManagerModules.default = ../hm-module.nix;
    packages.${system}.default = stubPkgs.ciphersync;
  };

  freeform = {
    _module.freeformType = lib.types.attrsOf lib.types.anything;
  };

  home-manager.nixosModules.home-manager = {};

  failed = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  evalNode = test: nodeName: node: let
    config =
      (lib.evalModules {
        modules = [
          ./stubs/nixos.nix
          ./stubs/nixos-server.nix
          freeform
          {_module.args.pkgs = pkgs;}
          node
        ];
      }).config;
    jobs = config.services.ciphersync.jobs or {};
    # A storage server node: its accounts, users and sshd text are forced
    # too (types and assertions).
    server = config.services.ciphersync.server or {enable = false;};
    serverForced =
      if server.enable
      then builtins.deepSeq [server.accounts config.users.users config.services.openssh.extraConfig config.systemd.paths] true
      else true;
    hmUsers = config.home-manager.users or {};
    hmJobs =
      lib.mapAttrs (
        user: module: let
          hm =
            (lib.evalModules {
              modules = [
                ./stubs/home-manager.nix
                ../hm-module.nix
                freeform
                {_module.args.pkgs = pkgs;}
                {
                  home.username = user;
                  home.homeDirectory = "/home/${user}";
                }
                module
              ];
            }).config;
        in
          if failed hm != []
          then throw "${test}.${nodeName}: home-manager ${user}: ${lib.concatStringsSep "; " (failed hm)}"
          else lib.attrNames hm.systemd.user.services
      )
      hmUsers;
  in
    if failed config != []
    then throw "${test}.${nodeName}: ${lib.concatStringsSep "; " (failed config)}"
    else
      builtins.deepSeq [jobs serverForced] {
        units = lib.attrNames config.systemd.services;
        homeManagerUnits = hmJobs;
      };

  evalTest = file: let
    test = import file {inherit pkgs self home-manager;};
  in {
    inherit (test) name testScript;
    nodes = lib.mapAttrs (evalNode test.name) test.nodes;
  };
in {
  tests = lib.genAttrs ["backup-restore" "timers" "server-down" "home-manager" "server"] (
    n: evalTest (../tests + "/${n}.nix")
  );
  # The Python helpers every testScript starts with; check.sh runs them
  # against a fabricated /proc.
  inherit ((import ../tests/common.nix {inherit pkgs self;})) pythonHelpers;
}
