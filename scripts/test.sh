#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, checks formatting and lints,
# prepares the shared Debian root the heavy tests use, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

scripts/install-deps.sh --test

say "checking formatting (cargo fmt --check)"
cargo fmt --all -- --check

say "linting (cargo clippy --all-targets -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "preparing the Debian test root (cached after the first run)"
export KILN_TEST_DEBIAN_TAR
KILN_TEST_DEBIAN_TAR=$(scripts/debian-root.sh test)

say "running the tests (cargo nextest)"
KILN_REQUIRE_S3_TESTS=1 cargo nextest run --workspace --locked --profile ci
