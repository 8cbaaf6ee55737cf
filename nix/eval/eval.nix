# Evaluates the job submodule, the NixOS module and the home-manager module
# with nixpkgs' lib and the stubs in ./stubs, and returns what check.sh
# compares with ./expected. Usage (from check.sh):
#
#   nix-instantiate --eval --strict --json nix/eval/eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib -A nixos-docs
#
# With `--arg nixpkgs DIR` (a nixpkgs checkout) the NixOS module is
# evaluated with nixpkgs' own unit types, programs.fuse and assertions
# (stubs/nixos-real.nix) instead of stubs/nixos.nix; nixos-docs and
# nixos-photos then give the same shape, the keys nixpkgs derives from the
# module's settings checked and taken out (realService below).
{
  nixpkgsLib,
  nixpkgs ? null,
  # `--arg mutant true` adds mutants/users-from-jobs.nix next to the
  # module: the defect of issue 15 put back, for check.sh to show that the
  # regressions catch it.
  mutant ? false,
}: let
  lib = import nixpkgsLib;
  pkgs = import ./stubs/pkgs.nix {inherit lib;};
  samples = import ./samples.nix {inherit pkgs;};
  real = nixpkgs != null;

  evalWith = stub: module: modules:
    lib.evalModules {
      modules =
        [
          stub
          module
          {_module.args.pkgs = pkgs;}
        ]
        ++ lib.optional mutant ./mutants/users-from-jobs.nix
        ++ modules;
      specialArgs = lib.optionalAttrs real {inherit nixpkgs;};
    };
  evalNixos =
    evalWith (
      if real
      then ./stubs/nixos-real.nix
      else ./stubs/nixos.nix
    )
    ../module.nix;
  evalHm = evalWith ./stubs/home-manager.nix ../hm-module.nix;
  # The storage server: the NixOS stubs plus the openssh, tmpfiles and path
  # unit declarations only it sets (stubs/nixos-server.nix).
  evalServer = modules:
    evalWith ./stubs/nixos.nix ../server-module.nix ([./stubs/nixos-server.nix] ++ modules);

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  checkAssertions = what: config: let
    failed = failedAssertions config;
  in
    if failed == []
    then config
    else throw "${what}: assertions failed:\n${lib.concatStringsSep "\n" failed}";

  # A job file is the validating derivation; its value rides along in
  # passthru.jobConfig. Make sure the build really runs check-config on it.
  jobFileValue = where: drv:
    if !(drv ? jobConfig)
    then throw "${where}: not a ciphersync job file"
    else if !(lib.hasInfix "/bin/ciphersync check-config " drv.buildCommand)
    then throw "${where}: the job file is not validated with `ciphersync check-config`"
    else drv.jobConfig;

  fileEntry = where: entry:
    if entry.source != null && entry.source ? jobConfig
    then jobFileValue where entry.source
    else if entry.text != null
    then {inherit (entry) text;}
    else {source = toString entry.source;};

  clean = attrs: removeAttrs attrs ["_module"];

  # The real unit types (nixos/lib/systemd-lib.nix) add to what the module
  # sets: the default PATH packages after `path`, PATH in `environment`,
  # and the [Unit] keys made from description/wants/after/requires/
  # onFailure. Each addition is taken out only when it is exactly what
  # nixpkgs derives from the module's own values, so that the rest must
  # equal the stub's rendering (expected/nixos-*.json); anything else stays
  # in and shows in the diff. The options the real type declares and the
  # module leaves at their defaults are dropped (not in the stub's shape),
  # except when they are not at their default.
  pathDefaults = map toString [pkgs.coreutils pkgs.findutils pkgs.gnugrep pkgs.gnused pkgs.systemd];
  dropIfEqual = attrs: key: want:
    if attrs ? ${key} && attrs.${key} == want
    then removeAttrs attrs [key]
    else attrs;
  # A stub service as rendered: the options the module did not set that
  # realService drops too (an empty script, preStart or before) left out,
  # so that both renderings can be compared.
  unsetLeft = s:
    lib.filterAttrs (k: v: !(lib.elem k ["script" "preStart" "before"] && (v == "" || v == []))) (
      clean s // {path = map toString s.path;}
    );

  realService = s: let
    path = map toString s.path;
    n = lib.length path - lib.length pathDefaults;
    own =
      if n >= 0 && lib.drop n path == pathDefaults
      then lib.take n path
      else path;
    derived =
      lib.optionalAttrs (s.requires != []) {Requires = toString s.requires;}
      // lib.optionalAttrs (s.wants != []) {Wants = toString s.wants;}
      // lib.optionalAttrs (s.after != []) {After = toString s.after;}
      // lib.optionalAttrs (s.description != "") {Description = s.description;}
      // lib.optionalAttrs (s.onFailure != []) {OnFailure = toString s.onFailure;};
    unitConfig = lib.foldl (acc: k: dropIfEqual acc k derived.${k}) s.unitConfig (lib.attrNames derived);
    environment = dropIfEqual s.environment "PATH" (lib.makeBinPath s.path + ":" + lib.makeSearchPathOutput "bin" "sbin" s.path);
    # Options of the real type the module must leave alone.
    untouched = {
      script = "";
      preStart = "";
      postStart = "";
      reload = "";
      preStop = "";
      postStop = "";
      startAt = [];
      reloadIfChanged = false;
      stopIfChanged = true;
      enable = true;
      aliases = [];
      requiredBy = [];
      upheldBy = [];
      before = [];
      bindsTo = [];
      partOf = [];
      conflicts = [];
      requisite = [];
      upholds = [];
      onSuccess = [];
      documentation = [];
      restartTriggers = [];
      reloadTriggers = [];
    };
    changed = lib.filterAttrs (k: v: s ? ${k} && s.${k} != v) untouched;
  in
    {
      inherit (s) description wants after requires wantedBy onFailure restartIfChanged serviceConfig;
      inherit unitConfig environment;
      path = own;
    }
    // lib.optionalAttrs (changed != {}) {realTypeOptionsChanged = lib.mapAttrs (k: _: s.${k}) changed;};
  # With nixpkgs' users-groups.nix, a user has more options than the stub
  # declares. The stub's ones are compared; every other one must be at the
  # value the real type gives a system user that sets nothing.
  realUser = u: let
    stubKeys = ["name" "isSystemUser" "isNormalUser" "group" "description" "home" "extraGroups"];
    untouched = {
      enable = true;
      uid = null;
      homeMode = "700";
      cryptHomeLuks = null;
      pamMount = {};
      shell = toString pkgs.shadow;
      ignoreShellProgramCheck = false;
      subUidRanges = [];
      subGidRanges = [];
      autoSubUidGidRange = false;
      createHome = false;
      useDefaultShell = false;
      hashedPassword = null;
      password = null;
      hashedPasswordFile = null;
      passwordFile = null;
      initialHashedPassword = null;
      initialPassword = null;
      packages = [];
      expires = null;
      linger = null;
      openssh.authorizedKeys = {
        keys = [];
        keyFiles = [];
      };
    };
    value = k:
      if k == "shell" && u.shell != null
      then toString u.shell
      else u.${k};
    changed = lib.filterAttrs (k: v: value k != v) untouched;
    unknown = lib.subtractLists (stubKeys ++ lib.attrNames untouched) (lib.attrNames (clean u));
  in
    lib.getAttrs stubKeys u
    // lib.optionalAttrs (changed != {}) {realTypeOptionsChanged = lib.mapAttrs (k: _: value k) changed;}
    // lib.optionalAttrs (unknown != []) {realTypeOptionsUnknown = unknown;};

  # What the real evaluation has without any job: users-groups.nix's own
  # unit (linger-users), users (root, nobody) and system groups. They are
  # taken out of the rendering (a user or group only while it is exactly
  # what nixpkgs declares), so that the rest must equal the stub's.
  nixpkgsOwn = let
    config = (evalNixos []).config;
  in {
    services = lib.attrNames config.systemd.services;
    inherit (config.users) users groups;
  };
  sameJson = a: b: builtins.toJSON (clean a) == builtins.toJSON (clean b);
  withoutOwn = own: attrs:
    if real
    then lib.filterAttrs (n: v: !(own ? ${n} && sameJson own.${n} v)) attrs
    else attrs;
  ownServicesOut = services:
    if real
    then removeAttrs services nixpkgsOwn.services
    else services;

  realTimer = t:
    {inherit (t) wantedBy timerConfig;}
    // lib.optionalAttrs (t.unitConfig != {}) {inherit (t) unitConfig;};

  # The unit files nixpkgs would write (systemd-lib.nix's serviceToUnit and
  # timerToUnit, as systemd.nix calls them), for check.sh's sanity check.
  realUnits = sample: let
    evaluated = evalNixos [sample];
    config = checkAssertions "units" evaluated.config;
    sl = evaluated._module.args.utils.systemdUtils.lib;
  in
    lib.mapAttrs' (n: s:
      lib.nameValuePair "${n}.service" {
        text = (sl.serviceToUnit s).text;
        serviceConfig = s.serviceConfig;
      })
    (ownServicesOut config.systemd.services)
    // lib.mapAttrs' (n: t:
      lib.nameValuePair "${n}.timer" {
        text = (sl.timerToUnit t).text;
        serviceConfig = t.timerConfig;
      })
    config.systemd.timers;

  nixosShape = name: sample: let
    config = checkAssertions name (evalNixos [sample]).config;
  in
    {
      # The real programs/fuse.nix also writes /etc/fuse.conf: taken out
      # when it says what programs.fuse (below) says.
      etc = lib.mapAttrs (n: fileEntry "${name}: environment.etc.${n}") (
        if real
        then
          dropIfEqual config.environment.etc "fuse.conf" (config.environment.etc."fuse.conf"
            // {
              text = "${lib.optionalString (!config.programs.fuse.userAllowOther) "#"}user_allow_other\nmount_max = ${toString config.programs.fuse.mountMax}\n";
            })
        else config.environment.etc
      );
      services =
        lib.mapAttrs (
          _: s:
            if real
            then realService s
            else unsetLeft s
        )
        (ownServicesOut config.systemd.services);
      timers =
        lib.mapAttrs (
          _: t:
            if real
            then realTimer t
            else clean t
        )
        config.systemd.timers;
      users = lib.mapAttrs (_: u:
        if real
        then realUser u
        else clean u) (withoutOwn nixpkgsOwn.users config.users.users);
      groups = lib.mapAttrs (_: clean) (withoutOwn nixpkgsOwn.groups config.users.groups);
      fuse = {
        programs = clean config.programs.fuse;
        inherit (config.boot) kernelModules;
      };
    }
    # Only a job with a btrfs or lvm sourceSnapshot adds tmpfiles lines.
    // lib.optionalAttrs (config.systemd.tmpfiles.rules != []) {
      tmpfiles = config.systemd.tmpfiles.rules;
    };

  # What the server module renders: its units, users, tmpfiles lines and
  # the sshd_config text it adds (and each account's shell script).
  serverShape = name: sample: let
    config = checkAssertions name (evalServer [sample]).config;
    # An account's shell is a file in its script's store path; the text
    # comes from the script (the module's accountShells).
    users = lib.mapAttrs (user: u:
      clean u
      // {
        shell = {
          path = toString u.shell;
          inherit (config.services.ciphersync.server.accountShells.${user}) text;
        };
      })
    config.users.users;
  in {
    services = lib.mapAttrs (_: unsetLeft) config.systemd.services;
    timers = lib.mapAttrs (_: clean) config.systemd.timers;
    paths = lib.mapAttrs (_: clean) config.systemd.paths;
    inherit users;
    groups = lib.mapAttrs (_: clean) config.users.groups;
    tmpfiles = config.systemd.tmpfiles.rules;
    fileSystems = lib.mapAttrs (_: clean) config.fileSystems;
    sshd = {
      inherit (config.services.openssh) enable extraConfig;
    };
    packages = map toString config.environment.systemPackages;
  };

  # Mistaken server configurations: "ok", the failed assertions, or
  # "rejected" (a wrong type).
  serverSample = samples.nixos-server.services.ciphersync.server;
  serverOutcome = modules: let
    evaluated = evalServer modules;
    forced = builtins.tryEval (
      builtins.deepSeq evaluated.config.services.ciphersync.server.accounts (
        builtins.deepSeq (failedAssertions evaluated.config) (
          builtins.deepSeq evaluated.config.services.openssh.extraConfig true
        )
      )
    );
    failed = failedAssertions evaluated.config;
  in
    if !forced.success
    then "rejected"
    else if failed == []
    then "ok"
    else failed;
  serverCase = patch: serverOutcome [{services.ciphersync.server = lib.recursiveUpdate serverSample patch;}];
  serverCases = {
    valid-server = serverCase {};
    keepSealed-without-appendOnly = serverCase {accounts.desktop.keepSealed.keepLast = 3;};
    account-without-keys = serverCase {accounts.desktop.authorizedKeys = [];};
    account-name-not-a-user-name = serverCase {accounts."Bad Name".authorizedKeys = ["ssh-ed25519 AAAA x"];};
    key-with-a-newline = serverCase {accounts.desktop.authorizedKeys = ["ssh-ed25519 AAAA x\nssh-rsa BBBB y"];};
    dataDir-relative = serverCase {dataDir = "srv/backup";};
    dataDir-with-a-blank = serverCase {dataDir = "/srv/back up";};
    keepLast-zero = serverCase {accounts.laptop.keepSealed.keepLast = 0;};
    quota-not-a-size = serverCase {accounts.laptop.quota = "lots";};
    sftp-flags = serverOutcome [
      samples.nixos-server
      {services.openssh.sftpFlags = ["-l" "INFO"];}
    ];
  };

  hmShape = name: sample: let
    config = checkAssertions name (evalHm [sample]).config;
  in {
    configFile = lib.mapAttrs (n: fileEntry "${name}: xdg.configFile.${n}") config.xdg.configFile;
    services = config.systemd.user.services;
    timers = config.systemd.user.timers;
    packages = map toString config.home.packages;
  };

  # ---- contradictory or mistaken options -------------------------------

  docs = samples.nixos-docs.services.ciphersync.jobs.docs;
  photos = samples.nixos-photos.services.ciphersync.jobs.photos;

  # Outcome of one configuration: "ok", the failed assertion messages, or
  # "rejected" when the module system refuses a value (wrong type, missing
  # or unknown option) before any assertion runs.
  outcome = evalFn: base: modules: let
    evaluated = evalFn ([base] ++ modules);
    forced = builtins.tryEval (
      builtins.deepSeq evaluated.config.services.ciphersync.jobs (
        builtins.deepSeq (failedAssertions evaluated.config) true
      )
    );
    failed = failedAssertions evaluated.config;
  in
    if !forced.success
    then "rejected"
    else if failed == []
    then "ok"
    else failed;

  nixosCase = jobs:
    outcome evalNixos {services.ciphersync.package = pkgs.ciphersync;} [
      {services.ciphersync.jobs = jobs;}
      {inherit (samples.nixos-photos) users;}
    ];
  withDocs = patch: nixosCase {docs = lib.recursiveUpdate docs patch;};
  withTarget = patch: nixosCase {docs = docs // {target = patch;};};
  sftpOf = docs.target.sftp;
  withPhotos = patch: nixosCase {photos = lib.recursiveUpdate photos patch;};
  # The home-manager sample with a source snapshot of `kind` (refused:
  # a user cannot make zfs or lvm snapshots).
  hmMusicWithSnapshot = kind:
    outcome evalHm
    {
      home.username = "alice";
      home.homeDirectory = "/home/alice";
    }
    [
      (lib.recursiveUpdate samples.hm-music {
        services.ciphersync.jobs.music.sourceSnapshot = kind;
      })
    ];

  cases = {
    valid-docs = withDocs {};
    valid-photos = withPhotos {};
    sftp-without-knownHosts = withDocs {target.sftp.knownHosts = [];};
    sftp-without-host = withTarget {sftp = removeAttrs sftpOf ["host"];};
    sftp-without-user = withTarget {sftp = removeAttrs sftpOf ["user"];};
    # 9. The target is a tagged union: an ssh option on a local target,
    # even one set to its default value, and two kinds at once are refused
    # by the type, not by comparing values with defaults.
    local-with-ssh-options = withPhotos {
      target.local.host = "backup.example.org";
      target.local.knownHosts = ["backup.example.org ssh-ed25519 AAAA"];
    };
    local-with-rsync-transport = withPhotos {target.local.transport = "rsync";};
    local-with-explicit-default-connections = withPhotos {target.local.connections = 4;};
    local-and-sftp-at-once = withPhotos {target.sftp = sftpOf;};
    local-and-sftp-in-two-definitions = outcome evalNixos {services.ciphersync.package = pkgs.ciphersync;} [
      {inherit (samples.nixos-photos) users;}
      {services.ciphersync.jobs.photos = photos;}
      {services.ciphersync.jobs.photos.target.sftp = sftpOf;}
    ];
    empty-target = withTarget {};
    local-target-inside-source = withPhotos {target.local.path = "/srv/photos/backup";};
    source-inside-local-target = withPhotos {source = "/mnt/usb/photos/src";};
    two-jobs-one-target = nixosCase {
      inherit docs;
      docs2 = docs;
    };
    bad-job-name = nixosCase {"my docs" = docs;};
    store-path-passwordFile = withDocs {passwordFile = "/nix/store/00000000000000000000000000000000-secret";};
    relative-passwordFile = withDocs {passwordFile = "keys/docs";};
    nix-path-passwordFile = withDocs {passwordFile = ./samples.nix;};
    store-path-identityFile = withDocs {
      target.sftp.identityFile = "/nix/store/00000000000000000000000000000000-id_ed25519";
    };
    knownHosts-line-without-host = withDocs {
      target.sftp.knownHosts = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0jhkkOFDZobC8"];
    };
    relative-target-path = withDocs {target.sftp.path = "backups/docs";};
    unknown-target-kind = withTarget {s3 = sftpOf;};
    onFailure-without-suffix = withDocs {onFailure = ["notify-admin"];};
    # 5. What NixOS's unitNameType refuses must be refused here, not later.
    onFailure-unknown-suffix = withDocs {onFailure = ["notify-admin.email"];};
    onFailure-bad-character = withDocs {onFailure = ["notify!admin.service"];};
    maxDeletePercent-over-100 = withDocs {maxDeletePercent = 101;};
    keepLast-zero = withDocs {snapshots.keepLast = 0;};
    plaintext-names-over-sftp = withDocs {filenames = "plaintext";};
    unknown-option = withDocs {targte = {};};
    # Issue 18: the operator options refuse what systemd or rsync would.
    pingUrl-not-http = withDocs {monitoring.pingUrl = "ftp://hc-ping.com/x";};
    pingUrl-with-space = withDocs {monitoring.pingUrl = "https://hc-ping.com/a b";};
    nice-out-of-range = withDocs {nice = 20;};
    waitForTarget-over-a-day = withDocs {waitForTarget = 1441;};
    ioSchedulingClass-unknown = withDocs {ioSchedulingClass = "background";};
    bwlimit-zero = withDocs {target.sftp.bwlimit = 0;};
    bwlimit-on-local-as-string = withPhotos {target.local.bwlimit = "1m";};
    spaceWarningPercent-100 = withDocs {target.sftp.spaceWarningPercent = 100;};
    bad-user-name = withPhotos {user = "Alice Smith";};
    undeclared-user = withPhotos {user = "bob";};
    # Issue 19: sourceSnapshot. zfs and lvm need root; a non-root btrfs
    # job is accepted (a subvolume the user owns); `/` has no parent to
    # hold a btrfs snapshot.
    valid-photos-btrfs = withPhotos {sourceSnapshot = "btrfs";};
    non-root-zfs-snapshot = withPhotos {sourceSnapshot = "zfs";};
    non-root-lvm-snapshot = withPhotos {sourceSnapshot = "lvm";};
    btrfs-snapshot-of-root = withDocs {
      source = "/";
      sourceSnapshot = "btrfs";
    };
    unknown-snapshot-kind = withDocs {sourceSnapshot = "xfs";};
    hm-zfs-snapshot = hmMusicWithSnapshot "zfs";
    hm-lvm-snapshot = hmMusicWithSnapshot "lvm";
    hm-sftp-without-knownHosts =
      outcome evalHm
      {
        home.username = "alice";
        home.homeDirectory = "/home/alice";
      }
      [
        (lib.recursiveUpdate samples.hm-music {
          services.ciphersync.jobs.music.target.sftp.knownHosts = [];
        })
      ];
  };

  # ---- regressions: defects a real evaluation found (issue 15) -----------
  # Each is "ok" or says what is wrong. check.sh evaluates each one on its
  # own: an infinite recursion aborts the evaluation (tryEval cannot catch
  # it), and that must fail one case, not all.
  evalPhotosWith = modules:
    (evalNixos (
      [
        {services.ciphersync.package = pkgs.ciphersync;}
        {services.ciphersync.jobs.photos = photos;}
      ]
      ++ modules
    )).config;
  forced = config:
    builtins.deepSeq [
      config.users.users
      config.users.groups
      # The real unit type has options without a default
      # (startLimitBurst): force what the stub's shape holds.
      (
        if real
        then lib.mapAttrs (_: realService) (ownServicesOut config.systemd.services)
        else config.systemd.services
      )
      (failedAssertions config)
    ]
    config;
  expect = what: ok:
    if ok
    then "ok"
    else what;
  backupService = config: config.systemd.services.ciphersync-photos-backup.serviceConfig;

  docsBackup = (checkAssertions "nixos-docs" (evalNixos [samples.nixos-docs]).config).systemd.services.ciphersync-docs-backup.serviceConfig;

  regressions = {
    # Issue 18: the start ping, then the preHook, then init, then the
    # backup; after it the postHook, then the end ping. Hooks with "+"
    # (full privileges), pings with "-" (their failure is ignored).
    backup-unit-order = let
      pre = docsBackup.ExecStartPre;
      post = docsBackup.ExecStopPost;
      at = i: l: lib.elemAt l i;
    in
      expect "ExecStartPre = ${builtins.toJSON pre}, ExecStopPost = ${builtins.toJSON post}" (
        lib.length pre
        == 3
        && lib.hasPrefix "-" (at 0 pre)
        && lib.hasInfix "ciphersync-docs-ping" (at 0 pre)
        && lib.hasInfix "start" (at 0 pre)
        && lib.hasPrefix "+" (at 1 pre)
        && lib.hasInfix "ciphersync-docs-pre-hook" (at 1 pre)
        && lib.hasSuffix ''"init"'' (at 2 pre)
        && lib.length post == 2
        && lib.hasPrefix "+" (at 0 post)
        && lib.hasInfix "ciphersync-docs-post-hook" (at 0 post)
        && lib.hasPrefix "-" (at 1 post)
        && lib.hasInfix "ciphersync-docs-ping" (at 1 post)
        && lib.hasInfix "systemd-inhibit" docsBackup.ExecStart
        && docsBackup.TimeoutStartSec == "12h"
      );
    # Issue 18: exit 4 (partial) is a success of the backup unit only,
    # unless partialIsFailure (photos); the home-manager units add it to
    # their 75. The postHook learns CIPHERSYNC_OUTCOME=partial.
    partial-exit-status = let
      nixos = (checkAssertions "nixos-docs" (evalNixos [samples.nixos-docs]).config).systemd.services;
      photos = (forced (evalPhotosWith [])).systemd.services;
      hm = (evalHm [samples.hm-music]).config.systemd.user.services;
      got = builtins.toJSON {
        docs-backup = nixos.ciphersync-docs-backup.serviceConfig.SuccessExitStatus or null;
        docs-verify = nixos.ciphersync-docs-verify.serviceConfig.SuccessExitStatus or null;
        photos-backup = photos.ciphersync-photos-backup.serviceConfig.SuccessExitStatus or null;
        music-backup = hm.ciphersync-music-backup.Service.SuccessExitStatus;
        music-verify = hm.ciphersync-music-verify.Service.SuccessExitStatus;
      };
    in
      expect "SuccessExitStatus: ${got}" (
        got
        == builtins.toJSON {
          docs-backup = "4";
          docs-verify = null;
          photos-backup = null;
          music-backup = "75 4";
          music-verify = "75";
        }
        && lib.any (lib.hasInfix "CIPHERSYNC_OUTCOME=partial") docsBackup.ExecStopPost
      );
    # The password and the identity reach every unit as credentials, and
    # the job file names them.
    credentials-in-units-and-job-file = let
      config = checkAssertions "nixos-docs" (evalNixos [samples.nixos-docs]).config;
      job = jobFileValue "docs" config.environment.etc."ciphersync/docs.json".source;
      units = lib.attrValues (ownServicesOut config.systemd.services);
    in
      expect "LoadCredential/job file wrong: ${builtins.toJSON (map (u: u.serviceConfig.LoadCredential) units)} ${builtins.toJSON job}" (
        lib.all (u:
          u.serviceConfig.LoadCredential
          == [
            "password:/run/keys/ciphersync-docs"
            "identity:/var/lib/ciphersync/docs/id_ed25519"
          ])
        units
        && job.password_credential == "password"
        && job.target.identity_credential == "identity"
      );

    # 1. A service account whose group is taken from users.groups, the
    # common NixOS idiom: the module must not make users.groups depend on
    # users.users.
    user-group-from-users-groups = let
      config = forced (evalPhotosWith [
        (
          {config, ...}: {
            services.ciphersync.jobs.photos.user = lib.mkForce "backup";
            users.users.backup = {
              isSystemUser = true;
              group = config.users.groups.backup.name;
            };
            users.groups.backup = {};
          }
        )
      ]);
    in
      expect "users.users.backup.group is ${config.users.users.backup.group}" (
        config.users.users.backup.group == "backup" && failedAssertions config == []
      );
    # 1. The job's user given as a reference to the declared user.
    job-user-from-users-users = let
      config = forced (evalPhotosWith [
        (
          {config, ...}: {
            services.ciphersync.jobs.photos.user = lib.mkForce config.users.users.alice.name;
            users.users.alice.isNormalUser = true;
          }
        )
      ]);
    in
      expect "User= is ${(backupService config).User}, failed ${builtins.toJSON (failedAssertions config)}" (
        (backupService config).User == "alice" && failedAssertions config == []
      );
    # 1, under nixpkgs' users-groups.nix: there a group's `members` is
    # computed from every user's extraGroups, so users.groups depends on
    # users.users as well. The job user by reference, its group by
    # reference, and a second user that joins that group by reference: the
    # real evaluation must compute the members ([bob]) and find no failed
    # assertion (users-groups.nix's own included).
    group-members-by-reference = let
      config = forced (evalPhotosWith [
        (
          {config, ...}: {
            services.ciphersync.jobs.photos.user = lib.mkForce config.users.users.alice.name;
            users.users.alice = {
              isSystemUser = true;
              group = config.users.groups.alice.name;
            };
            users.groups.alice = {};
            users.users.bob = {
              isNormalUser = true;
              group = "bob";
              extraGroups = [config.users.groups.alice.name];
            };
            users.groups.bob = {};
          }
        )
      ]);
    in
      expect "User= is ${(backupService config).User}, members of alice ${builtins.toJSON config.users.groups.alice.members}, failed ${builtins.toJSON (failedAssertions config)}" (
        (backupService config).User
        == "alice"
        && failedAssertions config == []
        && (!real || config.users.groups.alice.members == ["bob"])
      );
    # 3. A user declared elsewhere keeps its own description (GECOS).
    keeps-user-description = let
      config = forced (evalPhotosWith [
        {
          users.users.alice.isNormalUser = true;
          users.users.alice.group = "users";
        }
      ]);
    in
      expect "users.users.alice.description became '${config.users.users.alice.description}'" (
        config.users.users.alice.description == ""
      );
    # 4. A local target that does not exist yet must not stop the unit at
    # namespace setup (226/NAMESPACE): "-" makes the path optional, and the
    # helper reports the missing directory itself.
    local-target-optional-in-ReadWritePaths = let
      paths = (backupService (forced (evalPhotosWith []))).ReadWritePaths;
    in
      expect "ReadWritePaths = ${builtins.toJSON paths}" (
        lib.elem "-/mnt/usb/photos" paths && !(lib.elem "/mnt/usb/photos" paths)
      );
    # 6. ExecStart is parsed by systemd, not a shell: its quoting, "%"
    # specifiers and "$" variables (nixpkgs' utils.escapeSystemdExecArgs).
    execstart-systemd-quoting = let
      config =
        (evalHm [
          (lib.recursiveUpdate samples.hm-music {
            home.homeDirectory = "/home/al ice%h$USER'x";
            services.ciphersync.metrics.textfileDirectory = "/m%d $X";
          })
        ]).config;
      got = config.systemd.user.services.ciphersync-music-backup.Service.ExecStart;
      want = ''"/nix/store/00000000000000000000000000000000-ciphersync/bin/ciphersync" "-c" "/home/al ice%%h$$USER'x/.config/ciphersync/music.json" "--metrics-file" "/m%%d $$X/ciphersync-music.prom" "backup"'';
    in
      expect "ExecStart is ${got}, want ${want}" (got == want);
  };

  # ---- option reference --------------------------------------------------

  optionDocs = let
    opts = lib.optionAttrSetToDocList (evalNixos []).options.services.ciphersync;
    visible = lib.filter (o: o.visible && !o.internal) opts;
    show = v:
      if v ? text
      then v.text
      else builtins.toJSON v;
    code = s: let
      t = lib.trim s;
    in
      if lib.hasInfix "\n" t
      then "\n\n```nix\n${t}\n```\n"
      else " `${t}`";
    one = o:
      lib.concatStrings [
        "### `${o.name}`\n\n"
        "${lib.trim o.description}\n\n"
        "- type: ${o.type}\n"
        (lib.optionalString (o ? default) "- default:${code (show o.default)}\n")
        (lib.optionalString (o ? example) "- example:${code (show o.example)}\n")
        (lib.optionalString (o.name == "services.ciphersync.jobs.<name>.user") "- NixOS only (home-manager jobs run as the home's user)\n")
        "\n"
      ];
  in
    lib.concatStrings (map one visible);
  # The same declarations as one table: the summary at the top of docs/options.md.
  optionTable = let
    opts = lib.optionAttrSetToDocList (evalNixos []).options.services.ciphersync;
    leaves =
      lib.filter (
        o:
          o.visible
          && !o.internal
          && !(lib.elem o.type [
            "submodule"
            "attribute set of (submodule)"
          ])
      )
      opts;
    cell = s: lib.replaceStrings ["|" "\n"] ["\\|" " "] (lib.trim s);
    firstSentence = d: let
      parts = lib.splitString ". " (cell d);
    in
      if lib.length parts == 1
      then cell d
      else "${lib.head parts}.";
    short = lib.removePrefix "services.ciphersync.";
    row = o: "| `${short o.name}` | ${cell o.type} | ${
      if o ? default
      then "`${cell (o.default.text or "")}`"
      else "required"
    } | ${firstSentence o.description} |\n";
  in
    lib.concatStrings (
      [
        "| option | type | default | description |\n"
        "|---|---|---|---|\n"
      ]
      ++ map row leaves
    );
  # docs/options.md: the table, then every option in full (with examples).
  optionReference = lib.concatStrings [
    "<!-- generated by nix/eval/check.sh from the option declarations; do not edit:\n"
    "     NIXPKGS_LIB=... UPDATE_EXPECTED=1 nix/eval/check.sh rewrites it -->\n\n"
    "# ciphersync options\n\n"
    "All options live under `services.ciphersync`, in the NixOS module and the\n"
    "home-manager module alike; `jobs.<name>.user` is NixOS only (home-manager\n"
    "jobs run as the home's user). Each job becomes a job file (see the README's\n"
    "\"Job file\" table for the JSON fields these options write) and three timed\n"
    "units.\n\n"
    "## Summary\n\n"
    optionTable
    "\n## Options\n\n"
    (lib.removeSuffix "\n" optionDocs)
  ];
in {
  nixos-docs = nixosShape "nixos-docs" samples.nixos-docs;
  nixos-photos = nixosShape "nixos-photos" samples.nixos-photos;
  nixos-snapshots = nixosShape "nixos-snapshots" samples.nixos-snapshots;
  hm-music = hmShape "hm-music" samples.hm-music;
  nixos-server = serverShape "nixos-server" samples.nixos-server;
  server-assertions = serverCases;
  assertions = cases;
  inherit regressions;
  regression-names = lib.attrNames regressions;
  # The regressions an infinite recursion breaks: check.sh requires each to
  # fail with mutants/users-from-jobs.nix (--arg mutant true).
  recursion-regressions = ["user-group-from-users-groups" "job-user-from-users-users" "group-members-by-reference"];
  options-reference = optionReference;
  real-units = lib.optionalAttrs real {
    docs = realUnits samples.nixos-docs;
    photos = realUnits samples.nixos-photos;
  };
}
