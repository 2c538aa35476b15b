#!/usr/bin/env bash
# Bootstraps a Debian bookworm root file system with mmdebstrap into a tarball and prints its
# path. The tarball is cached by package set, so a second call costs nothing.
#   scripts/debian-root.sh test   minbase + sudo: what the component tests run in
set -euo pipefail

kind=${1:-test}
cache=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
mkdir -p "$cache"

case "$kind" in
  test) include="sudo,ca-certificates" ;;
  *) echo "unknown root kind: $kind (use: test)" >&2; exit 2 ;;
esac

tar="$cache/bookworm-minbase-${kind}.tar"
if [[ ! -f "$tar" || ! -s "$tar" ]]; then
  rm -rf "$tar"
  printf '\033[1m==> bootstrapping Debian bookworm (%s) with mmdebstrap into %s\033[0m\n' "$include" "$tar" >&2
  # mmdebstrap picks the output format from the file name, so the partial file ends in .tar too.
  part="${tar%.tar}.part.tar"
  rm -rf "$part"
  mmdebstrap --quiet --variant=minbase --include="$include" bookworm "$part" >&2
  mv "$part" "$tar"
fi
echo "$tar"
