#!/usr/bin/env bash
# kiln's main job on a fresh machine: install what it needs, build kiln, and build the minimal
# Debian 12 example into a bootable, tested, catalogued image:
#   bootstrap (mmdebstrap, cached) -> component layers in the sandbox -> validate ->
#   golden-image cleanup -> disk assembly (qcow2, raw) -> SBOMs -> boot test in QEMU.
# State, caches and image folders go to KILN_HOME (default ~/.local/share/kiln).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

scripts/install-deps.sh

say "building kiln (cargo build --release)"
cargo build --release --locked -p kiln-cli

out=${1:-out/minimal}
say "building examples/minimal/minimal.yml into $out"
./target/release/kiln build -f examples/minimal/minimal.yml --out "$out"
say "done: $out holds the disks, manifest.json, SHA256SUMS, SBOMs and build-log.jsonl"
./target/release/kiln image list
