# The real evaluation's stand-ins for what nixpkgs'
# nixos/modules/config/users-groups.nix (taken from $NIXPKGS, not stubbed)
# reads or sets of other modules. Each is a leaf: declared so that the
# unknown-option check passes and users-groups.nix's own declarations,
# defaults, `members` computation and assertions run as they are. Written
# from the options' documented shape, not transcribed; the file each one
# stands for is named, at the flake's pin (nixos-26.05, 74cc63f7) unless a
# rev is given. The packages it reads (shadow, and fish/xonsh/zsh for its
# shell assertions) are fakes in stubs/pkgs.nix.
{lib, ...}: let
  inherit (lib) mkOption types;
  bool = mkOption {
    type = types.bool;
    default = false;
  };
  strings = mkOption {
    type = types.listOf types.str;
    default = [];
  };
  attrs = mkOption {
    type = types.attrsOf types.unspecified;
    default = {};
  };
in {
  options = {
    # nixos/modules/misc/ids.nix: the static uids/gids, same type.
    ids.uids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
    };
    ids.gids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
    };
    # nixos/modules/programs/shadow.nix (type and default as there).
    users.defaultUserShell = mkOption {
      type = types.either types.path types.shellPackage;
      default = "/bin/sh";
    };
    # nixos/modules/services/networking/ssh/sshd.nix extends each user
    # with openssh.authorizedKeys; users-groups.nix reads it when
    # users.mutableUsers = false.
    users.users = mkOption {
      type = types.attrsOf (types.submodule {
        options.openssh.authorizedKeys = {
          keys = strings;
          keyFiles = mkOption {
            type = types.listOf types.path;
            default = [];
          };
        };
      });
    };
    # nixos/modules/system/activation/activation-script.nix
    system.activationScripts = attrs;
    # nixos/modules/config/system-path.nix (system.path is the system's
    # buildEnv; read only for users with `packages`, which need
    # pkgs.buildEnv that stubs/pkgs.nix does not have)
    system.path = mkOption {
      internal = true;
      type = types.unspecified;
    };
    environment.pathsToLink = strings;
    environment.extraOutputsToInstall = strings;
    # nixos/modules/config/shells-environment.nix
    environment.profiles = strings;
    # nixos/modules/system/boot/systemd/sysusers.nix
    systemd.sysusers.enable = bool;
    # nixos/modules/services/system/userborn.nix
    services.userborn.enable = bool;
    # nixos/modules/system/boot/systemd/initrd.nix (users/groups under it
    # are declared by users-groups.nix itself)
    boot.initrd.systemd.enable = bool;
    boot.initrd.systemd.contents = attrs;
    boot.initrd.systemd.storePaths = mkOption {
      type = types.listOf types.unspecified;
      default = [];
    };
    # nixos/modules/security/google_oslogin.nix
    security.googleOsLogin.enable = bool;
    # nixos/modules/programs/{fish,xonsh,zsh}/...: users-groups.nix asserts
    # that a user whose shell is one of them has it enabled.
    programs.fish.enable = bool;
    programs.xonsh.enable = bool;
    programs.zsh.enable = bool;
  };
  # The ids users-groups.nix reads, with their values in NixOS/nixpkgs'
  # ids.nix (001d025f). `clock`: users-groups.nix (005ab72f) reads
  # ids.gids.clock, which no ids.nix read here has; 329 stands for it, a gid
  # no other entry takes (only the uniqueness assertion looks at it).
  config.ids = {
    uids = {
      root = 0;
      nobody = 65534;
    };
    gids = {
      root = 0;
      wheel = 1;
      kmem = 2;
      tty = 3;
      disk = 6;
      audio = 17;
      floppy = 18;
      uucp = 19;
      lp = 20;
      cdrom = 24;
      tape = 25;
      video = 26;
      dialout = 27;
      utmp = 29;
      adm = 55;
      input = 174;
      kvm = 302;
      render = 303;
      sgx = 304;
      shadow = 318;
      clock = 329;
      users = 100;
      nixbld = 30000;
      nogroup = 65534;
    };
  };
}
