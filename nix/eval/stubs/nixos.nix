# Stub declarations of the NixOS options that nix/module.nix sets, typed
# like the real ones where the difference matters for merging (lists
# concatenate, attrsets of submodules merge per name). Nothing here renders
# units: the evaluated config is what the module asked for. The leaves that
# the real evaluation keeps stubbed too (/etc, packages, kernel modules) are
# in nixos-leaves.nix; users.users/users.groups in users-groups.nix (the
# real evaluation takes nixpkgs' users-groups.nix).
#
# Stands for these files of nixpkgs at the flake's pin (nixos-26.05,
# 74cc63f702f7d60a557e152a57b40fb1fd0f72ac), written from their documented
# shape, not transcribed:
#   systemd.services, systemd.timers  nixos/lib/systemd-unit-options.nix,
#                                     systemd-types.nix (via systemd.nix)
#   programs.fuse                     nixos/modules/programs/fuse.nix
#   assertions, warnings              nixos/modules/misc/assertions.nix
# What the real unit types add and this does not: onFailure/wants/after
# typed as unitNameType (job-options.nix checks onFailure with the same
# pattern), serviceConfig's Type/Restart value check, the [Unit] keys and
# PATH derived from description/wants/after/path. With NIXPKGS set,
# check.sh evaluates the module with those real files instead
# (nixos-real.nix) and requires the same rendering.
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
      before = list;
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
in {
  imports = [./nixos-leaves.nix ./users-groups.nix];
  options = {
    assertions = list;
    warnings = list;
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = {};
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule timer);
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
  };
}
