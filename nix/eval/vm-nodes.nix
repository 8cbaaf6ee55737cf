# Renders the nodes of one VM test of nix/tests for the systemd-nspawn
# stand-in of the NixOS test driver (tests/systemd/vmscripts.py): the
# testScript as the Nix file builds it, and for every node what the
# modules and the node's own settings ask of the machine, in the shape of
# expected/nixos-*.json (etc, services, timers, paths, users, groups, fuse,
# tmpfiles, openssh) plus what the stubs do not declare (freeform:
# virtualisation.memorySize, ...), listed by option path so that the mapping
# (tests/systemd/nodemap.py) refuses a setting it was not taught. The
# storage server's option stubs (stubs/nixos-server.nix: services.openssh,
# users.users.<n>.{shell,openssh}, systemd.paths) are declared for every
# node, as vm-tests.nix does, so a server node renders as the server
# module's own evaluation (expected/nixos-server.json) does.
#
#   nix-instantiate --eval --strict --json nix/eval/vm-nodes.nix \
#     --arg nixpkgsLib $NIXPKGS_LIB/lib --arg nixpkgsPath DIR --argstr test backup-restore
#
# nixpkgsPath stands for pkgs.path: a directory with nixos/tests/ssh-keys.nix
# (the harness writes one with fresh keys; the default is the fake stub).
# The test framework's arguments are stand-ins: pkgs (stubs/pkgs.nix, every
# package a fake store path; writeText keeps its text), self (this
# repository's modules, the fake package), home-manager (its NixOS module is
# replaced by the mapping's activation stand-in, so an empty module here),
# and pkgs.testers.runNixOSTest returns its argument.
{
  nixpkgsLib,
  nixpkgsPath ? ./stubs/nixpkgs,
  test,
}: let
  lib = import nixpkgsLib;
  stubPkgs = import ./stubs/pkgs.nix {inherit lib;};
  system = "x86_64-linux";
  fake = name:
    stubPkgs.ciphersync
    // {
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    };

  pkgs =
    stubPkgs
    // {
      path = nixpkgsPath;
      stdenv.hostPlatform.system = system;
      testers.runNixOSTest = args: args;
      jq = fake "jq";
    };

  self = {
    nixosModules.default = ../module.nix;
    nixosModules.server = ../server-module.nix;
    homeManagerModules.default = ../hm-module.nix;
    packages.${system}.default = stubPkgs.ciphersync;
  };

  home-manager.nixosModules.home-manager = {};

  # Options the stubs do not declare are kept (freeform), at the top and
  # inside users.users.<name> and environment.etc.<name>.
  freeform = {
    config._module.freeformType = lib.types.attrsOf lib.types.anything;
    options.users.users = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule {freeformType = lib.types.attrsOf lib.types.anything;});
    };
    options.environment.etc = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule {freeformType = lib.types.attrsOf lib.types.anything;});
    };
  };

  failed = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  clean = attrs: removeAttrs attrs ["_module"];

  # Option paths ("a.b.c") of config values no option declares.
  freeformPaths = options: config: prefix:
    lib.concatLists (lib.mapAttrsToList (
        name: value: let
          path = prefix ++ [name];
        in
          if name == "_module"
          then []
          else if !(options ? ${name})
          then
            # A freeform attrset: list its leaves, so that each setting is named.
            if lib.isAttrs value && !(lib.isDerivation value) && value != {}
            then freeformPaths {} value path
            else [(lib.concatStringsSep "." path)]
          else if lib.isOption options.${name}
          then []
          else if lib.isAttrs value
          then freeformPaths options.${name} value path
          else []
      )
      config);

  # A file the node asks for: a job file (its JSON value), a text, or a
  # store file whose text the stub kept (the snake-oil keys).
  fileEntry = where: entry: let
    src = entry.source or null;
    extra = removeAttrs (clean entry) ["source" "text"];
  in
    extra
    // (
      if src != null && src ? jobConfig
      then {json = src.jobConfig;}
      else if (entry.text or null) != null
      then {inherit (entry) text;}
      else if src != null && src ? text
      then {inherit (src) text;}
      else throw "${where}: a file whose content is not known here (${toString src})"
    );

  # The store file each sftp job's known_hosts_file names: the job's
  # knownHosts lines, as nix/job-options.nix writes them with writeText.
  knownHostsFiles = jobs: jobFiles:
    lib.listToAttrs (lib.concatLists (lib.mapAttrsToList (
        name: job:
          lib.optional (job.target.sftp or null != null) {
            name = jobFiles.${name}.target.known_hosts_file;
            value = lib.concatLines job.target.sftp.knownHosts;
          }
      )
      jobs));

  evalHome = nodeName: user: module: let
    hm = lib.evalModules {
      modules = [
        ./stubs/home-manager.nix
        ../hm-module.nix
        {_module.freeformType = lib.types.attrsOf lib.types.anything;}
        {_module.args.pkgs = pkgs;}
        {
          home.username = user;
          home.homeDirectory = "/home/${user}";
        }
        module
      ];
    };
    config = hm.config;
  in
    if failed config != []
    then throw "${nodeName}: home-manager ${user}: ${lib.concatStringsSep "; " (failed config)}"
    else {
      inherit (config.home) username homeDirectory;
      configFile = lib.mapAttrs (n: fileEntry "${nodeName}: ${user}: xdg.configFile.${n}") config.xdg.configFile;
      services = config.systemd.user.services;
      timers = config.systemd.user.timers;
      packages = map toString config.home.packages;
      knownHostsFiles = knownHostsFiles (config.services.ciphersync.jobs or {}) (
        lib.mapAttrs (name: _: config.xdg.configFile."ciphersync/${name}.json".source.jobConfig) (config.services.ciphersync.jobs or {})
      );
      freeform = lib.genAttrs (freeformPaths hm.options config []) (p: lib.attrByPath (lib.splitString "." p) null config);
    };

  evalNode = nodeName: node: let
    evaluated = lib.evalModules {
      modules = [
        ./stubs/nixos.nix
        ./stubs/nixos-server.nix
        freeform
        {_module.args.pkgs = pkgs;}
        node
      ];
    };
    config = evaluated.config;
    jobs = config.services.ciphersync.jobs or {};
    jobFiles = lib.mapAttrs (name: _: config.environment.etc."ciphersync/${name}.json".source.jobConfig) jobs;
    accountShells = config.services.ciphersync.server.accountShells or {};
  in
    if failed config != []
    then throw "${nodeName}: ${lib.concatStringsSep "; " (failed config)}"
    else {
      etc = lib.mapAttrs (n: fileEntry "${nodeName}: environment.etc.${n}") config.environment.etc;
      services =
        lib.mapAttrs (
          _: s:
            lib.filterAttrs (k: v: !(lib.elem k ["script" "preStart"] && v == "")) (
              clean s // {path = map toString s.path;}
            )
        )
        config.systemd.services;
      timers = lib.mapAttrs (_: clean) config.systemd.timers;
      paths = lib.mapAttrs (_: clean) config.systemd.paths;
      # A shell that is a package as {path, shellPath, text}: the mapping
      # applies nixpkgs' utils.toShellPath to it, which needs shellPath; a
      # storage account's shell (a file in its script's store path, the
      # server module's accountShells) as {path, text}; another path as
      # its string; none (null) is left out.
      users = lib.mapAttrs (user: u:
        removeAttrs (clean u) ["shell"]
        // lib.optionalAttrs (u.shell != null) {
          shell =
            if lib.isDerivation u.shell
            then {
              path = toString u.shell;
              shellPath = u.shell.shellPath or null;
              text = u.shell.text or null;
            }
            else if accountShells ? ${user}
            then {
              path = toString u.shell;
              inherit (accountShells.${user}) text;
            }
            else toString u.shell;
        })
      config.users.users;
      fileSystems = lib.mapAttrs (_: clean) config.fileSystems;
      groups = lib.mapAttrs (_: clean) config.users.groups;
      fuse = {
        programs = clean config.programs.fuse;
        inherit (config.boot) kernelModules;
      };
      systemPackages = map (p: p.name) config.environment.systemPackages;
      tmpfiles = config.systemd.tmpfiles.rules;
      openssh = {
        inherit (config.services.openssh) enable settings hostKeys extraConfig sftpFlags;
      };
      knownHostsFiles = knownHostsFiles jobs jobFiles;
      homeManager = lib.mapAttrs (evalHome nodeName) (config.home-manager.users or {});
      # Every setting no stub declares, by option path, with its value.
      freeform = lib.genAttrs (freeformPaths evaluated.options config []) (
        p: let
          v = lib.attrByPath (lib.splitString "." p) null config;
        in
          if lib.isDerivation v
          then "<derivation ${v.name}>"
          else if lib.isFunction v
          then "<function>"
          else v
      );
    };

  evaluated = import (../tests + "/${test}.nix") {inherit pkgs self home-manager;};
in {
  inherit (evaluated) name testScript;
  nodes = lib.mapAttrs evalNode evaluated.nodes;
}
