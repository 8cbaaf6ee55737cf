# The stub evaluation's users.users and users.groups (stubs/nixos.nix
# imports this; the real evaluation, stubs/nixos-real.nix, uses nixpkgs'
# own nixos/modules/config/users-groups.nix instead). Stands for that file
# at the flake's pin (nixos-26.05, 74cc63f702f7d60a557e152a57b40fb1fd0f72ac),
# written from its documented shape, not transcribed: only the attributes
# the samples and the regressions read; `name` defaults to the attribute
# name there too. What the real file adds (a group's `members` computed
# from every user's extraGroups, a normal user's group/home defaults,
# root/nobody and the system groups, its assertions) is checked by the real
# run only.
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
    users.users = mkOption {
      type = types.attrsOf (types.submodule user);
      default = {};
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule group);
      default = {};
    };
  };
}
