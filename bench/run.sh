#!/usr/bin/env bash
# The zerg benchmark suite in one command:
#
#   bench/run.sh            # full: 5 interleaved reps, 10 s windows (~35 min)
#   bench/run.sh --quick    # smoke test, under 3 minutes
#   bench/run.sh --only echo-64B --servers tokio,monoio-coop --reps 9
#
# Installs the external tools if missing (wrk, strace, perf), builds the suite
# in release into target-bench/ (a target dir of its own, so it never waits for
# another build's lock), then runs `zerg-bench all` with the given options.
# Results: bench/results/ (see bench/README.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-bench}"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v strace >/dev/null || missing+=(strace)
command -v perf >/dev/null || missing+=(linux-perf)
if ((${#missing[@]})); then
    echo "run.sh: installing ${missing[*]}" >&2
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }; then
        echo "run.sh: could not install ${missing[*]}; the runner skips what needs them" >&2
    fi
fi

cargo build -p zerg-bench --release
# zerg rows that run binaries of other packages build them here, e.g.:
#   cargo build -p zerg-uring --release --examples
exec "$CARGO_TARGET_DIR/release/zerg-bench" all "$@"
