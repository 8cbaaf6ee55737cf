#!/usr/bin/env python3
"""Turn the NixOS module's evaluated JSON into files for a Debian container.

Input: the committed evaluation of nix/module.nix (nix/eval/expected/nixos-*.json),
shape { "etc": {...}, "services": {...}, "timers": {...}, "users": {...},
"groups": {...} }, where each services/timers entry is the NixOS
`systemd.services.<name>` / `systemd.timers.<name>` attribute set; or of
nix/server-module.nix (nixos-server.json), which adds "paths" (systemd.paths),
"tmpfiles" (systemd.tmpfiles.rules), "sshd" ({enable, extraConfig} of
services.openssh), "packages" (environment.systemPackages), "fileSystems"
(the accounts' chroots: the store bound read-only) and users whose "shell"
is a Nix-built script ({path, text}). Any other top-level key is an
error, so a module change is noticed.

Output, under --root (the container's root directory):

  etc/systemd/system/<name>.service    [Unit] [Service] [Install]
  etc/systemd/system/<name>.timer      [Unit] [Timer] [Install]
  etc/systemd/system/<name>.path       [Unit] [Path] [Install]
  etc/systemd/system/<target>.wants/<unit>   what `wantedBy` means in NixOS
  etc/<path>                           every "etc" entry (objects as JSON),
                                       unchanged: store paths in it (the
                                       known_hosts file) are data, listed in
                                       the manifest's "store_files" for the
                                       harness to create at the same path
  usr/lib/sysusers.d/<name>.conf       users/groups (systemd-sysusers); <name>
                                       is --name, default ciphersync-test
  usr/lib/tmpfiles.d/<name>.conf       homes with createHome/isNormalUser, then
                                       the "tmpfiles" rules verbatim
  etc/fuse.conf                        from "fuse".programs (NixOS programs.fuse)
  nix/store/<hash>-<script>[/bin/<x>]  a user's shell script ({path, text}) at
                                       its own store path, "#!/bin/bash" + text
                                       (pkgs.writeShellScript[Bin]), 0555
  etc/systemd/system/<where>.mount     a "fileSystems" bind mount of /nix/store
                                       into a chroot (NixOS: an fstab line),
                                       plus one of /usr, where the store's
                                       tools are here, both read-only, and
                                       the merged-/usr links bin, lib, lib64,
                                       sbin in the chroot
  etc/ssh/authorized_keys.d/<user>     users.<user>.openssh.authorizedKeys.keys,
                                       0444, as NixOS's sshd module writes them
  etc/ssh/sshd_config                  "sshd".extraConfig appended (NixOS puts
                                       it last in its sshd_config)

The translation follows NixOS's own rendering (nixos/lib/systemd-lib.nix):
  description         -> Description=
  wants/after/before/requires/bindsTo/partOf/conflicts/requisite/upholds
                      -> Wants=/After=/... one line, space-joined
  onFailure/onSuccess -> OnFailure=/OnSuccess= space-joined
  documentation       -> Documentation= space-joined
  unitConfig          -> [Unit] verbatim
  serviceConfig       -> [Service] verbatim
  timerConfig         -> [Timer] verbatim
  environment         -> Environment="K=V" (one line each, JSON-quoted, % escaped)
  path                -> Environment="PATH=<p>/bin:<p>/sbin..." (all bin dirs
                         first, then all sbin dirs, as NixOS does) unless the
                         environment already has PATH
  wantedBy/requiredBy -> [Install] WantedBy=/RequiredBy= and the .wants/.requires
                         symlinks (NixOS links them directly; same effect as enable)
  list values in *Config -> the key repeated once per element
  true/false          -> true/false
  null                -> key left out

Nix store paths become the container's paths (MAPPING below):
  /nix/store/<hash>-ciphersync-<version>  -> /usr/local   (the binary that was
                                             just built is copied to
                                             /usr/local/bin/ciphersync)
  /nix/store/<hash>-<anything else>       -> /usr         (Debian's package of
                                             the same tool: gocryptfs, sshfs,
                                             rsync, openssh, fuse, coreutils...)
  /run/wrappers                           -> /usr         (Debian's fusermount3
                                             is setuid root like NixOS's wrapper)
  <hash>-openssh[-<version>]/libexec/sftp-server
                                          -> /usr/lib/openssh/sftp-server
                                             (DEBIAN_FILES: where Debian
                                             keeps it)
so "/nix/store/h-gocryptfs-2.4.0/bin" -> "/usr/bin" and
"/nix/store/h-ciphersync-0.1.0/bin/ciphersync" -> "/usr/local/bin/ciphersync".
Duplicate PATH entries that result from the mapping are dropped.

Keys that would need Nix-built content we do not have (script, preStart,
postStart, ...) are an error: the module must use serviceConfig.Exec*.

Usage:
  units.py convert EVAL.json --root DIR [--manifest FILE] [--name NAME]
  units.py convert-hm HM-EVAL.json --root DIR --unitdir DIR [--manifest FILE]
                       home-manager's user units (Unit/Service/Timer/Install
                       sections, key -> value) under --root/--unitdir
  units.py --self-test
"""

import argparse
import json
import os
import re
import sys
import tempfile

STORE_HASH = r"/nix/store/[0-9a-df-np-sv-z]{32}"
STORE_RE = re.compile(STORE_HASH + r"-([A-Za-z0-9+._?=-]+)")
CIPHERSYNC_PKG_RE = re.compile(r"^ciphersync(-[0-9][^/]*)?$")

MAPPING = [
    # (description, predicate on the store name, container prefix)
    ("ciphersync package (the binary just built)", lambda n: bool(CIPHERSYNC_PKG_RE.match(n)), "/usr/local"),
    ("any other store path (Debian package of the same tool)", lambda n: True, "/usr"),
]
OTHER_PREFIXES = {"/run/wrappers": "/usr"}
# Files Debian keeps elsewhere than <package>/<same path>: (store name
# pattern, path inside the package) -> the Debian path. Applied before the
# prefixes above.
DEBIAN_FILES = [
    (r"openssh(-[0-9][^/]*)?", "/libexec/sftp-server", "/usr/lib/openssh/sftp-server"),
]

# NixOS unit-level options rendered into [Unit], space-joined.
UNIT_LIST_KEYS = {
    "wants": "Wants", "after": "After", "before": "Before", "requires": "Requires",
    "bindsTo": "BindsTo", "partOf": "PartOf", "conflicts": "Conflicts",
    "requisite": "Requisite", "upholds": "Upholds", "onFailure": "OnFailure",
    "onSuccess": "OnSuccess", "documentation": "Documentation",
    "propagatesReloadTo": "PropagatesReloadTo", "reloadPropagatedFrom": "ReloadPropagatedFrom",
}
INSTALL_KEYS = {"wantedBy": ("WantedBy", "wants"), "requiredBy": ("RequiredBy", "requires"),
                "upheldBy": ("UpheldBy", "upholds")}
# NixOS options with no effect on the unit file contents we render here.
IGNORED_KEYS = {"enable", "name", "restartIfChanged", "stopIfChanged", "reloadIfChanged",
                "restartTriggers", "reloadTriggers", "aliases", "overrideStrategy",
                "enableDefaultPath", "enableStrictShellChecks", "startAt"}
# Options whose content is a Nix-built script: we cannot reproduce them.
UNSUPPORTED_KEYS = {"script", "preStart", "postStart", "preStop", "postStop", "reload",
                    "scriptArgs", "jobScripts", "confinement"}


class ConvertError(Exception):
    pass


def map_store_name(name):
    for _desc, pred, prefix in MAPPING:
        if pred(name):
            return prefix
    raise AssertionError("unreachable")


def map_paths(text, seen=None):
    """Replace every Nix store path prefix in `text` with the container prefix."""
    def repl(m):
        prefix = map_store_name(m.group(1))
        if seen is not None:
            seen[m.group(0)] = prefix
        return prefix
    for name_re, inner, debian in DEBIAN_FILES:
        def debian_file(m, debian=debian, inner=inner):
            if seen is not None:
                seen[m.group(0)] = debian
            return debian
        text = re.sub(f"{STORE_HASH}-{name_re}{re.escape(inner)}(?![A-Za-z0-9._-])", debian_file, text)
    out = STORE_RE.sub(repl, text)
    for src, dst in OTHER_PREFIXES.items():
        out = re.sub(re.escape(src) + r"(?=/|$|\s)", dst, out)
    return out


def value_str(v, key):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return v
    raise ConvertError(f"{key}: cannot render value {v!r}")


def render_section(name, attrs, seen, where):
    lines = [f"[{name}]"]
    for key, val in attrs.items():
        if val is None:
            continue
        vals = val if isinstance(val, list) else [val]
        for v in vals:
            lines.append(f"{key}={map_paths(value_str(v, f'{where}.{key}'), seen)}")
    return lines


def quote_env(k, v):
    s = json.dumps(f"{k}={v}")  # NixOS: Environment=${toJSON "${n}=${v}"}
    return s.replace("%", "%%")


def render_path(paths, seen):
    bins, sbins = [], []
    for p in paths:
        m = map_paths(p, seen)
        for lst, sub in ((bins, "/bin"), (sbins, "/sbin")):
            d = m.rstrip("/") + sub
            if d not in lst:
                lst.append(d)
    return ":".join(bins + sbins)


def render_unit(name, kind, spec, seen):
    """Return (text, install) for one NixOS systemd.services/timers entry."""
    where = f"{kind}s.{name}"
    for k in spec:
        if k in UNSUPPORTED_KEYS and spec[k] not in (None, "", [], {}):
            raise ConvertError(f"{where}.{k}: Nix-built scripts cannot be reproduced; use serviceConfig.Exec*")
    unit = {}
    if spec.get("description"):
        unit["Description"] = spec["description"]
    for k, sysd in UNIT_LIST_KEYS.items():
        vals = spec.get(k) or []
        if vals:
            unit[sysd] = " ".join(vals)
    for k, v in (spec.get("unitConfig") or {}).items():
        unit[k] = v
    text = render_section("Unit", unit, seen, where) if unit else []

    body_key = {"service": "serviceConfig", "timer": "timerConfig", "path": "pathConfig"}[kind]
    body = dict(spec.get(body_key) or {})
    if kind == "service":
        env = dict(spec.get("environment") or {})
        if "PATH" not in env and spec.get("path"):
            env["PATH"] = render_path(spec["path"], seen)
        if text:
            text.append("")
        text.extend(render_section("Service", {}, seen, where))
        for k, v in env.items():
            if v is None:
                continue
            text.append("Environment=" + quote_env(k, map_paths(value_str(v, f"{where}.environment.{k}"), seen)))
        text.extend(render_section("Service", body, seen, where)[1:])
    else:
        if text:
            text.append("")
        text.extend(render_section(kind.capitalize(), body, seen, where))

    install = {}
    lines = []
    for k, (sysd, _) in INSTALL_KEYS.items():
        vals = spec.get(k) or []
        if vals:
            lines.append(f"{sysd}={' '.join(vals)}")
            install[k] = list(vals)
    if lines:
        text += ["", "[Install]"] + lines

    known = set(UNIT_LIST_KEYS) | set(INSTALL_KEYS) | IGNORED_KEYS | UNSUPPORTED_KEYS | {
        "description", "unitConfig", "serviceConfig", "timerConfig", "pathConfig", "environment", "path"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConvertError(f"{where}: unknown NixOS option(s) {unknown}; teach units.py how NixOS renders them")
    return "\n".join(text) + "\n", install


def render_sysusers(users, groups):
    sysusers, tmpfiles = [], []
    for g, spec in sorted((groups or {}).items()):
        gid = (spec or {}).get("gid")
        sysusers.append(f"g {g} {gid if gid is not None else '-'}")
    for u, spec in sorted((users or {}).items()):
        spec = spec or {}
        if spec.get("enable", True) is False:
            continue
        uid = spec.get("uid")
        group = spec.get("group") or ("users" if spec.get("isNormalUser") else None)
        if not group:
            raise ConvertError(f"users.{u}: no group (NixOS requires one)")
        home = spec.get("home") or ("/home/" + u if spec.get("isNormalUser") else "/var/empty")
        desc = spec.get("description") or "-"
        shell = spec.get("shell")
        if isinstance(shell, dict):
            # A Nix-built script ({path, text[, shellPath]}): written by
            # convert() at its own store path; a shell package is found
            # through the system path (user_shell_path).
            shell = user_shell_path(shell)
        else:
            shell = map_paths(shell) if isinstance(shell, str) and shell else "-"
        if group not in (groups or {}) and group != "users":
            sysusers.append(f"g {group} -")
        idf = f"{uid if uid is not None else '-'}:{group}"
        sysusers.append(f"u {u} {idf} {json.dumps(desc)} {home} {shell}")
        for extra in spec.get("extraGroups") or []:
            sysusers.append(f"m {u} {extra}")
        if spec.get("createHome") or spec.get("isNormalUser"):
            mode = spec.get("homeMode") or "0700"
            tmpfiles.append(f"d {home} {mode} {u} {group} -")
    return sysusers, tmpfiles


def write(root, rel, content, mode=0o644):
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)
    return "/" + rel.lstrip("/")


def symlink(root, rel, target):
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def etc_content(name, val):
    """An "etc" entry: a JSON object/list (the job file), a string, or a NixOS
    environment.etc-like attrset with `text`."""
    if isinstance(val, dict) and set(val) <= {"text", "mode", "user", "group", "enable", "target"} and "text" in val:
        return val["text"], val.get("mode")
    if isinstance(val, str):
        return val, None
    return json.dumps(val, indent=2) + "\n", None


def unit_name_of_path(path):
    """`systemd-escape --path --suffix=mount PATH`."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out) + ".mount"


def bind_mount_unit(root, what, where, options, manifest):
    name = unit_name_of_path(where)
    text = (f"[Unit]\nDescription={where}\n\n[Mount]\nWhat={what}\nWhere={where}\nType=none\n"
            f"Options={','.join(options)}\n\n[Install]\nWantedBy=local-fs.target\n")
    manifest["files"].append(write(root, f"etc/systemd/system/{name}", text))
    symlink(root, f"etc/systemd/system/local-fs.target.wants/{name}", f"/etc/systemd/system/{name}")
    manifest["mounts"].append(where)


def chroot_stores(filesystems, root, manifest):
    """fileSystems: only the server module's bind mount of /nix/store into
    an account's chroot. The store's tools are Debian's here (/usr, and
    /usr/local for ciphersync, see MAPPING), so the chroot gets /usr bound
    read-only beside the store (where the accounts' shell scripts are) and
    the merged-/usr links, as Debian's root has them."""
    for where, spec in sorted((filesystems or {}).items()):
        options = spec.get("options") or []
        if spec.get("device") != "/nix/store" or "bind" not in options or not where.endswith("/nix/store"):
            raise ConvertError(f"fileSystems.{where}: only a bind mount of /nix/store into a chroot is known here")
        chroot = where[: -len("/nix/store")]
        bind_mount_unit(root, "/nix/store", where, options, manifest)
        bind_mount_unit(root, "/usr", chroot + "/usr", options, manifest)
        for link in ("bin", "lib", "lib64", "sbin"):
            symlink(root, f"{chroot}/{link}", f"usr/{link}")


def user_shell_path(shell):
    """The login shell a Nix-built script gives the user: a shell package
    (pkgs.writeShellScriptBin with shellPath) is /run/current-system/sw
    <shellPath> on NixOS (utils.toShellPath), here /usr/local<shellPath>
    (/run is a tmpfs at boot); a plain script, its store path."""
    if shell.get("shellPath"):
        return "/usr/local" + shell["shellPath"]
    return shell["path"]


def user_shells(users, root, manifest):
    """A shell the evaluation gives as {path, text[, shellPath]} is a
    Nix-built script (`#!<runtimeShell>` then the text, mode 0555 in the
    store): written at that same store path (plus shellPath for a shell
    package, linked from /usr/local<shellPath>), its text's store paths
    mapped like a unit's (they are the tools it runs)."""
    for u, spec in sorted((users or {}).items()):
        shell = (spec or {}).get("shell")
        if not isinstance(shell, dict):
            continue
        path, text = shell.get("path") or "", shell.get("text")
        if not STORE_RE.match(path) or ".." in path.split("/") or not isinstance(text, str):
            raise ConvertError(f"users.{u}.shell: want {{path: <store path>, text: <script>}}, got {shell!r}")
        script = path + (shell.get("shellPath") or "")
        manifest["files"].append(write(root, script, "#!/bin/bash\n" + map_paths(text, manifest["store_paths"]), 0o555))
        if shell.get("shellPath"):
            symlink(root, user_shell_path(shell), script)
        manifest["shells"][u] = user_shell_path(shell)


def authorized_keys(users, root, manifest):
    """users.<u>.openssh.authorizedKeys.keys -> /etc/ssh/authorized_keys.d/<u>,
    one key a line, 0444: what NixOS's sshd module writes."""
    for u, spec in sorted((users or {}).items()):
        keys = (((spec or {}).get("openssh") or {}).get("authorizedKeys") or {}).get("keys") or []
        if keys:
            manifest["files"].append(write(root, f"etc/ssh/authorized_keys.d/{u}", "\n".join(keys) + "\n", 0o444))
            manifest["authorized_keys"][u] = keys


SSHD_BEGIN = "# --- services.openssh.extraConfig (units.py) ---"


def sshd_extra_config(sshd, root, manifest):
    """services.openssh.extraConfig: NixOS writes it last in sshd_config
    (after its own settings, so a `Match` block in it cannot swallow them);
    here it is appended to Debian's /etc/ssh/sshd_config, whose `Include
    sshd_config.d/*.conf` comes first. Store paths are the tools sshd runs
    (ForceCommand), mapped."""
    extra = (sshd or {}).get("extraConfig") or ""
    if not (sshd or {}).get("enable") or not extra:
        return
    path = os.path.join(root, "etc/ssh/sshd_config")
    if not os.path.isfile(path):
        raise ConvertError(f"sshd.extraConfig: {path} missing (is openssh-server in the tree?)")
    with open(path) as f:
        if SSHD_BEGIN in f.read():
            raise ConvertError(f"sshd.extraConfig: {path} already has a module's extraConfig")
    with open(path, "a") as f:
        f.write(f"\n{SSHD_BEGIN}\n" + map_paths(extra, manifest["store_paths"]))
    manifest["files"].append("/etc/ssh/sshd_config")
    manifest["sshd_extra_config"] = True


def convert(ev, root, conf_name="ciphersync-test"):
    """Write what one evaluation renders under `root`; `conf_name` names its
    sysusers.d and tmpfiles.d files (one per evaluation)."""
    seen = {}
    manifest = {"services": [], "timers": [], "paths": [], "etc": [], "users": sorted((ev.get("users") or {})),
                "groups": sorted((ev.get("groups") or {})), "store_paths": seen, "store_files": [],
                "files": [], "shells": {}, "authorized_keys": {}, "tmpfiles": [], "mounts": []}
    unitdir = "etc/systemd/system"
    for kind, coll in (("service", "services"), ("timer", "timers"), ("path", "paths")):
        for name, spec in sorted((ev.get(coll) or {}).items()):
            if spec.get("enable", True) is False:
                continue
            text, install = render_unit(name, kind, spec, seen)
            fname = f"{name}.{kind}"
            manifest["files"].append(write(root, f"{unitdir}/{fname}", text))
            for k, targets in install.items():
                for t in targets:
                    symlink(root, f"{unitdir}/{t}.{INSTALL_KEYS[k][1]}/{fname}", f"/{unitdir}/{fname}")
            manifest[coll].append(name)
    for name, val in sorted((ev.get("etc") or {}).items()):
        content, mode = etc_content(name, val)
        # The job file is installed unchanged: its store paths are data files
        # (the known_hosts file the module writes to the store), not tools.
        # They are listed in the manifest so the harness can create them at
        # the same path inside the container.
        for m_ in STORE_RE.finditer(content):
            if m_.group(0) not in manifest["store_files"]:
                manifest["store_files"].append(m_.group(0))
        m = int(mode, 8) if isinstance(mode, str) and mode not in ("symlink", "direct") else 0o644
        manifest["files"].append(write(root, f"etc/{name}", content, m))
        manifest["etc"].append(name)
    fuse = (ev.get("fuse") or {}).get("programs") or {}
    if fuse.get("enable"):
        # NixOS programs.fuse writes /etc/fuse.conf (and the setuid wrapper,
        # which Debian's fuse3 already installs setuid root).
        conf = [f"mount_max = {fuse.get('mountMax', 1000)}"]
        if fuse.get("userAllowOther"):
            conf.append("user_allow_other")
        manifest["files"].append(write(root, "etc/fuse.conf", "\n".join(conf) + "\n"))
    # environment.systemPackages: the tools are Debian's (or the binary just
    # built); each must map, or a module change is noticed here.
    for pkg in ev.get("packages") or []:
        if not STORE_RE.fullmatch(pkg):
            raise ConvertError(f"packages: {pkg!r} is not a store path")
        map_paths(pkg, seen)
    extra = sorted(set(ev) - {"etc", "services", "timers", "paths", "users", "groups", "fuse",
                              "tmpfiles", "sshd", "packages", "fileSystems"})
    if extra:
        raise ConvertError(f"unknown top-level key(s) {extra}; teach units.py what they render")
    user_shells(ev.get("users"), root, manifest)
    chroot_stores(ev.get("fileSystems"), root, manifest)
    authorized_keys(ev.get("users"), root, manifest)
    sshd_extra_config(ev.get("sshd"), root, manifest)
    sysusers, tmpfiles = render_sysusers(ev.get("users"), ev.get("groups"))
    # systemd.tmpfiles.rules, verbatim (after the homes: a rule may name a
    # path below one).
    for rule in ev.get("tmpfiles") or []:
        if not isinstance(rule, str) or "\n" in rule:
            raise ConvertError(f"tmpfiles: not one rule: {rule!r}")
        tmpfiles.append(map_paths(rule, seen))
    manifest["tmpfiles"] = tmpfiles
    if sysusers:
        manifest["files"].append(write(root, f"usr/lib/sysusers.d/{conf_name}.conf", "\n".join(sysusers) + "\n"))
    if tmpfiles:
        manifest["files"].append(write(root, f"usr/lib/tmpfiles.d/{conf_name}.conf", "\n".join(tmpfiles) + "\n"))
    return manifest


def render_hm_unit(name, kind, spec, seen):
    """One home-manager systemd.user.{services,timers}.<name> entry: section ->
    key -> value, written as home-manager's toSystemdIni does (a list value
    repeats the key, booleans are true/false)."""
    lines = []
    for section, attrs in spec.items():
        if not isinstance(attrs, dict):
            raise ConvertError(f"user {kind}s.{name}.{section}: not a section")
        if lines:
            lines.append("")
        lines.extend(render_section(section, attrs, seen, f"user {kind}s.{name}"))
    return "\n".join(lines) + "\n"


def convert_hm(ev, root, unitdir):
    """Write the home-manager module's user units ({services, timers} of
    nix/eval/expected/hm-*.json) to <root>/<unitdir>."""
    seen = {}
    manifest = {"services": [], "timers": [], "files": [], "store_paths": seen, "onFailure": []}
    for kind, coll in (("service", "services"), ("timer", "timers")):
        for name, spec in sorted((ev.get(coll) or {}).items()):
            manifest["files"].append(write(root, f"{unitdir}/{name}.{kind}", render_hm_unit(name, kind, spec, seen)))
            manifest[coll].append(name)
            for u in (spec.get("Unit") or {}).get("OnFailure") or []:
                if u not in manifest["onFailure"]:
                    manifest["onFailure"].append(u)
    return manifest


def self_test():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "fixtures", "nixos-docs.sample.json")) as f:
        ev = json.load(f)
    fails, checks = [], []

    def check(cond, what):
        checks.append(what)
        print(("PASS " if cond else "FAIL ") + what)
        if not cond:
            fails.append(what)

    with tempfile.TemporaryDirectory() as root:
        ev2 = json.loads(json.dumps(ev))
        ev2["users"] = {"alice": {"isNormalUser": True, "group": "alice", "extraGroups": ["fuse"]}}
        ev2["groups"] = {"alice": {}}
        man = convert(ev2, root)
        sd = os.path.join(root, "etc/systemd/system")
        svc = open(os.path.join(sd, "ciphersync-docs-backup.service")).read()
        tim = open(os.path.join(sd, "ciphersync-docs-verify.timer")).read()
        lines = svc.splitlines()
        check("[Unit]" in lines and "[Service]" in lines, "service has [Unit] and [Service]")
        check("Description=ciphersync backup of docs" in lines, "description -> Description=")
        check("OnFailure=ciphersync-test-alert.service" in lines, "onFailure -> OnFailure=")
        check("Wants=network-online.target" in lines and not any(l.startswith("Requires=") for l in lines),
              "wants rendered, empty requires omitted")
        check("ExecStart=/usr/local/bin/ciphersync -c /etc/ciphersync/docs.json backup" in lines,
              "ciphersync store path -> /usr/local/bin/ciphersync")
        check('Environment="PATH=/usr/bin:/usr/sbin"' in lines, "path -> deduplicated PATH=/usr/bin:/usr/sbin")
        check('Environment="LOCALE_ARCHIVE=/usr/lib/locale/locale-archive"' in lines, "store paths in environment mapped")
        check("PrivateMounts=true" in lines and "ProtectSystem=strict" in lines, "booleans true, strings verbatim")
        check(lines.count("RestrictAddressFamilies=AF_UNIX") == 1 and "RestrictAddressFamilies=AF_INET6" in lines,
              "list values become repeated keys")
        check("Nice=10" in lines, "integers rendered")
        check("RequiresMountsFor=/srv/docs" in lines, "unitConfig -> [Unit]")
        check("[Install]" not in lines, "empty wantedBy -> no [Install]")
        tl = tim.splitlines()
        check("[Timer]" in tl and "OnCalendar=weekly" in tl and "OnCalendar=Sun 04:00" in tl
              and "Persistent=true" in tl and "WantedBy=timers.target" in tl, "timer rendered with [Install]")
        check(os.path.islink(os.path.join(sd, "timers.target.wants/ciphersync-docs-backup.timer")),
              "wantedBy -> .wants symlink")
        job = json.load(open(os.path.join(root, "etc/ciphersync/docs.json")))
        check(job["target"]["path"] == "/srv/backup/docs", "etc entry written as JSON")
        check(open(os.path.join(root, "etc/ciphersync/motd")).read() == "hello\n", "string etc entry written verbatim")
        check(job["target"]["known_hosts_file"] in man["store_files"],
              "store path in the job file kept and listed in store_files")
        su = open(os.path.join(root, "usr/lib/sysusers.d/ciphersync-test.conf")).read().splitlines()
        check("g alice -" in su and 'u alice -:alice "-" /home/alice -' in su and "m alice fuse" in su,
              "users/groups -> sysusers.d")
        tf = open(os.path.join(root, "usr/lib/tmpfiles.d/ciphersync-test.conf")).read().splitlines()
        check("d /home/alice 0700 alice alice -" in tf, "normal user home -> tmpfiles.d")
        check(any(k.endswith("ciphersync-0.1.0") for k in man["store_paths"]), "manifest lists mapped store paths")
        bad = json.loads(json.dumps(ev))
        bad["services"]["ciphersync-docs-backup"]["script"] = "echo hi"
        try:
            convert(bad, root)
            check(False, "script= is rejected")
        except ConvertError:
            check(True, "script= is rejected")
        bad = json.loads(json.dumps(ev))
        bad["services"]["ciphersync-docs-backup"]["somethingNew"] = 1
        try:
            convert(bad, root)
            check(False, "unknown NixOS option is rejected")
        except ConvertError:
            check(True, "unknown NixOS option is rejected")
    server_self_test(here, check)
    print(f"{len(checks) - len(fails)} passed, {len(fails)} failed")
    return 1 if fails else 0


def server_self_test(here, check):
    """The server module's shape (fixtures/nixos-server.sample.json)."""
    with open(os.path.join(here, "fixtures", "nixos-server.sample.json")) as f:
        ev = json.load(f)
    debian_sshd = "Include /etc/ssh/sshd_config.d/*.conf\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
    with tempfile.TemporaryDirectory() as root:
        write(root, "etc/ssh/sshd_config", debian_sshd)
        man = convert(ev, root, "ciphersync-server")
        sd = os.path.join(root, "etc/systemd/system")
        pl = open(os.path.join(sd, "ciphersync-server-seal-acct.path")).read().splitlines()
        check(pl == ["[Path]", "PathChanged=/srv/accounts/acct/data/records", "Unit=ciphersync-server-seal-acct.service",
                     "", "[Install]", "WantedBy=paths.target"], "pathConfig -> [Path], wantedBy -> [Install]")
        check(os.path.islink(os.path.join(sd, "paths.target.wants/ciphersync-server-seal-acct.path")),
              "path unit linked into paths.target.wants")
        shell = "/nix/store/3a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-ciphersync-serve-acct/bin/ciphersync-serve-acct"
        sp = os.path.join(root, shell.lstrip("/"))
        check(open(sp).read() == "#!/bin/bash\nexec /usr/local/bin/ciphersync serve --root /data "
              "--sftp-server /usr/lib/openssh/sftp-server --rsync /usr/bin/rsync\n"
              and os.stat(sp).st_mode & 0o7777 == 0o555,
              "account shell script written at its store path, 0555, tools mapped (sftp-server: Debian's path)")
        su = open(os.path.join(root, "usr/lib/sysusers.d/ciphersync-server.conf")).read().splitlines()
        check(f'u acct -:acct "ciphersync storage account acct" /var/empty {shell}' in su,
              "sysusers: the account's shell is the script's store path (the chroot sees the store)")
        store_mount = "srv-accounts-acct-nix-store.mount"
        mu = open(os.path.join(sd, store_mount)).read().splitlines()
        check("What=/nix/store" in mu and "Where=/srv/accounts/acct/nix/store" in mu and "Options=bind,ro" in mu
              and os.path.islink(os.path.join(sd, "local-fs.target.wants", store_mount)),
              "fileSystems bind of /nix/store -> a read-only bind mount unit wanted by local-fs.target")
        uu = open(os.path.join(sd, "srv-accounts-acct-usr.mount")).read().splitlines()
        check("What=/usr" in uu and "Where=/srv/accounts/acct/usr" in uu and "Options=bind,ro" in uu
              and os.readlink(os.path.join(root, "srv/accounts/acct/lib")) == "usr/lib",
              "the chroot also gets /usr read-only (where the store's tools are here) and the merged-/usr links")
        cu = open(os.path.join(sd, "ciphersync-server-chroots.service")).read().splitlines()
        check('ExecStart="/usr/local/bin/ciphersync" "serve" "--chroot" "/srv/accounts/acct" "--account" "acct"' in cu
              and "Before=sshd.service" in cu, "the chroots service: serve --chroot before sshd")
        ak = os.path.join(root, "etc/ssh/authorized_keys.d/acct")
        check(open(ak).read().endswith(" acct\n") and os.stat(ak).st_mode & 0o777 == 0o444,
              "openssh.authorizedKeys -> /etc/ssh/authorized_keys.d/<user>, 0444")
        conf = open(os.path.join(root, "etc/ssh/sshd_config")).read()
        check(conf.startswith(debian_sshd) and conf.rstrip().endswith("Match all")
              and "  ChrootDirectory /srv/accounts/acct\n" in conf
              and "  ForceCommand /usr/local/bin/ciphersync serve --root /data --sftp-server "
                  "/usr/lib/openssh/sftp-server --rsync /usr/bin/rsync\n" in conf,
              "sshd extraConfig appended last to sshd_config, ForceCommand mapped")
        tf = open(os.path.join(root, "usr/lib/tmpfiles.d/ciphersync-server.conf")).read().splitlines()
        check(tf == ev["tmpfiles"], "systemd.tmpfiles.rules -> tmpfiles.d/<name>.conf verbatim")
        check(man["paths"] == ["ciphersync-server-seal-acct"] and man["shells"] == {"acct": shell}
              and man["mounts"] == ["/srv/accounts/acct/nix/store", "/srv/accounts/acct/usr"],
              "manifest lists path units, shells and mounts")
        try:
            convert(ev, root, "ciphersync-server")
            check(False, "a second extraConfig into the same sshd_config is refused")
        except ConvertError:
            check(True, "a second extraConfig into the same sshd_config is refused")
    for bad, what in (({"sshd": ev["sshd"]}, "sshd extraConfig without an sshd_config is refused"),
                      ({"quota": {}}, "unknown top-level key is refused"),
                      ({"fileSystems": {"/srv/x": {"device": "/dev/sda1", "options": ["defaults"]}}},
                       "a file system other than the chroots' store is refused"),
                      ({"users": {"x": {"group": "x", "shell": {"path": "/bin/sh", "text": "exec true"}}}},
                       "a shell script outside the store is refused")):
        with tempfile.TemporaryDirectory() as root:
            try:
                convert(bad, root)
                check(False, what)
            except ConvertError:
                check(True, what)


def main(argv):
    if argv[1:2] == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="write unit files etc. for one evaluated module JSON")
    c.add_argument("eval_json")
    c.add_argument("--root", required=True, help="container root directory")
    c.add_argument("--manifest", help="write a JSON manifest of what was written here")
    c.add_argument("--name", default="ciphersync-test",
                   help="name of the sysusers.d/tmpfiles.d files (one per evaluation; default %(default)s)")
    h = sub.add_parser("convert-hm", help="write the user units of one evaluated home-manager JSON")
    h.add_argument("eval_json")
    h.add_argument("--root", required=True, help="container root directory")
    h.add_argument("--unitdir", required=True, help="directory under the root for the user units")
    h.add_argument("--manifest", help="write a JSON manifest of what was written here")
    a = ap.parse_args(argv[1:])
    with open(a.eval_json) as f:
        ev = json.load(f)
    try:
        man = convert_hm(ev, a.root, a.unitdir) if a.cmd == "convert-hm" else convert(ev, a.root, a.name)
    except ConvertError as e:
        print(f"units.py: {e}", file=sys.stderr)
        return 2
    if a.manifest:
        with open(a.manifest, "w") as f:
            json.dump(man, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
