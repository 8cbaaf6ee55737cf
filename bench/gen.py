#!/usr/bin/env python3
"""Deterministic benchmark data sets for ciphersync (issue 6).

    gen.py create SET DIR     build data set SET (S, M, SMALL) in DIR, unless
                              DIR/.bench-set already names the same set+seed
    gen.py mutate SET DIR     the "1% changed, 100 added, 100 deleted" step,
                              applied in place (replace-by-rename, so a tree
                              of hard links to the pristine copy stays safe)
    gen.py describe SET       print the parameters as JSON

Everything comes from random.Random(seed): the same SET always gives the same
names, sizes and bytes (random bytes: incompressible). stdlib only.
"""
import json
import math
import os
import random
import sys

SEED = 20261129
MARK = ".bench-set"

# name: files, dirs, size model, target total bytes (None = whatever it gives)
SETS = {
    # quick run: the M distribution, scaled down
    "S": dict(files=2000, dirs=50, model="lognormal", total=150 * 10**6),
    # 20,000 files in 500 dirs, log-normal 1 KB .. 2 MB, about 1.5 GB
    "M": dict(files=20000, dirs=500, model="lognormal", total=1500 * 10**6),
    # many small files: 200,000 files of 0 .. 4 KB
    "SMALL": dict(files=200000, dirs=2000, model="uniform4k", total=None),
}
MIN_SIZE, MAX_SIZE = 1024, 2 * 1024 * 1024


def sizes_for(spec, rng, n):
    if spec["model"] == "uniform4k":
        return [rng.randint(0, 4096) for _ in range(n)]
    # log-normal, clipped to 1 KB .. 2 MB; the median is scaled (a few
    # deterministic iterations) so that the total lands near the target.
    sigma = 1.3
    z = [rng.gauss(0.0, sigma) for _ in range(n)]
    median = spec["total"] / spec["files"] / math.exp(sigma * sigma / 2)
    for _ in range(30):
        sizes = [min(MAX_SIZE, max(MIN_SIZE, int(median * math.exp(v)))) for v in z]
        total = sum(sizes) * spec["files"] / n
        median *= spec["total"] / total
    return sizes


def dir_names(spec):
    # two levels: d000/e00 ..., about sqrt(dirs) top-level dirs
    top = max(1, int(math.sqrt(spec["dirs"])))
    out = []
    for i in range(spec["dirs"]):
        out.append("d%03d/e%03d" % (i % top, i // top))
    return out


def file_name(rng, i):
    stem = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(rng.randint(4, 24)))
    return "f%06d-%s.%s" % (i, stem, rng.choice(["bin", "dat", "jpg", "pdf", "txt", "raw"]))


def plan(set_name):
    spec = SETS[set_name]
    rng = random.Random("%s-%s" % (SEED, set_name))
    dirs = dir_names(spec)
    sizes = sizes_for(spec, rng, spec["files"])
    files = []
    for i, size in enumerate(sizes):
        files.append((dirs[rng.randrange(len(dirs))] + "/" + file_name(rng, i), size))
    return spec, dirs, files


def write_file(path, rng, size):
    tmp = path + ".bench-tmp"
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n
    os.replace(tmp, path)


def stamp(set_name):
    return json.dumps({"set": set_name, "seed": SEED, **SETS[set_name]}, sort_keys=True)


def create(set_name, root):
    mark = os.path.join(root, MARK)
    if os.path.exists(mark) and open(mark).read() == stamp(set_name):
        print("gen: %s already in %s" % (set_name, root), file=sys.stderr)
        return
    if os.path.exists(root) and os.listdir(root):
        sys.exit("gen: %s exists with other content; remove it first" % root)
    spec, dirs, files = plan(set_name)
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    data_rng = random.Random("%s-%s-bytes" % (SEED, set_name))
    total = 0
    for i, (rel, size) in enumerate(files):
        write_file(os.path.join(root, rel), data_rng, size)
        total += size
        if i % 10000 == 9999:
            print("gen: %d/%d files" % (i + 1, len(files)), file=sys.stderr)
    # a fixed mtime for every file and dir: identical trees between runs
    for rel, _ in files:
        os.utime(os.path.join(root, rel), (1700000000, 1700000000))
    with open(mark, "w") as f:
        f.write(stamp(set_name))
    os.utime(mark, (1700000000, 1700000000))
    print("gen: %s: %d files, %d bytes in %s" % (set_name, len(files), total, root), file=sys.stderr)


def mutate(set_name, root):
    """1% of the files get new content (same size), 100 deleted, 100 added."""
    spec, dirs, files = plan(set_name)
    rng = random.Random("%s-%s-mutate" % (SEED, set_name))
    names = [rel for rel, _ in files]
    picked = rng.sample(range(len(names)), len(names) // 100 + 200)
    change, delete = picked[: len(names) // 100], picked[len(names) // 100:][:100]
    sizes = dict(files)
    for i in change:
        write_file(os.path.join(root, names[i]), rng, sizes[names[i]])
    for i in delete:
        os.remove(os.path.join(root, names[i]))
    new_sizes = sizes_for(spec, rng, 100)
    for k, size in enumerate(new_sizes):
        rel = dirs[rng.randrange(len(dirs))] + "/new-%03d-%s" % (k, file_name(rng, k))
        write_file(os.path.join(root, rel), rng, size)
    print("gen: mutated %s: %d changed, 100 deleted, 100 added" % (root, len(change)), file=sys.stderr)


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in SETS:
        sys.exit(__doc__)
    cmd, set_name = sys.argv[1], sys.argv[2]
    if cmd == "create":
        create(set_name, sys.argv[3])
    elif cmd == "mutate":
        mutate(set_name, sys.argv[3])
    elif cmd == "describe":
        print(stamp(set_name))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
