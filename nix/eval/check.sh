#!/usr/bin/env bash
# What can be proved about the Nix side without NixOS or nixpkgs:
#   1. every .nix file of the repository parses (nix-instantiate --parse);
#   2. with NIXPKGS_LIB set, the job submodule, the NixOS module and the
#      home-manager module evaluate with nixpkgs' lib and the stubs in
#      nix/eval/stubs, and what they render equals nix/eval/expected/*;
#      contradictory options are refused (expected/assertions.json); the
#      option reference docs/options.md is what the declarations render.
#
# NIXPKGS_LIB: a checkout of nix-community/nixpkgs.lib, i.e. the directory
# that contains lib/ (NIXPKGS_LIB/lib/default.nix must exist). A nixpkgs
# checkout works too. UPDATE_EXPECTED=1 rewrites the expected files and
# docs/options.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
expected=$here/expected

command -v nix-instantiate >/dev/null || {
    echo "nix/eval/check.sh: nix-instantiate not found (apt-get install nix-bin)" >&2
    exit 1
}

pretty() {
    if command -v jq >/dev/null; then
        jq -S .
    else
        python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=2, sort_keys=True))'
    fi
}

raw_string() {
    if command -v jq >/dev/null; then
        jq -j .
    else
        python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))'
    fi
}

# ---- 1. parse ---------------------------------------------------------------
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort)
else
    mapfile -t files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sed 's|^\./||' | sort)
fi
parse_failed=0
for f in "${files[@]}"; do
    [ -e "$f" ] || continue
    if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
        echo "FAIL parse $f" >&2
        echo "$out" >&2
        parse_failed=1
    fi
done
if [ "$parse_failed" -ne 0 ]; then
    exit 1
fi
echo "ok parse: ${#files[@]} .nix files"

# ---- 1b. formatting: nix/eval/format.sh (not part of the suite: the
# formatter cannot be installed on the project's machines).

# ---- 2. module evaluation ---------------------------------------------------
if [ -z "${NIXPKGS_LIB:-}" ]; then
    echo "SKIP docs/options.md check: the option reference is rendered by the module evaluation, which needs NIXPKGS_LIB"
    echo "SKIP nix module evaluation: set NIXPKGS_LIB=... (see README)"
    echo "SKIP NixOS evaluation with nixpkgs' modules: needs NIXPKGS_LIB and NIXPKGS=<nixpkgs checkout> (see nix/eval/README.md)"
    exit 0
fi
if [ ! -f "$NIXPKGS_LIB/lib/default.nix" ]; then
    echo "nix/eval/check.sh: NIXPKGS_LIB=$NIXPKGS_LIB has no lib/default.nix (it must name the directory that contains lib/)" >&2
    exit 1
fi
libdir=$(cd "$NIXPKGS_LIB/lib" && pwd)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

evaluate() { # attribute of nix/eval/eval.nix [more nix-instantiate args] -> JSON on stdout
    nix-instantiate --eval --strict --json "$here/eval.nix" \
        --arg nixpkgsLib "$libdir" -A "$1" "${@:2}"
}

failed=0
# The regressions an infinite recursion breaks must be able to fail: with
# the defect of issue 15 put back (mutants/users-from-jobs.nix, `--arg
# mutant true`) each must stop with "infinite recursion".
mutant_check() { # label prefix, evaluate function
    local prefix=$1 fn=$2 list name out
    if ! list=$(evaluate recursion-regressions 2>"$tmp/mutant.err"); then
        echo "FAIL ${prefix}mutant: $(cat "$tmp/mutant.err")" >&2
        failed=1
        return
    fi
    for name in $(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))' <<<"$list"); do
        if out=$("$fn" "regressions.$name" --arg mutant true 2>"$tmp/mutant.err"); then
            echo "FAIL ${prefix}mutant $name: evaluates ($out) with mutants/users-from-jobs.nix; the case cannot catch the recursion" >&2
            failed=1
        elif grep -q "infinite recursion" "$tmp/mutant.err"; then
            echo "ok ${prefix}mutant $name: the defect put back recurses"
        else
            echo "FAIL ${prefix}mutant $name: failed otherwise than by recursion: $(grep -m1 -E '^error' "$tmp/mutant.err")" >&2
            failed=1
        fi
    done
}
compare() { # name, produced file, expected file
    if [ "${UPDATE_EXPECTED:-}" = 1 ]; then
        cp "$2" "$3"
        echo "updated ${3#"$root"/}"
    elif [ ! -f "$3" ]; then
        echo "FAIL $1: ${3#"$root"/} is missing (run with UPDATE_EXPECTED=1)" >&2
        failed=1
    elif diff -u "$3" "$2" >"$tmp/${1//\//_}.diff"; then
        echo "ok $1"
    else
        echo "FAIL $1: differs from ${3#"$root"/}:" >&2
        cat "$tmp/${1//\//_}.diff" >&2
        failed=1
    fi
}

mkdir -p "$expected"
for name in nixos-docs nixos-photos nixos-snapshots hm-music assertions nixos-server server-assertions; do
    if ! evaluate "$name" >"$tmp/$name.raw" 2>"$tmp/$name.err"; then
        echo "FAIL $name: evaluation failed:" >&2
        cat "$tmp/$name.err" >&2
        failed=1
        continue
    fi
    pretty <"$tmp/$name.raw" >"$tmp/$name.json"
    compare "$name" "$tmp/$name.json" "$expected/$name.json"
done

# Every contradictory or mistaken configuration must be refused, the three
# valid ones accepted.
if [ -f "$tmp/assertions.json" ]; then
    accepted=$(python3 -c 'import json,sys; print(" ".join(sorted(k for k, v in json.load(open(sys.argv[1])).items() if v == "ok")) + " ")' "$tmp/assertions.json" 2>/dev/null ||
        jq -r '[to_entries[] | select(.value == "ok") | .key] | sort | join(" ") + " "' "$tmp/assertions.json")
    if [ "$accepted" != "valid-docs valid-photos valid-photos-btrfs " ]; then
        echo "FAIL assertions: accepted configurations are [$accepted], expected [valid-docs valid-photos valid-photos-btrfs ]" >&2
        failed=1
    else
        echo "ok assertions: every mistaken configuration is refused"
    fi
fi

# The server module: every mistaken account must be refused, the sample
# accepted.
if [ -f "$tmp/server-assertions.json" ]; then
    accepted=$(python3 -c 'import json,sys; print(" ".join(sorted(k for k, v in json.load(open(sys.argv[1])).items() if v == "ok")))' "$tmp/server-assertions.json")
    if [ "$accepted" != "valid-server" ]; then
        echo "FAIL server-assertions: accepted configurations are [$accepted], expected [valid-server]" >&2
        failed=1
    else
        echo "ok server-assertions: every mistaken server configuration is refused"
    fi
fi

# nix/package.nix refuses a gocryptfs older than 2.5.0 (issue 802) and
# patches the fix of issue 686 into 2.5.0 to 2.6.1, marking the version it
# prints with the suffix src/about.rs reads as "has the fix"
# (GOCRYPTFS_FIX_686_MARKER there); each way of losing the fix, put back by
# package-gocryptfs.nix --argstr mutant, must leave 2.6.1 "unpatched".
marker=$(sed -n 's/^pub const GOCRYPTFS_FIX_686_MARKER: &str = "\([^"]*\)";$/\1/p' "$root/src/about.rs")
package_eval() { # [more nix-instantiate args] -> JSON on stdout
    nix-instantiate --eval --strict --json "$here/package-gocryptfs.nix" --arg nixpkgsLib "$libdir" \
        --argstr marker "$marker" "$@"
}
if [ -z "$marker" ]; then
    echo "FAIL package: src/about.rs has no 'pub const GOCRYPTFS_FIX_686_MARKER: &str = \"...\";'" >&2
    failed=1
elif out=$(package_eval 2>"$tmp/package.err"); then
    if [ "$out" = '{"2.3.0":"refused","2.4.0":"refused","2.5.0":"patched","2.6.1":"patched","2.7.0":"unpatched"}' ]; then
        echo "ok package: a gocryptfs older than 2.5.0 is refused; 2.5.0 to 2.6.1 get the fix of issue 686 (both substitutions) and print their version with $marker; 2.7.0 is taken as it is"
    else
        echo "FAIL package: gocryptfs versions refused, patched and unpatched: $out" >&2
        failed=1
    fi
    for mutant in no-override one-substitution no-marker; do
        if ! out=$(package_eval --argstr mutant "$mutant" 2>"$tmp/package.err"); then
            echo "FAIL package mutant $mutant: $(grep -m1 -E '^error' "$tmp/package.err" || tail -1 "$tmp/package.err")" >&2
            failed=1
        elif [ "$out" = '{"2.3.0":"refused","2.4.0":"refused","2.5.0":"unpatched","2.6.1":"unpatched","2.7.0":"unpatched"}' ]; then
            echo "ok package mutant $mutant: the gocryptfs shipped reads unpatched"
        else
            echo "FAIL package mutant $mutant: the check cannot tell the fix is lost: $out" >&2
            failed=1
        fi
    done
else
    echo "FAIL package: $(grep -m1 -E '^error' "$tmp/package.err" || tail -1 "$tmp/package.err")" >&2
    failed=1
fi

# Regressions (issue 15), one evaluation each: an infinite recursion aborts
# nix-instantiate, so it must fail its own case only.
if names=$(evaluate regression-names 2>"$tmp/regression-names.err"); then
    for name in $(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))' <<<"$names"); do
        if out=$(evaluate "regressions.$name" 2>"$tmp/regression.err"); then
            if [ "$out" = '"ok"' ]; then
                echo "ok regression $name"
            else
                echo "FAIL regression $name: $out" >&2
                failed=1
            fi
        else
            echo "FAIL regression $name: evaluation failed: $(grep -m1 -E '^error' "$tmp/regression.err" || tail -1 "$tmp/regression.err")" >&2
            failed=1
        fi
    done
else
    echo "FAIL regressions: $(cat "$tmp/regression-names.err")" >&2
    failed=1
fi
mutant_check "" evaluate

# The VM test definitions: nodes evaluate with the stubs, the ciphersync
# jobs they declare pass types and assertions, each testScript compiles.
if nix-instantiate --eval --strict --json "$here/vm-tests.nix" --arg nixpkgsLib "$libdir" \
    >"$tmp/vm-tests.raw" 2>"$tmp/vm-tests.err"; then
    if python3 - "$tmp/vm-tests.raw" "$tmp/vm-tests.json" <<'PY'; then
import json, sys
data = json.load(open(sys.argv[1]))
tests = data["tests"]
for name, test in sorted(tests.items()):
    compile(test["testScript"], f"nix/tests/{name}.nix:testScript", "exec")
summary = {name: {"name": t["name"], "nodes": t["nodes"]} for name, t in tests.items()}
open(sys.argv[2], "w").write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
open(sys.argv[2] + ".helpers.py", "w").write(data["pythonHelpers"])
PY
        echo "ok vm-tests: test scripts compile"
        # The leak check of the VM tests must see a FUSE mount that lives
        # only in a unit's private mount namespace (PrivateMounts=), not
        # only the test shell's /proc/mounts.
        if out=$(python3 "$here/leak_check_test.py" "$tmp/vm-tests.json.helpers.py" 2>&1); then
            echo "ok vm-tests: no_fuse_mounts sees mounts in every mount namespace"
        else
            echo "FAIL vm-tests: no_fuse_mounts: $out" >&2
            failed=1
        fi
        if out=$(python3 "$here/hm_script_test.py" "$tmp/vm-tests.raw" "$tmp/hm-music.json" 2>&1); then
            echo "ok vm-tests: the home-manager test runs ciphersync as alice with XDG_RUNTIME_DIR"
        else
            echo "FAIL vm-tests: home-manager testScript: $out" >&2
            failed=1
        fi
        compare vm-tests "$tmp/vm-tests.json" "$expected/vm-tests.json"
    else
        echo "FAIL vm-tests: a testScript does not compile" >&2
        failed=1
    fi
else
    echo "FAIL vm-tests: evaluation failed:" >&2
    cat "$tmp/vm-tests.err" >&2
    failed=1
fi

# The flake's outputs as `nix flake show` lists them: the README shows this
# tree (between "<!-- flake-outputs -->" and the end of the next code block).
if nix-instantiate --eval --strict --json "$here/flake-shape.nix" --arg nixpkgsLib "$libdir" \
    >"$tmp/flake-shape.raw" 2>"$tmp/flake-shape.err"; then
    raw_string <"$tmp/flake-shape.raw" >"$tmp/flake-shape.txt"
    if out=$(python3 - "$root/README.md" "$tmp/flake-shape.txt" "${UPDATE_EXPECTED:-}" <<'PY'
import re, sys
readme, shape, update = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3] == "1"
m = re.search(r"<!-- flake-outputs -->\n```text\n(.*?)```", readme, re.S)
if not m:
    sys.exit("README.md has no '<!-- flake-outputs -->' block")
if m.group(1) != shape:
    if update:
        open(sys.argv[1], "w").write(readme[: m.start(1)] + shape + readme[m.end(1) :])
        print("updated README.md flake outputs")
        sys.exit(0)
    sys.exit("README.md's flake outputs differ from the flake:\n" + shape)
PY
    ); then
        echo "ok flake outputs: README.md shows what the flake exports${out:+ ($out)}"
    else
        echo "FAIL flake outputs: $out" >&2
        failed=1
    fi
else
    echo "FAIL flake outputs: evaluation failed:" >&2
    cat "$tmp/flake-shape.err" >&2
    failed=1
fi

# The home-manager module under home-manager's own modules (not the stub):
# HOME_MANAGER names a home-manager checkout (the flake's pin), NIXPKGS a
# nixpkgs checkout (home-manager imports nixos/modules/misc/{assertions,
# meta}.nix and lib/ from it). What it renders must equal the stub's
# rendering (expected/hm-music.json, up to home-manager's list form).
if [ -z "${HOME_MANAGER:-}" ] || [ -z "${NIXPKGS:-}" ]; then
    echo "SKIP home-manager evaluation: set HOME_MANAGER=<home-manager checkout> and NIXPKGS=<nixpkgs checkout> (see nix/eval/README.md)"
elif [ ! -f "$HOME_MANAGER/modules/modules.nix" ]; then
    echo "FAIL home-manager evaluation: HOME_MANAGER=$HOME_MANAGER has no modules/modules.nix" >&2
    failed=1
elif hm_missing=$(for f in nixos/modules/misc/assertions.nix nixos/modules/misc/meta.nix lib/default.nix; do
    [ -f "$NIXPKGS/$f" ] || printf ' %s' "$f"
done) && [ -n "$hm_missing" ]; then
    # home-manager imports these from pkgs.path (lib/: services-modular
    # reads lib/services/lib.nix there).
    echo "FAIL home-manager evaluation: NIXPKGS=$NIXPKGS lacks$hm_missing" >&2
    failed=1
elif nix-instantiate --eval --strict --json "$here/real-hm.nix" --arg nixpkgsLib "$libdir" \
    --arg homeManager "$(cd "$HOME_MANAGER" && pwd)" --arg nixpkgs "$(cd "$NIXPKGS" && pwd)" \
    >"$tmp/real-hm.json" 2>"$tmp/real-hm.err"; then
    if out=$(python3 "$here/compare_real_hm.py" "$tmp/real-hm.json" "$expected/hm-music.json" "$expected/assertions.json" 2>&1); then
        hm_rev=$(git -C "$HOME_MANAGER" rev-parse --short HEAD 2>/dev/null || echo "rev unknown")
        echo "ok home-manager evaluation: home-manager's own modules ($hm_rev) render what the stub does; its cases agree"
    else
        echo "FAIL home-manager evaluation: $out" >&2
        failed=1
    fi
else
    echo "FAIL home-manager evaluation: evaluation failed:" >&2
    grep -v "^warning: the group" "$tmp/real-hm.err" >&2
    failed=1
fi

# The NixOS module under nixpkgs' own declarations (not the stub): NIXPKGS
# names a nixpkgs checkout (or a partial one holding the files below). The
# unit types (systemd-unit-options.nix, systemd-lib.nix, systemd-types.nix,
# utils.nix), programs/fuse.nix and assertions.nix come from it, with the
# unknown-option check on; what the module renders must equal
# expected/nixos-*.json (the keys nixpkgs derives, e.g. [Unit] Description=
# and PATH, checked and taken out: see realService in eval.nix), the
# mistaken configurations must get the same outcomes and the regressions
# must hold. Each unit is also rendered as the text nixpkgs writes.
# users.users/users.groups are nixpkgs' users-groups.nix (its leaves in
# stubs/users-groups-leaves.nix); its own unit, users and groups are taken
# out of the comparison (nixpkgsOwn in eval.nix).
real_files=(nixos/lib/utils.nix nixos/lib/systemd-lib.nix nixos/lib/systemd-unit-options.nix
    nixos/lib/systemd-types.nix nixos/modules/programs/fuse.nix
    nixos/modules/misc/assertions.nix nixos/modules/misc/meta.nix
    nixos/modules/config/users-groups.nix)
if [ -z "${NIXPKGS:-}" ]; then
    echo "SKIP NixOS evaluation with nixpkgs' modules: set NIXPKGS=<nixpkgs checkout> (see nix/eval/README.md)"
else
    missing=()
    for f in "${real_files[@]}"; do
        [ -f "$NIXPKGS/$f" ] || missing+=("$f")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        echo "FAIL NixOS evaluation with nixpkgs' modules: NIXPKGS=$NIXPKGS lacks ${missing[*]}" >&2
        failed=1
    else
        nixpkgs_dir=$(cd "$NIXPKGS" && pwd)
        evaluate_real() {
            nix-instantiate --eval --strict --json "$here/eval.nix" \
                --arg nixpkgsLib "$libdir" --arg nixpkgs "$nixpkgs_dir" -A "$1" "${@:2}"
        }
        for name in nixos-docs nixos-photos assertions; do
            if ! evaluate_real "$name" >"$tmp/real-$name.raw" 2>"$tmp/real-$name.err"; then
                echo "FAIL real/$name: evaluation failed:" >&2
                grep -v "^warning: the group" "$tmp/real-$name.err" >&2
                failed=1
                continue
            fi
            pretty <"$tmp/real-$name.raw" >"$tmp/real-$name.json"
            if diff -u "$expected/$name.json" "$tmp/real-$name.json" >"$tmp/real-$name.diff"; then
                echo "ok real/$name: nixpkgs' declarations render ${expected#"$root"/}/$name.json"
            else
                echo "FAIL real/$name: nixpkgs' declarations render something else than ${expected#"$root"/}/$name.json:" >&2
                cat "$tmp/real-$name.diff" >&2
                failed=1
            fi
        done
        for name in $(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))' <<<"${names:-[]}"); do
            if out=$(evaluate_real "regressions.$name" 2>"$tmp/real-regression.err") && [ "$out" = '"ok"' ]; then
                echo "ok real/regression $name"
            else
                echo "FAIL real/regression $name: ${out:-$(grep -m1 -E '^error' "$tmp/real-regression.err")}" >&2
                failed=1
            fi
        done
        mutant_check real/ evaluate_real
        # Every setting reaches the unit file nixpkgs writes, one
        # "Key=value" line per list element.
        out=""
        if evaluate_real real-units >"$tmp/real-units.json" 2>"$tmp/real-units.err" &&
            out=$(python3 "$here/check_real_units.py" "$tmp/real-units.json" 2>&1); then
            echo "ok real/unit files: $out units carry every setting as nixpkgs writes them"
        else
            echo "FAIL real/unit files: ${out:-$(grep -m1 -E '^error' "$tmp/real-units.err")}" >&2
            failed=1
        fi
        # Which nixpkgs was read: the proof is for the flake's pin only when
        # NIXPKGS is a checkout of it.
        pin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"]["nixpkgs"]["locked"]["rev"])' "$root/flake.lock" 2>/dev/null || echo unknown)
        rev=$(git -C "$nixpkgs_dir" rev-parse HEAD 2>/dev/null || echo "not a git checkout")
        if [ "$rev" = "$pin" ]; then
            echo "ok real/pin: NIXPKGS is the flake's pin ($pin)"
        else
            echo "NOTE real/pin: NIXPKGS is $rev, the flake pins nixpkgs $pin; re-run with a checkout at the pin (nix/eval/README.md)"
        fi
    fi
fi

# The option reference, docs/options.md, is generated from the declarations:
# it must be exactly what they render (UPDATE_EXPECTED=1 rewrites it).
if evaluate options-reference 2>"$tmp/options-reference.err" >"$tmp/options-reference.raw"; then
    raw_string <"$tmp/options-reference.raw" >"$tmp/options.md"
    compare docs/options.md "$tmp/options.md" "$root/docs/options.md"
else
    echo "FAIL docs/options.md: evaluation failed:" >&2
    cat "$tmp/options-reference.err" >&2
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    echo "nix/eval/check.sh: FAILED" >&2
    exit 1
fi
echo "ok nix module evaluation (nixpkgs lib $(cat "$libdir/.version" 2>/dev/null || echo '?'))"
