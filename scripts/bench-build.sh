#!/usr/bin/env bash
# Benchmark of `kiln build` (issue 3), run side by side on this machine, JSON on stdout:
#   floor      mmdebstrap of the minimal example's package set + mkfs.ext4 -d of that tree:
#              the least any tool must do to make the same image here;
#   cold       `kiln build --no-cache --no-test` of examples/minimal (package cache warm, as
#              for the floor's mmdebstrap, which shares it);
#   warm       a rebuild after changing only the last component (a new version of it).
# Targets: cold within 1.3x of the floor; warm under 15% of cold.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

cargo build --release --locked -p kiln-cli >&2
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KILN_HOME=$work/home KILN_CACHE_DIR=$work/cache
now() { date +%s.%N; }
# Run kiln quietly; on failure show its output.
quiet() { local log=$work/$1.log; shift; "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }

# The package set kiln bootstraps for debian-12-x86 (kiln-parent's defaults), read from a
# first, untimed run that also fills the package cache for both sides.
say "warming the package cache (untimed)"
quiet warm-up "$kiln" build -f examples/minimal/minimal.yml --no-test --out "$work/warm-up"
pkgs=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(",".join(sorted(m["parent"]["info"]["spec"]["packages"])))' "$work/warm-up/manifest.json")

say "floor: mmdebstrap + mkfs.ext4 -d"
t0=$(now)
mmdebstrap --quiet --mode=unshare --variant=minbase --include="$pkgs" \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"; cp -a $KILN_CACHE_DIR/packages/apt-archives/bookworm/. \"\$1/var/cache/apt/archives/\" 2>/dev/null || true" \
  bookworm "$work/floor-tree" >&2
size=$(du -sb "$work/floor-tree" | cut -f1)
truncate -s $(( size * 13 / 10 + 256 * 1024 * 1024 )) "$work/floor.ext4"
mkfs.ext4 -q -d "$work/floor-tree" "$work/floor.ext4"
t1=$(now)
floor=$(python3 -c "print($t1 - $t0)")

say "cold: kiln build --no-cache"
t0=$(now)
quiet cold "$kiln" build -f examples/minimal/minimal.yml --no-cache --no-test --out "$work/cold"
t1=$(now)
cold=$(python3 -c "print($t1 - $t0)")

say "warm: rebuild after changing the last component"
cp examples/minimal/minimal.yml "$work/changed.yml"
python3 - "$work/changed.yml" "$PWD/examples/components/motd-and-admins.yml" <<'PY'
import sys, re
path, doc = sys.argv[1], sys.argv[2]
text = open(path).read()
text = text.replace("uri: ../components/motd-and-admins.yml", "uri: " + doc)
text = text.replace("semanticVersion: 1.1.0\n    platform: Linux", "semanticVersion: 1.1.1\n    platform: Linux")
text = text.replace('value: ["admin"]', 'value: ["admin,opsadmin"]')
open(path, "w").write(text)
PY
t0=$(now)
quiet warm "$kiln" build -f "$work/changed.yml" --no-test --out "$work/warm"
t1=$(now)
warm=$(python3 -c "print($t1 - $t0)")

python3 - "$floor" "$cold" "$warm" <<'PY'
import json, sys
floor, cold, warm = map(float, sys.argv[1:])
print(json.dumps({
    "floor_seconds": round(floor, 2),
    "cold_build_seconds": round(cold, 2),
    "cold_over_floor": round(cold / floor, 3),
    "cold_target": "<= 1.3",
    "warm_rebuild_seconds": round(warm, 2),
    "warm_over_cold": round(warm / cold, 3),
    "warm_target": "< 0.15",
}, indent=2))
PY
