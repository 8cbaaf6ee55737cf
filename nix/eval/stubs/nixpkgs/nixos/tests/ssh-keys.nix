# Stand-in for nixpkgs' nixos/tests/ssh-keys.nix at the flake's pin
# (74cc63f702f7d60a557e152a57b40fb1fd0f72ac; same attribute names, fake
# values) so that the VM test definitions evaluate without nixpkgs.
pkgs: {
  snakeOilPrivateKey = pkgs.writeText "privkey.snakeoil" "fake ecdsa private key";
  snakeOilPublicKey = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYfake snakeoil";
  snakeOilEd25519PrivateKey = pkgs.writeText "privkey.snakeoil" "fake ed25519 private key";
  snakeOilEd25519PublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIfake snakeoil";
}
