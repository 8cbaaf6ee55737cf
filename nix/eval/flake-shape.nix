# The shape of the flake's outputs, as `nix flake show` lists it: every
# output attribute down to the systems' entries, each with the kind `nix
# flake show` names it by (the derivations' names are left out: the stub
# packages have none). Evaluated with nixpkgs' lib and stub inputs, no
# value is built or forced beyond its attribute names. check.sh compares it
# with the block in the README.
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  pkgs = import ./stubs/pkgs.nix {inherit lib;};
  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs ["x86_64-linux" "aarch64-linux"] (_: pkgs);
  };
  self = flake.outputs {
    inherit self nixpkgs;
    home-manager = {};
  };
  kinds = {
    checks = "derivation";
    packages = "package";
    devShells = "development environment";
    formatter = "package";
    nixosModules = "NixOS module";
    overlays = "Nixpkgs overlay";
    # Not an output Nix knows: `nix flake show` says "unknown".
    homeManagerModules = "unknown";
  };
  perSystem = ["checks" "packages" "devShells"];
  tree = prefix: names: f:
    lib.imap1 (
      i: n: let
        last = i == lib.length names;
      in
        f (prefix
          + (
            if last
            then "└───"
            else "├───"
          )) (prefix
          + (
            if last
            then "    "
            else "│   "
          ))
        n
    )
    names;
  output = head: cont: name: let
    value = self.${name};
  in
    if lib.elem name perSystem
    then
      ["${head}${name}"]
      ++ lib.concatLists (
        tree cont (lib.attrNames value) (
          h: c: system:
            ["${h}${system}"]
            ++ tree c (lib.attrNames value.${system}) (h': _: n: "${h'}${n}: ${kinds.${name}}")
        )
      )
    else ["${head}${name}"] ++ tree cont (lib.attrNames value) (h: _: n: "${h}${n}: ${kinds.${name}}");
in
  lib.concatStringsSep "\n" (
    ["<flake>"] ++ lib.concatLists (tree "" (lib.attrNames self) output)
  )
  + "\n"
