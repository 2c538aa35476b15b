#!/usr/bin/env bash
# Load benchmark of `kiln serve` (issue 8), JSON on stdout and in target/bench/api.json.
#
# The load generator (crates/kiln-server/benches/load.rs) is a separate process: it starts the
# release `kiln serve` on 127.0.0.1 with a temporary KILN_HOME, creates a user with
# `kiln admin create-user`, seeds 10 components, 5 recipes and 5 infrastructure and 5
# distribution configurations through the API, then
#   getList  64 clients (keep-alive, every request SigV4-signed) cycling through Get*/List*
#            calls, 3 s warm-up then 20 s measured. Target: >= 3,000 requests/s, p99 < 50 ms.
#   bad      the same 64 clients sending malformed and oversized bodies, unknown operations,
#            bad signatures, wrong secrets, expired dates, unknown keys, unsigned requests,
#            two rounds of 10 s: every answer AWS-shaped, no hang, the server up, and no RSS
#            growth in the second round.
# The generator and the server share this machine's cores; both CPU uses are in the JSON.
# Extra arguments go to the generator (--clients N --seconds S --bad-seconds S --threads N).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Absolute: cargo runs the bench in the package's folder.
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
cargo build --release --locked -p kiln-cli >&2
cargo bench --locked -p kiln-server --bench load --no-run >&2
say "kiln serve under load"
mkdir -p target/bench
cargo bench --locked -q -p kiln-server --bench load -- --kiln "$target/release/kiln" "$@" >target/bench/api.json.new
mv target/bench/api.json.new target/bench/api.json
cat target/bench/api.json
