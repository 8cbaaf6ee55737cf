# Stub declarations of the NixOS options that nix/module.nix (and the real
# programs/fuse.nix) set but whose real modules are not evaluated here:
# they are shared by the stub evaluation (stubs/nixos.nix imports this) and
# the real one (stubs/nixos-real.nix). Typed like the real ones where the
# difference matters for merging (lists concatenate, attrsets of submodules
# merge per name).
#
# Stands for these files of nixpkgs at the flake's pin (nixos-26.05,
# 74cc63f702f7d60a557e152a57b40fb1fd0f72ac), written from their documented
# shape, not transcribed:
#   users.users, users.groups         nixos/modules/config/users-groups.nix
#                                     (only the attributes read here; `name`
#                                     defaults to the attribute name there too)
#   environment.etc                   nixos/modules/system/etc/etc.nix
#   environment.systemPackages        nixos/modules/config/system-path.nix
#   boot.kernelModules                nixos/modules/system/boot/kernel.nix
# Why not the real ones: users-groups.nix's config part sets and reads
# dozens of options of other modules (activation scripts, systemd-sysusers,
# userborn, pam, initrd) that would each need a stub, and the harness would
# test those stubs more than the module; etc.nix and kernel.nix build the
# system (pkgs.runCommand, system.build) and add nothing to the checks.
{lib, ...}: let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.unspecified;
    default = [];
  };
  str = mkOption {
    type = types.str;
    default = "";
  };
  bool = default:
    mkOption {
      type = types.bool;
      inherit default;
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

  user = {name, ...}: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
      };
      isSystemUser = bool false;
      isNormalUser = bool false;
      group = str;
      description = str;
      home = mkOption {
        type = types.str;
        default = "/var/empty";
      };
      extraGroups = list;
    };
  };

  group = {name, ...}: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
      };
      gid = mkOption {
        type = types.nullOr types.int;
        default = null;
      };
      members = list;
    };
  };
in {
  options = {
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = {};
    };
    environment.systemPackages = list;
    users.users = mkOption {
      type = types.attrsOf (types.submodule user);
      default = {};
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule group);
      default = {};
    };
    boot.kernelModules = list;
  };
}
