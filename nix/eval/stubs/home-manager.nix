# Stub declarations of the home-manager options that nix/hm-module.nix sets
# or reads, with home-manager's defaults for the XDG directories.
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
