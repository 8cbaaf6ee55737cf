{
  description = "ciphersync: encrypted remote backups built from gocryptfs, sshfs and rsync";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    home-manager = {
      url = "github:nix-community/home-manager/release-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      home-manager,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Every .nix file of the repository, for the formatting check.
      nixFiles = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
      };
    in
    {
      overlays.default = final: _prev: {
        ciphersync = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        ciphersync = pkgs.callPackage ./nix/package.nix { };
        default = ciphersync;
      });

      # The modules default `services.ciphersync.package` to `pkgs.ciphersync`
      # when the overlay is applied, else to nix/package.nix built with the
      # system's own nixpkgs.
      nixosModules.default = ./nix/module.nix;
      homeManagerModules.default = ./nix/hm-module.nix;

      checks = forAllSystems (
        pkgs:
        let
          testArgs = {
            inherit pkgs self home-manager;
          };
        in
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          vm-backup-restore = import ./nix/tests/backup-restore.nix testArgs;
          vm-timers = import ./nix/tests/timers.nix testArgs;
          vm-server-down = import ./nix/tests/server-down.nix testArgs;
          vm-home-manager = import ./nix/tests/home-manager.nix testArgs;
          formatting = pkgs.runCommand "ciphersync-nix-formatting" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
            cd ${nixFiles}
            find . -name '*.nix' -print0 | xargs -0 nixfmt --check
            touch $out
          '';
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.cargo
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nixfmt
            pkgs.gocryptfs
            pkgs.sshfs
            pkgs.rsync
            pkgs.openssh
            pkgs.fuse3
            pkgs.jq
          ];
        };
      });

      # nixfmt-rfc-style: since nixpkgs 25.11 the RFC 166 formatter is
      # `pkgs.nixfmt` and `nixfmt-rfc-style` is only a deprecated alias of it.
      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
