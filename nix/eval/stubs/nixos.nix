# Stub declarations of the NixOS options that nix/module.nix sets, typed
# like the real ones where the difference matters for merging (lists
# concatenate, attrsets of submodules merge per name). Nothing here renders
# units: the evaluated config is what the module asked for.
#
# Stands for these files of nixpkgs at the flake's pin (nixos-26.05,
# 74cc63f702f7d60a557e152a57b40fb1fd0f72ac), written from their documented
# shape, not transcribed (no nixpkgs checkout fits on the machines that run
# this; single files from other revisions do not evaluate with the 26.11
# lib):
#   systemd.services, systemd.timers  nixos/lib/systemd-unit-options.nix,
#                                     systemd-types.nix (via systemd.nix)
#   users.users, users.groups         nixos/modules/config/users-groups.nix
#                                     (only the attributes read here; `name`
#                                     defaults to the attribute name there too)
#   programs.fuse                     nixos/modules/programs/fuse.nix
#   environment.etc                   nixos/modules/system/etc/etc.nix
#   assertions, warnings              nixos/modules/misc/assertions.nix
#   boot.kernelModules, environment.systemPackages  (lists, as there)
# What the real unit types add and this does not: onFailure/wants/after
# typed as unitNameType (job-options.nix checks onFailure with the same
# pattern), serviceConfig's Type/Restart value check.
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
  attrs = mkOption {
    type = types.attrsOf types.unspecified;
    default = {};
  };
  bool = default:
    mkOption {
      type = types.bool;
      inherit default;
    };

  service = {
    options = {
      description = str;
      wants = list;
      after = list;
      requires = list;
      wantedBy = list;
      onFailure = list;
      path = list;
      environment = attrs;
      serviceConfig = attrs;
      unitConfig = attrs;
      script = str;
      preStart = str;
      restartIfChanged = bool true;
    };
  };

  timer = {
    options = {
      wantedBy = list;
      timerConfig = attrs;
    };
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
    assertions = list;
    warnings = list;
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = {};
    };
    environment.systemPackages = list;
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = {};
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule timer);
      default = {};
    };
    users.users = mkOption {
      type = types.attrsOf (types.submodule user);
      default = {};
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule group);
      default = {};
    };
    programs.fuse = {
      enable = bool true;
      userAllowOther = bool false;
      mountMax = mkOption {
        type = types.int;
        default = 1000;
      };
    };
    boot.kernelModules = list;
  };
}
