# The NixOS side of the real evaluation (eval.nix with --arg nixpkgs DIR):
# the module is evaluated with nixpkgs' own
#   nixos/lib/utils.nix, systemd-lib.nix, systemd-unit-options.nix,
#   systemd-types.nix (the unit types: unitNameType, Type=/Restart= checks,
#   the [Unit] keys and PATH they derive),
#   nixos/modules/programs/fuse.nix, nixos/modules/misc/assertions.nix,
#   nixos/modules/misc/meta.nix,
#   nixos/modules/config/users-groups.nix (users.users, users.groups: the
#   real user/group submodules, their defaults, a group's members computed
#   from every user's extraGroups, root/nobody and the system groups, the
#   assertions on them)
# taken from DIR, and with the unknown-option check on. What stays stubbed
# is a leaf:
#   - this file's option declarations stand for those of
#     nixos/modules/system/boot/systemd.nix (nixos-26.05, 74cc63f7):
#     systemd.services/timers typed with utils.systemdUtils.types exactly
#     as there, systemd.package and systemd.globalEnvironment; systemd.nix
#     itself is not evaluated (it builds the whole systemd closure);
#   - `_module.args.utils`: what nixos/modules/misc/extra-arguments.nix
#     passes (utils.nix applied to lib, config, pkgs);
#   - security.wrappers (nixos/modules/security/wrappers/default.nix),
#     set by fuse.nix: a leaf of attrs;
#   - what users-groups.nix reads or sets of other modules (ids,
#     activation scripts, sysusers/userborn switches, initrd, sshd's
#     authorizedKeys, ...): users-groups-leaves.nix;
#   - /etc, packages, kernel modules: nixos-leaves.nix;
#   - pkgs: stubs/pkgs.nix.
{
  config,
  lib,
  pkgs,
  nixpkgs,
  ...
}: let
  inherit (lib) mkOption types;
  utils = import (nixpkgs + "/nixos/lib/utils.nix") {inherit lib config pkgs;};
  systemdTypes = utils.systemdUtils.types;
in {
  imports = [
    ./nixos-leaves.nix
    ./users-groups-leaves.nix
    (nixpkgs + "/nixos/modules/config/users-groups.nix")
    (nixpkgs + "/nixos/modules/misc/assertions.nix")
    (nixpkgs + "/nixos/modules/misc/meta.nix")
    (nixpkgs + "/nixos/modules/programs/fuse.nix")
  ];
  options = {
    systemd.package = mkOption {
      type = types.package;
      default = pkgs.systemd;
    };
    systemd.globalEnvironment = mkOption {
      type = types.attrsOf (types.nullOr (types.oneOf [types.str types.path types.package]));
      default = {};
    };
    systemd.services = mkOption {
      type = systemdTypes.services;
      default = {};
    };
    systemd.timers = mkOption {
      type = systemdTypes.timers;
      default = {};
    };
    security.wrappers = mkOption {
      type = types.attrsOf types.unspecified;
      default = {};
    };
  };
  config._module.args.utils = utils;
}
