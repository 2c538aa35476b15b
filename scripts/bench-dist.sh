#!/usr/bin/env bash
# Benchmark of distribution (issue 7), JSON on stdout and in target/bench/dist.json.
#
# The image: a 2 GiB ext4 file system made with `mke2fs -d` (fixed UUID, hash seed and time,
# as kiln-image makes them) from a Debian tree: this machine's /etc, dpkg database and most of
# its /usr (hard links, so no copy), about 1.7 GiB of installed packages.
#   throughput   cp of the image to three directories, one after another, against kiln
#                pushing it to three fresh file:// stores the way `kiln distribute` does (one
#                push per store, 8 uploads at once), then to three encrypted stores. Each run
#                starts after a read of the image (cached) and a sync, and ends with a sync;
#                MB/s is image bytes x 3 / seconds. Target: kiln at least 80% of cp.
#   incremental  a second version of the image in which one package (libssl3, ~6 MB) has new
#                content in every file (10% larger) and a new version in the dpkg database,
#                made with the same mke2fs options; the bytes a push of it uploads to a store
#                holding the first. Target: under 5% of the image. The same for the two
#                images converted to qcow2.
# Scratch (under /var/tmp, removed at the end): at most about 4 copies of the image's data.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

PKG=${KILN_BENCH_PACKAGE:-libssl3}
SIZE=$((2 << 30))
# Host directories to take, in order, until the tree reaches ~1.7 GiB.
BUDGET=$((1700 << 20))
SOURCES=(usr/bin usr/sbin usr/lib/x86_64-linux-gnu usr/share usr/libexec usr/lib/python3 usr/lib/python3.11
  usr/lib/gcc usr/lib/git-core usr/include)

cargo bench --locked -p kiln-dist --bench distribute --no-run >&2
bench() { cargo bench --locked -q -p kiln-dist --bench distribute -- "$@"; }
work=$(mktemp -d /var/tmp/kiln-bench-dist.XXXXXX)
trap 'rm -rf "$work"' EXIT
[ "$(df --output=avail -B1 "$work" | tail -1)" -gt $((9 << 30)) ] || { echo "need 9 GiB free in /var/tmp" >&2; exit 1; }

say "making the tree (hard links to this machine's /usr)"
tree=$work/tree
mkdir -p "$tree/usr/lib" "$tree/var/lib"
cp -a /etc "$tree/etc" 2>/dev/null || true
cp -a /var/lib/dpkg "$tree/var/lib/dpkg"
used=0
for s in "${SOURCES[@]}"; do
  [ -d "/$s" ] || continue
  n=$(du -sb "/$s" | cut -f1)
  [ $((used + n)) -le $BUDGET ] || continue
  cp -al "/$s" "$tree/$s"
  used=$((used + n))
done
say "tree: $((used >> 20)) MiB of /usr"

mkimage() { # TREE OUT
  rm -f "$2"
  truncate -s $SIZE "$2"
  LC_ALL=C E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -U 6f1d9c2e-0b1a-4c55-9a3e-1d2c3b4a5f60 \
    -E nodiscard,hash_seed=0c0ffee0-1234-4321-abcd-0123456789ab -d "$1" "$2"
}
say "image v1"
mkimage "$tree" "$work/v1.raw"

say "throughput: cp x3, kiln x3, kiln encrypted x3"
bench throughput "$work/v1.raw" "$work" >"$work/throughput.json"

say "image v2: $PKG changed"
# Hard links into /usr must never be written through: each file is removed, then written anew.
dpkg -L "$PKG" | while read -r f; do
  [ -f "$tree$f" ] && [ ! -L "$tree$f" ] || continue
  python3 - "$tree$f" <<'PY'
import os, random, sys
p = sys.argv[1]
n = os.path.getsize(p)
os.unlink(p)
rng = random.Random(p)
open(p, "wb").write(rng.randbytes(n + n // 10 + 1))
PY
done
python3 - "$tree/var/lib/dpkg/status" "$PKG" <<'PY'
import sys
path, pkg = sys.argv[1:]
paras = open(path).read().split("\n\n")
for i, p in enumerate(paras):
    if p.startswith(f"Package: {pkg}\n"):
        paras[i] = "\n".join(l + "+kiln1" if l.startswith("Version: ") else l for l in p.split("\n"))
open(path + ".new", "w").write("\n\n".join(paras))
PY
rm -f "$tree/var/lib/dpkg/status" && mv "$tree/var/lib/dpkg/status.new" "$tree/var/lib/dpkg/status"
mkimage "$tree" "$work/v2.raw"
rm -rf "$tree"
changed=$(dpkg -L "$PKG" | while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && stat -c %s "$f"; done | awk '{s+=$1} END {print s+0}')

say "incremental: raw"
bench incremental "$work/v1.raw" "$work/v2.raw" "$work" >"$work/raw.json"
say "incremental: qcow2"
for v in v1 v2; do
  qemu-img convert -f raw -O qcow2 "$work/$v.raw" "$work/$v.qcow2"
  rm -f "$work/$v.raw"
done
bench incremental "$work/v1.qcow2" "$work/v2.qcow2" "$work" >"$work/qcow2.json"

mkdir -p target/bench
python3 - "$work" "$PKG" "$changed" <<'PY' | tee target/bench/dist.json
import json, os, sys
work, pkg, changed = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda n: json.load(open(os.path.join(work, n)))
print(json.dumps({
    "bench": "dist",
    "machine": {"cpus": os.cpu_count()},
    "throughput": load("throughput.json"),
    "incremental": {
        "changedPackage": pkg,
        "changedPackageFileBytes": changed,
        "raw": load("raw.json"),
        "qcow2": load("qcow2.json"),
    },
}, indent=2))
PY
