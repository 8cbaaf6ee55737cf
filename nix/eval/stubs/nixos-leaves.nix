# Stub declarations of the NixOS options that nix/module.nix (and the real
# programs/fuse.nix and users-groups.nix) set but whose real modules are not
# evaluated here: they are shared by the stub evaluation (stubs/nixos.nix
# imports this) and the real one (stubs/nixos-real.nix). Typed like the
# real ones where the difference matters for merging (lists concatenate,
# attrsets of submodules merge per name).
#
# Stands for these files of nixpkgs at the flake's pin (nixos-26.05,
# 74cc63f702f7d60a557e152a57b40fb1fd0f72ac), written from their documented
# shape, not transcribed:
#   environment.etc                   nixos/modules/system/etc/etc.nix
#   environment.systemPackages        nixos/modules/config/system-path.nix
#   boot.kernelModules                nixos/modules/system/boot/kernel.nix
#   systemd.tmpfiles.rules            nixos/modules/system/boot/systemd/tmpfiles.nix
#                                     (the client module's btrfs sourceSnapshot
#                                     directories, the server's account dirs)
# Why not the real ones: etc.nix and kernel.nix build the system
# (pkgs.runCommand, system.build) and add nothing to the checks; the module
# only adds to these lists and attrsets. users.users/users.groups: the stub
# evaluation declares them in users-groups.nix, the real one takes
# nixpkgs' own nixos/modules/config/users-groups.nix.
{lib, ...}: let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.unspecified;
    default = [];
  };

  etcEntry = {
    options = {
      text = mkOption {
        type = types.nullOr types.lines;
        default = null;
      };
      source = mkOption {
        type = types.nullOr types.unspecified;
        default = null;
      };
      mode = mkOption {
        type = types.str;
        default = "symlink";
      };
    };
  };
in {
  options = {
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = {};
    };
    environment.systemPackages = list;
    boot.kernelModules = list;
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [];
    };
  };
}
