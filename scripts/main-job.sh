#!/usr/bin/env bash
# kiln's main job on a fresh machine: installs what it needs, builds kiln, bootstraps a Debian
# root, and runs an example component document into it (build and validate phases), writing
# a JSON report. Until `kiln build` exists this is the end-to-end path.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

scripts/install-deps.sh

say "building kiln (cargo build --release)"
cargo build --release --locked -p kiln-cli

tar=$(scripts/debian-root.sh test)
out=${1:-out/main-job}
rm -rf "$out" && mkdir -p "$out/root"
say "unpacking the Debian root into $out/root"
tar -C "$out/root" -xf "$tar"

say "running examples/components/motd-and-admins.yml into $out/root"
./target/release/kiln component run examples/components/motd-and-admins.yml \
  --root "$out/root" --phases build,validate --param Banner="Authorised use only. Built by kiln." \
  --report "$out/report.json"
say "done: report in $out/report.json, step logs in $out/logs"
