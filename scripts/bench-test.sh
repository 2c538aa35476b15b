#!/usr/bin/env bash
# Benchmark of the test stage (issue 4), JSON on stdout and in target/bench/test-stage.json:
#   agentReadyMs   QEMU start to the guest agent's first answer;
#   systemReadyMs  QEMU start to the end of systemd's start-up (`is-system-running --wait`);
#   totalMs        the whole `kiln test` of the minimal example (two instances, one reboot);
#   tests          each built-in test's duration.
# Target: systemReadyMs under 30 s on this machine (TCG when KVM does not work).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

cargo build --release --locked -p kiln-cli >&2
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KILN_HOME=$work/home KILN_CACHE_DIR=${KILN_CACHE_DIR:-$HOME/.cache/kiln/bench-cache}

say "building examples/minimal (untimed; layers cached in $KILN_CACHE_DIR)"
"$kiln" build -f examples/minimal/minimal.yml --no-test --out "$work/minimal" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }

say "kiln test minimal/1.0.0"
"$kiln" test minimal/1.0.0 --json --report "$work/report" >"$work/report.json" 2>"$work/test.log" \
  || { cat "$work/test.log" >&2; exit 1; }

mkdir -p target/bench
python3 - "$work/report.json" <<'PY' | tee target/bench/test-stage.json
import json, os, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({
    "bench": "test-stage",
    "machine": {"cpus": os.cpu_count()},
    "accelerator": r["accelerator"],
    "agentReadyMs": r["agentReadyMs"],
    "systemReadyMs": r["systemReadyMs"],
    "totalMs": r["totalMs"],
    "targetSystemReadyMs": 30000,
    "tests": {t["name"]: {"status": t["status"], "ms": t["durationMs"]} for t in r["tests"]},
}, indent=2))
PY
