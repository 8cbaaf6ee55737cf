# A deliberately broken addition to nix/module.nix, for check.sh only
# (eval.nix --arg mutant true): the users.users/users.groups definitions
# the module had before a2f1f64 (issue 15, item 1). They make the set of
# users and groups depend on the jobs and on users.users itself, so that a
# user whose group is config.users.groups.X.name, or a job user given as
# config.users.users.alice.name, recurses forever. check.sh requires the
# regressions user-group-from-users-groups and job-user-from-users-users
# to fail with it, under the stub declarations and under nixpkgs' own
# users-groups.nix alike: a regression that cannot fail proves nothing.
{
  config,
  lib,
  ...
}: let
  cfg = config.services.ciphersync;
  nonRootUsers = lib.unique (
    lib.filter (u: u != "root") (lib.mapAttrsToList (_: job: job.user) cfg.jobs)
  );
in {
  users.users = lib.genAttrs nonRootUsers (user: {
    isSystemUser = lib.mkOverride 1400 (!config.users.users.${user}.isNormalUser);
    group = lib.mkOverride 1400 user;
    description = lib.mkOverride 1400 "ciphersync backup user";
  });
  users.groups = lib.mkMerge (
    map (user: lib.mkIf (config.users.users.${user}.group == user) {${user} = {};}) nonRootUsers
  );
}
