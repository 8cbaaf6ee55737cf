# Stub declarations of the NixOS options that nix/module.nix sets, typed
# like the real ones where the difference matters for merging (lists
# concatenate, attrsets of submodules merge per name). Nothing here renders
# units: the evaluated config is what the module asked for.
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
