# Stub declarations of the home-manager options that nix/hm-module.nix sets
# or reads, with home-manager's defaults for the XDG directories.
#
# Stands for home-manager at the flake's pin (release-26.05,
# 3cd22efe6471dc7365c822bd9ad73a21e55f38fb): modules/systemd.nix
# (systemd.user.*), modules/files.nix and modules/misc/xdg.nix
# (xdg.configFile, xdg.configHome, xdg.stateHome), modules/home-environment.nix
# (home.*), nixpkgs' nixos/modules/misc/assertions.nix. With HOME_MANAGER
# and NIXPKGS set, check.sh also evaluates the module with those real
# modules (real-hm.nix) and requires the same rendering; the real unit type
# keeps some values as lists and adds empty Documentation/X-* keys.
{
  config,
  lib,
  ...
}: let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.unspecified;
    default = [];
  };
  # home-manager's unit type: section -> key -> value.
  unit = types.attrsOf (types.attrsOf types.unspecified);
in {
  options = {
    assertions = list;
    warnings = list;
    home.username = mkOption {type = types.str;};
    home.homeDirectory = mkOption {type = types.str;};
    home.packages = list;
    xdg.configHome = mkOption {
      type = types.str;
      default = "${config.home.homeDirectory}/.config";
    };
    xdg.stateHome = mkOption {
      type = types.str;
      default = "${config.home.homeDirectory}/.local/state";
    };
    xdg.configFile = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            source = mkOption {
              type = types.nullOr types.unspecified;
              default = null;
            };
            text = mkOption {
              type = types.nullOr types.lines;
              default = null;
            };
          };
        }
      );
      default = {};
    };
    systemd.user.services = mkOption {
      type = types.attrsOf unit;
      default = {};
    };
    systemd.user.timers = mkOption {
      type = types.attrsOf unit;
      default = {};
    };
  };
}
