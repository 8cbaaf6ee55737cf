# Stub declarations of the NixOS options that nix/server-module.nix sets
# beyond stubs/nixos.nix (which it imports alongside): only the server's
# evaluation uses them, so the client module's renderings are unchanged.
#
# Stands for these files of nixpkgs at the flake's pin (nixos-26.05,
# 74cc63f702f7d60a557e152a57b40fb1fd0f72ac), written from their documented
# shape, not transcribed:
#   services.openssh.{enable,package,extraConfig,sftpFlags,settings,hostKeys}
#                                     nixos/modules/services/networking/ssh/sshd.nix
#   users.users.<name>.openssh.authorizedKeys.keys
#                                     the same file (it extends users.users
#                                     with its own submodule, as here)
#   users.users.<name>.shell          nixos/modules/config/users-groups.nix
#                                     (a package or a path; null by default)
#   systemd.paths                     nixos/lib/systemd-unit-options.nix
#                                     (pathOptions, via systemd.nix)
#   fileSystems.<path>.{device,fsType,options}
#                                     nixos/modules/tasks/filesystems.nix
{
  lib,
  pkgs,
  ...
}: let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.unspecified;
    default = [];
  };

  userExtension = {
    options = {
      shell = mkOption {
        type = types.nullOr (types.either types.package types.path);
        default = null;
      };
      openssh.authorizedKeys.keys = mkOption {
        type = types.listOf types.singleLineStr;
        default = [];
      };
    };
  };

  fileSystem = {
    options = {
      device = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      fsType = mkOption {
        type = types.str;
        default = "auto";
      };
      options = mkOption {
        type = types.nonEmptyListOf types.str;
        default = ["defaults"];
      };
    };
  };

  path = {
    options = {
      wantedBy = list;
      pathConfig = mkOption {
        type = types.attrsOf types.unspecified;
        default = {};
      };
    };
  };
in {
  options = {
    services.openssh = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.openssh;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      sftpFlags = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      # The VM tests' nodes set these.
      settings = mkOption {
        type = types.attrsOf types.anything;
        default = {};
      };
      hostKeys = list;
    };
    users.users = mkOption {
      type = types.attrsOf (types.submodule userExtension);
    };
    fileSystems = mkOption {
      type = types.attrsOf (types.submodule fileSystem);
      default = {};
    };
    systemd.paths = mkOption {
      type = types.attrsOf (types.submodule path);
      default = {};
    };
  };
}
