"""The one place that says how a VM test's node becomes a Debian container.

Input: one node of nix/eval/vm-nodes.nix (what the modules and the node's
own settings render, with the stubs). Output: files under the container's
root (an overlay on the cached Debian tree) and a list of what could not be
reproduced, which the report prints.

What the rendering gives and how it lands here:

  systemd.services / systemd.timers / systemd.paths
                                      unit files, by units.py as in run.sh
                                      (store paths -> /usr/local for the
                                      ciphersync package, /usr otherwise;
                                      /run/wrappers -> /usr); a path unit's
                                      pathConfig -> [Path] and wantedBy ->
                                      paths.target.wants/, as NixOS's
                                      systemd-lib renders it
  a service's `script`                NixOS runs it as `bash -e` script from
                                      the store (makeJobScript); here the same
                                      text in /etc/ciphersync-test/scripts/
                                      <unit>-start, run by ExecStart=
  environment.etc.<path>              /etc/<path>: a job file as its JSON, a
                                      `text` (or a store file whose text the
                                      stub kept: the test keys) verbatim; mode
                                      as given ("symlink": 0444, the store's),
                                      owner by a tmpfiles `z` line (the user
                                      exists only once sysusers ran at boot)
  the job's known_hosts store file    at the store path the job file names,
                                      the job's knownHosts lines (what
                                      nix/job-options.nix writes)
  users.users / users.groups          sysusers.d (NixOS's defaults for
                                      isNormalUser: group users, home
                                      /home/<name> made 0700 by tmpfiles,
                                      shell bash, uid from 1000 up unless
                                      given); `linger` -> /var/lib/systemd/
                                      linger/<name>; openssh.authorizedKeys
                                      -> /etc/ssh/authorized_keys.d/<name>,
                                      which sshd reads as on NixOS;
                                      `shell` as nixpkgs' utils.toShellPath
                                      computes it (_shell): a package that
                                      is no shell package, or a store path,
                                      is a refusal (NixOS throws "is not a
                                      shell package"), mapped anyway as the
                                      stubs render it; a Nix-built script
                                      ({path, text}: the server module's
                                      account shell, a file in the script's
                                      store path, which NixOS keeps as it
                                      is) written at that path by units.py
                                      (#!/bin/bash for the store's
                                      runtimeShell, tools mapped), 0555, the
                                      sysusers line's shell; no
                                      shell: bash for a normal user, Debian's
                                      nologin for a system one (NixOS: its
                                      nologin)
  /var/empty                          NixOS's activation script makes it on
                                      every system (the home of system
                                      users, where sshd changes into at a
                                      login); here a 0555 root dir in the
                                      root (NixOS also makes it immutable)
  services.openssh                    Debian's ssh.service (alias
                                      sshd.service, as NixOS names it) and
                                      Debian's sshd_config in place of the
                                      one NixOS generates (Debian's defaults
                                      stand around the node's settings,
                                      among them UsePAM yes and an
                                      argument-free `Subsystem sftp
                                      /usr/lib/openssh/sftp-server`, as
                                      NixOS writes it with sftpFlags = []);
                                      settings and hostKeys -> a drop-in in
                                      /etc/ssh/sshd_config.d (the only
                                      HostKey is the one the node declares);
                                      extraConfig appended last to
                                      sshd_config by units.py (NixOS too
                                      writes it after its own settings), its
                                      store paths mapped (ForceCommand's
                                      ciphersync -> /usr/local/bin, the
                                      openssh package's sftp-server ->
                                      Debian's /usr/lib/openssh/sftp-server);
                                      sftpFlags must be empty (Debian's
                                      Subsystem line has none)
  systemd.tmpfiles.rules              /etc/tmpfiles.d/00-nixos.conf (where
                                      NixOS writes them too), after the
                                      homes of normal users
  (NixOS's PAM, not a setting)        su starts no logind session, as on
                                      NixOS (its su service has no
                                      pam_systemd): Debian's su includes
                                      common-session-noninteractive instead
                                      of common-session, the only
                                      difference being pam_systemd
  programs.fuse                       /etc/fuse.conf; /dev/fuse a 0666 node of
                                      the container's own (the harness)
  environment.systemPackages          must be in the tree (PACKAGE_FILES);
                                      ciphersync is the binary under test
  home-manager.users.<u>              home-manager's NixOS module is not
                                      evaluated: its activation is a stand-in
                                      unit home-manager-<u>.service (the
                                      real one's ordering and settings, see
                                      home_manager_unit) that links the files
                                      the home-manager module renders
                                      (xdg.configFile, user units) into the
                                      home, as home-manager's activation does

Not reproduced (printed with every run):
  virtualisation.memorySize           a container shares the host's memory
  boot.kernelModules                  the host's kernel (fuse, sch_tbf built in
                                      or loaded there)
  services.timesyncd.enable = false   the tree has no timesyncd to disable
  home-manager.useGlobalPkgs          one package set here (the stubs)
  home.stateVersion                   no effect on what the module renders
and the tree has every package either node needs, so a node may find a tool
its NixOS config does not install (sshfs on the server, jq on the server).

Clock jumps (`date -s WHEN` as a whole command, the timers test): the clock
cannot move here (NOT_RUNNABLE says why), so the jump is mapped to its
effect on the node's timers, see CLOCK_JUMP; the report names every jump
it simulated.

Lines of a testScript that cannot run here: NOT_RUNNABLE (the driver refuses
them before running anything and the report names the line).
"""

import json
import os
import re
import shlex

import units

# `date -s WHEN` alone (quoted WHEN, no other command): what a forward jump
# of the wall clock past a calendar timer's next elapse makes systemd do,
# activate the timer's unit. driver.Machine.jump_clock keeps a simulated wall
# clock per machine (the real one until the first jump) and, for each of the
# node's own timers (calendar_timers: systemd.timers of the evaluation; the
# Debian tree's timers stand for nothing on NixOS) that is active, asks the
# container's systemd for the next elapse of each OnCalendar= it parsed
# (TimersCalendar=) after the simulated clock (`systemd-analyze calendar
# --base-time=`); each elapse up to WHEN (read with the container's `date -d`,
# its time zone) starts the timer's Triggers= unit as a start job, in elapse
# order, then the simulated clock is WHEN. Not reproduced: systemd's own
# reaction to a clock change, the clock the units see (the real one), the
# timers' LastTriggerUSec, RandomizedDelaySec= (fired at once), monotonic
# and user timers. A jump backwards fires nothing.
CLOCK_JUMP = re.compile(r"""^\s*date\s+(?:-s|--set)\s+(?:'([^']*)'|"([^"$`\\]*)")\s*$""")


def calendar_timers(node):
    """The timer units of the node's configuration (systemd.timers)."""
    return sorted(f"{name}.timer" for name in node.get("timers", {}))


# Commands a testScript may not run here, and why (checked by driver.py on
# every command before it runs, after CLOCK_JUMP).
NOT_RUNNABLE = [
    (
        re.compile(r"(^|[;&|(`]\s*|\$\(\s*)date\s+(-s|--set)\b"),
        "`date -s` sets CLOCK_REALTIME, which no Linux namespace virtualises (a time "
        "namespace offsets only the monotonic and boot clocks): a container shares the "
        "host's clock, so the jump would need CAP_SYS_TIME on the host and move the clock "
        "of the whole shared machine. The driver refuses it (only `date -s WHEN` as a "
        "whole command is mapped, CLOCK_JUMP).",
    ),
]

# environment.systemPackages: the file each package must provide in the tree.
PACKAGE_FILES = {
    "ciphersync": "/usr/local/bin/ciphersync",
    "gocryptfs": "/usr/bin/gocryptfs",
    "jq": "/usr/bin/jq",
    # NixOS's openssh package has ssh, sftp and sshd; Debian splits them
    # (openssh-client: ssh, sftp; openssh-server: sshd), both in the tree.
    "openssh": "/usr/bin/sftp",
    "rsync": "/usr/bin/rsync",
}

# Settings no stub declares (freeform), by option path: how each is mapped.
# A path not listed here fails the mapping, so a new node setting is noticed.
# services.openssh and systemd.tmpfiles.rules are declared by the stubs
# (stubs/nixos-server.nix, nixos-leaves.nix) and come as node["openssh"] and
# node["tmpfiles"].
FREEFORM = {
    "services.timesyncd.enable": "not reproduced: the tree has no timesyncd to disable",
    "virtualisation.memorySize": "not reproduced: a container shares the host's memory",
    "home-manager.useGlobalPkgs": "not reproduced: one package set here (the stubs)",
    "home-manager.useUserPackages": "home.packages on PATH (/usr/local/bin)",
    "home-manager.users.*": "home-manager activation stand-in",
}
HM_FREEFORM = {
    "home.stateVersion": "not reproduced: no effect on what the module renders",
}

USER_KEYS = {"name", "description", "extraGroups", "group", "home", "isNormalUser",
             "isSystemUser", "uid", "linger", "openssh", "createHome", "shell"}
ETC_KEYS = {"json", "text", "mode", "user", "group"}


class MappingError(Exception):
    pass


def _match(table, path):
    for pattern, how in table.items():
        if pattern == path or (pattern.endswith(".*") and path.startswith(pattern[:-1])):
            return how
    return None


def write(root, path, content, mode=0o644):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if os.path.lexists(full):
        os.unlink(full)
    with open(full, "w") as f:
        f.write(content)
    os.chmod(full, mode)


def map_node(name, node, root):
    """Write node `name` into the container root; return (notes of what was
    not reproduced, refusals): a refusal is a setting NixOS itself refuses
    (the node would not build), mapped anyway as the stubs render it so
    that the script still runs; the harness fails the test with it."""
    notes, refusals = [], []
    for path, value in sorted(node["freeform"].items()):
        how = _match(FREEFORM, path)
        if how is None:
            raise MappingError(f"{name}: {path} = {json.dumps(value)}: the mapping does not know this "
                               "setting; teach tests/systemd/nodemap.py what it means here")
        if how.startswith("not reproduced"):
            notes.append(f"{name}: {path} = {json.dumps(value)}: {how}")
    for module in node["fuse"]["kernelModules"]:
        notes.append(f"{name}: boot.kernelModules {module}: not reproduced: the host's kernel")

    tmpfiles = []
    write(root, "/etc/hostname", name + "\n")  # networking.hostName: the node's name
    # NixOS's activation script makes /var/empty (0555, root's, immutable)
    # on every system; Debian has none.
    os.makedirs(os.path.join(root, "var/empty"), exist_ok=True)
    os.chmod(os.path.join(root, "var/empty"), 0o555)
    _su_without_session(root)
    _services(name, node, root)
    _etc(name, node, root, tmpfiles)
    for path, text in node["knownHostsFiles"].items():
        write(root, path, text, 0o444)
    _users(name, node, root, tmpfiles, refusals)
    _sshd(name, node, root)
    _file_systems(name, node, root)
    tmpfiles += node["tmpfiles"]
    _fuse(node, root)
    _packages(name, node, root)
    for user, hm in sorted(node["homeManager"].items()):
        notes += _home_manager(name, user, hm, node, root)
    if tmpfiles:
        write(root, "/etc/tmpfiles.d/00-nixos.conf", "\n".join(tmpfiles) + "\n")
    return notes, refusals


def _file_systems(name, node, root):
    """fileSystems: the storage server's chroots (the store bound read-only),
    as units.py renders them for the nspawn suite: mount units, with /usr
    bound beside the store since the store's tools are Debian's here."""
    manifest = {"files": [], "mounts": []}
    try:
        units.chroot_stores(node.get("fileSystems"), root, manifest)
    except units.ConvertError as e:
        raise MappingError(f"{name}: {e}") from e


def _su_without_session(root):
    path = os.path.join(root, "etc/pam.d/su")
    with open(path) as f:
        text = f.read()
    if "@include common-session\n" not in text:
        raise MappingError("the tree's /etc/pam.d/su does not include common-session")
    write(root, "/etc/pam.d/su", text.replace("@include common-session\n", "@include common-session-noninteractive\n"))


def _services(name, node, root):
    services = {}
    for unit, spec in node["services"].items():
        spec = dict(spec)
        script = spec.pop("script", "")
        if script:
            # nixpkgs' makeJobScript: "#! ${runtimeShell} -e" and the text.
            path = f"/etc/ciphersync-test/scripts/{unit}-start"
            write(root, path, "#!/bin/bash -e\n" + script + "\n", 0o755)
            if (spec.get("serviceConfig") or {}).get("ExecStart"):
                raise MappingError(f"{name}: {unit} has both script and ExecStart")
            spec["serviceConfig"] = dict(spec.get("serviceConfig") or {}, ExecStart=path)
        services[unit] = spec
    ev = {"services": services, "timers": node["timers"], "paths": node["paths"]}
    units.convert(ev, root)


def _etc(name, node, root, tmpfiles):
    for path, entry in sorted(node["etc"].items()):
        unknown = set(entry) - ETC_KEYS
        if unknown:
            raise MappingError(f"{name}: environment.etc.{path}: unknown keys {sorted(unknown)}")
        if "json" in entry:
            content = json.dumps(entry["json"], indent=2) + "\n"
        else:
            content = entry["text"]
        mode = entry.get("mode", "symlink")
        write(root, f"/etc/{path}", content, 0o444 if mode == "symlink" else int(mode, 8))
        if mode != "symlink" and (entry.get("user") or entry.get("group")):
            tmpfiles.append(f"z /etc/{path} {mode} {entry.get('user') or 'root'} {entry.get('group') or '-'}")


def _drop_tree_accounts(root, users, groups):
    """Remove accounts of the Debian tree that the node declares itself
    (Debian's base-passwd has a system user `backup`, uid 34, shell nologin;
    NixOS has no such account), so that sysusers creates the node's."""
    for path, names in (("etc/passwd", users), ("etc/shadow", users), ("etc/group", groups), ("etc/gshadow", groups)):
        full = os.path.join(root, path)
        if not os.path.exists(full):
            continue
        with open(full) as f:
            kept = [line for line in f if line.split(":", 1)[0] not in names]
        st = os.stat(full)
        with open(full + ".nixos", "w") as f:
            f.writelines(kept)
        os.chmod(full + ".nixos", st.st_mode & 0o7777)
        os.chown(full + ".nixos", st.st_uid, st.st_gid)
        os.replace(full + ".nixos", full)


def _users(name, node, root, tmpfiles, refusals):
    # A user's own group of the same name goes too, unless the node declares it.
    _drop_tree_accounts(root, set(node["users"]), set(node["groups"]) | (set(node["users"]) - set(node["groups"])))
    lines = []
    for group, spec in sorted(node["groups"].items()):
        gid = spec.get("gid")
        lines.append(f"g {group} {gid if gid is not None else '-'}")
    taken = {spec.get("uid") for spec in node["users"].values()}
    next_uid = 1000
    for user, spec in sorted(node["users"].items()):
        unknown = set(spec) - USER_KEYS
        if unknown:
            raise MappingError(f"{name}: users.users.{user}: unknown keys {sorted(unknown)}")
        normal = spec.get("isNormalUser")
        group = spec.get("group") or ("users" if normal else None)
        if not group:
            raise MappingError(f"{name}: users.users.{user}: no group (NixOS requires one)")
        home = spec.get("home")
        if normal and home in (None, "", "/var/empty"):  # the stub's default is not NixOS's
            home = f"/home/{user}"
        uid = spec.get("uid")
        if uid is None and normal:
            while next_uid in taken:
                next_uid += 1
            uid = next_uid
            taken.add(uid)
        shell = _shell(name, user, spec, root, normal, refusals)
        if group not in node["groups"] and group != "users":
            lines.append(f"g {group} -")
        desc = spec.get("description") or "-"
        lines.append(f"u {user} {uid if uid is not None else '-'}:{group} {json.dumps(desc)} {home} {shell}")
        for extra in spec.get("extraGroups") or []:
            lines.append(f"m {user} {extra}")
        if normal or spec.get("createHome"):
            tmpfiles.append(f"d {home} 0700 {user} {group} -")
        if spec.get("linger"):
            write(root, f"/var/lib/systemd/linger/{user}", "")
        keys = ((spec.get("openssh") or {}).get("authorizedKeys") or {}).get("keys") or []
        if keys:
            write(root, f"/etc/ssh/authorized_keys.d/{user}", "\n".join(keys) + "\n", 0o444)
    if lines:
        write(root, "/usr/lib/sysusers.d/00-nixos.conf", "\n".join(lines) + "\n")


def _shell(name, user, spec, root, normal, refusals):
    """The user's login shell as NixOS computes it: its defaults (bash for a
    normal user, nologin for a system one), else nixpkgs' utils.toShellPath,
    which users-groups.nix (and the sysusers and userborn modules) apply to
    every user's shell: a shell package (a derivation with shellPath) is
    /run/current-system/sw<shellPath>; any other package, or a string that
    is a store path (lib.isStorePath: /nix/store/<name>), throws "<path> is
    not a shell package", so the system does not build (a refusal; a
    Nix-built script is still written at its store path by units.py, #!/bin/bash
    for the store's runtimeShell, tools mapped, so that the script can run);
    any other path is kept (a tool's store path inside a package mapped like
    a unit's)."""
    shell = spec.get("shell")
    if shell is None:
        return "/bin/bash" if normal else "/usr/sbin/nologin"
    where = f"{name}: users.users.{user}.shell"
    if isinstance(shell, dict):
        if shell.get("shellPath") is not None:
            return _shell_package(where, shell, root)
        if shell.get("text") is not None:
            manifest = {"files": [], "store_paths": {}, "shells": {}}
            try:
                units.user_shells({user: dict(spec, shell={"path": shell["path"], "text": shell["text"]})},
                                  root, manifest)
            except units.ConvertError as e:
                raise MappingError(f"{name}: {e}") from e
            if not units.STORE_RE.fullmatch(shell["path"]):
                # A file inside the script's store path (the storage
                # account's shell): a path NixOS keeps as it is, and the
                # script is there now.
                return shell["path"]
        shell = shell["path"]
    if units.STORE_RE.fullmatch(shell):
        refusals.append(f"{where}: {shell} is not a shell package: nixos/lib/utils.nix toShellPath throws for a "
                        "package or store path without shellPath (users-groups.nix: `shell = utils.toShellPath "
                        "u.shell`), so NixOS does not build this node")
        if not os.path.exists(os.path.join(root, shell.lstrip("/"))):
            raise MappingError(f"{where}: {shell}: no text to write it from")
        return shell
    return units.map_paths(shell)


def _shell_package(where, shell, root):
    """A shell package (a derivation with shellPath): NixOS installs it in
    the system path (users-groups.nix: environment.systemPackages =
    systemShells) and the user's shell is /run/current-system/sw<shellPath>.
    Here a Nix-built script's text ({path, shellPath, text}, what
    pkgs.writeShellScriptBin builds) is written at <path><shellPath>
    (#!/bin/bash for the store's runtimeShell, tools mapped, 0555) and the
    system path is /usr/local (/run is a tmpfs at boot): the shell is
    /usr/local<shellPath>, a link to it."""
    if shell.get("text") is None:
        raise MappingError(f"{where}: a shell package ({shell['path']}) whose content is not known here")
    target = shell["path"] + shell["shellPath"]
    write(root, target, "#!/bin/bash\n" + units.map_paths(shell["text"]), 0o555)
    units.symlink(root, "/usr/local" + shell["shellPath"], target)
    return "/usr/local" + shell["shellPath"]


def _sshd(name, node, root):
    ssh = node["openssh"]
    if not ssh["enable"]:
        # Debian enables its sshd; a node without services.openssh has none.
        for link in ("etc/systemd/system/sshd.service", "etc/systemd/system/multi-user.target.wants/ssh.service"):
            full = os.path.join(root, link)
            if os.path.lexists(full):
                os.unlink(full)
        return
    # The node's host keys are the only ones (NixOS generates none when
    # hostKeys is set): the tree's, made by Debian's postinst, go.
    if ssh["sftpFlags"]:
        raise MappingError(f"{name}: services.openssh.sftpFlags {ssh['sftpFlags']}: Debian's "
                           "`Subsystem sftp` line has no arguments")
    declared = {key["path"] for key in ssh["hostKeys"]}
    sshdir = os.path.join(root, "etc/ssh")
    for f in os.listdir(sshdir):
        if f.startswith("ssh_host_") and "/etc/ssh/" + f not in declared:
            os.unlink(os.path.join(sshdir, f))
    lines = []
    for key, value in sorted(ssh["settings"].items()):
        lines.append(f"{key} {'yes' if value is True else 'no' if value is False else value}")
    for key in ssh["hostKeys"]:
        lines.append(f"HostKey {key['path']}")
    # NixOS's default authorizedKeysFiles.
    lines.append("AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u")
    write(root, "/etc/ssh/sshd_config.d/00-nixos.conf", "\n".join(lines) + "\n")
    try:
        units.sshd_extra_config({"enable": True, "extraConfig": ssh["extraConfig"]}, root,
                                {"files": [], "store_paths": {}})
    except units.ConvertError as e:
        raise MappingError(f"{name}: services.openssh.{e}") from e


def _fuse(node, root):
    fuse = node["fuse"]["programs"]
    if fuse.get("enable"):
        conf = [f"mount_max = {fuse.get('mountMax', 1000)}"]
        if fuse.get("userAllowOther"):
            conf.append("user_allow_other")
        write(root, "/etc/fuse.conf", "\n".join(conf) + "\n")


def _packages(name, node, root):
    for pkg in node["systemPackages"]:
        if pkg not in PACKAGE_FILES:
            raise MappingError(f"{name}: environment.systemPackages {pkg}: not in PACKAGE_FILES")
        if pkg != "ciphersync" and not os.path.exists(os.path.join(root, PACKAGE_FILES[pkg].lstrip("/"))):
            raise MappingError(f"{name}: package {pkg}: {PACKAGE_FILES[pkg]} missing from the tree")


def needs_ciphersync(node):
    """Whether the node installs the package (the binary under test)."""
    return "ciphersync" in node["systemPackages"] or any(
        any(p.endswith("-ciphersync") for p in hm["packages"]) for hm in node["homeManager"].values())


def home_manager_unit(user, home):
    """home-manager's nixos/default.nix unit for the user (at the flake's
    pin), with the activation package replaced by the stand-in script."""
    return {
        "description": f"Home Manager environment for {user}",
        "wantedBy": ["multi-user.target"],
        "before": ["systemd-user-sessions.service"],
        "unitConfig": {"RequiresMountsFor": home},
        "serviceConfig": {
            "User": user,
            "Type": "oneshot",
            "RemainAfterExit": "yes",
            "TimeoutStartSec": "5m",
            "SyslogIdentifier": f"hm-activate-{user}",
            "ExecStart": f"/etc/ciphersync-test/home-manager/{user}/activate",
        },
    }


def _home_manager(name, user, hm, node, root):
    notes = []
    for path, value in sorted(hm["freeform"].items()):
        how = _match(HM_FREEFORM, path)
        if how is None:
            raise MappingError(f"{name}: home-manager.users.{user}.{path}: the mapping does not know this setting")
        notes.append(f"{name}: home-manager.users.{user}.{path} = {json.dumps(value)}: {how}")
    home = hm["homeDirectory"]
    files = f"/etc/ciphersync-test/home-manager/{user}/home-files"
    # xdg.configFile: relative to xdg.configHome (~/.config, the default).
    for path, entry in sorted(hm["configFile"].items()):
        content = json.dumps(entry["json"], indent=2) + "\n" if "json" in entry else entry["text"]
        write(root, f"{files}/.config/{path}", content, 0o444)
    for path, text in hm["knownHostsFiles"].items():
        write(root, path, text, 0o444)
    unitdir = f"{files}/.config/systemd/user"
    manifest = units.convert_hm({"services": hm["services"], "timers": hm["timers"]}, root, unitdir)
    # home-manager links [Install] WantedBy= into <target>.wants/.
    for kind, coll in (("service", "services"), ("timer", "timers")):
        for unit in manifest[coll]:
            for target in (hm[coll][unit].get("Install") or {}).get("WantedBy") or []:
                units.symlink(root, f"{unitdir}/{target}.wants/{unit}.{kind}", f"{home}/.config/systemd/user/{unit}.{kind}")
    activate = "\n".join([
        "#!/bin/bash -e",
        "# Stand-in for home-manager's activation: link the rendered files into the home.",
        f"cd {shlex.quote(files)}",
        "find . -mindepth 1 \\( -type f -o -type l \\) -printf '%P\\n' | while read -r f; do",
        f"  mkdir -p {shlex.quote(home)}/\"$(dirname \"$f\")\"",
        f"  if [ -L \"$f\" ]; then cp -P \"$f\" {shlex.quote(home)}/\"$f\"; "
        f"else ln -sfn {shlex.quote(files)}/\"$f\" {shlex.quote(home)}/\"$f\"; fi",
        "done",
        "# As home-manager's sd-switch: reload a user manager that already runs.",
        "if [ -S /run/user/$UID/systemd/private ]; then XDG_RUNTIME_DIR=/run/user/$UID systemctl --user daemon-reload; fi",
        "",
    ])
    write(root, f"/etc/ciphersync-test/home-manager/{user}/activate", activate, 0o755)
    units.convert({"services": {f"home-manager-{user}": home_manager_unit(user, home)}}, root)
    return notes
