{
  description = "ciphersync: encrypted remote backups built from gocryptfs, sshfs and rsync";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    home-manager = {
      url = "github:nix-community/home-manager/release-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = {
    self,
    nixpkgs,
    home-manager,
  }: let
    inherit (nixpkgs) lib;
    systems = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
  in {
    overlays.default = final: _prev: {
      ciphersync = final.callPackage ./nix/package.nix {};
    };

    packages = forAllSystems (pkgs: rec {
      ciphersync = pkgs.callPackage ./nix/package.nix {};
      default = ciphersync;
    });

    # The modules default `services.ciphersync.package` to `pkgs.ciphersync`
    # when the overlay is applied, else to nix/package.nix built with the
    # system's own nixpkgs.
    # The same module under two names: `default`, and `ciphersync` for
    # configurations that import several flakes' modules by name.
    nixosModules = rec {
      ciphersync = ./nix/module.nix;
      default = ciphersync;
      # The storage server (services.ciphersync.server): a module of its
      # own, so that a client needs no sshd options and a server no jobs.
      ciphersync-server = ./nix/server-module.nix;
      server = ciphersync-server;
    };
    homeManagerModules = rec {
      ciphersync = ./nix/hm-module.nix;
      default = ciphersync;
    };

    checks = forAllSystems (
      pkgs: let
        testArgs = {
          inherit pkgs self home-manager;
        };
      in {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm-backup-restore = import ./nix/tests/backup-restore.nix testArgs;
        vm-timers = import ./nix/tests/timers.nix testArgs;
        vm-server-down = import ./nix/tests/server-down.nix testArgs;
        vm-home-manager = import ./nix/tests/home-manager.nix testArgs;
        vm-server = import ./nix/tests/server.nix testArgs;
        # No formatting check here: the .nix files are formatted with
        # alejandra 4.0.0 (what nixpkgs 26.05 ships, `nix fmt`), but the
        # machines that run this project's CI cannot install it (crates.io
        # publishes no alejandra binary), so such a check would never have
        # run before it reached a user. nix/eval/check.sh checks the
        # formatting when ALEJANDRA names that binary.
      }
    );

    devShells = forAllSystems (pkgs: {
      default = pkgs.mkShell {
        inputsFrom = [self.packages.${pkgs.stdenv.hostPlatform.system}.default];
        packages = [
          pkgs.cargo
          pkgs.clippy
          pkgs.rustfmt
          pkgs.rust-analyzer
          pkgs.alejandra
          pkgs.gocryptfs
          pkgs.sshfs
          pkgs.rsync
          pkgs.openssh
          pkgs.fuse3
          pkgs.jq
        ];
      };
    });

    # `nix fmt`: alejandra, the formatter every .nix file here is checked
    # against (nix/eval/check.sh with ALEJANDRA set).
    formatter = forAllSystems (pkgs: pkgs.alejandra);
  };
}
