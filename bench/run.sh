#!/usr/bin/env bash
# The zerg benchmark suite in one command:
#
#   bench/run.sh            # full: 5 interleaved reps, 10 s windows
#   bench/run.sh --quick    # smoke test: every row once, short windows, under 3 minutes
#   bench/run.sh --only echo-64B --servers tokio,c-uring --reps 9
#
# Installs the external tools if missing (wrk, strace, perf, h2load, redis-benchmark,
# redis-server, gcc + liburing for the C reference server), builds the suite and the zerg
# examples in release into target-bench/ (a target dir of its own, so it never waits for
# another build's lock), then runs `zerg-bench all` with the given options.
# Results: bench/results/ (bench/results/<machine>/ on machines other than the 2-CPU
# reference; see bench/README.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-bench}"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v strace >/dev/null || missing+=(strace)
command -v perf >/dev/null || missing+=(linux-perf)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/include/liburing.h ] || missing+=(liburing-dev)
if ((${#missing[@]})); then
    echo "run.sh: installing ${missing[*]}" >&2
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }; then
        echo "run.sh: could not install ${missing[*]}; the runner skips what needs them" >&2
    fi
fi

cargo build -p zerg-bench --release
# The zerg rows run the examples (target-bench/release/examples/{raw,hyper,tls,proxy,resp}).
# A failed example build does not stop the suite: the rows whose binary is missing are skipped,
# loudly, by the runner.
if ! cargo build -p zerg-uring --release --examples --all-features; then
    echo "run.sh: WARNING: the zerg examples did not build; their rows will be skipped" >&2
fi
exec "$CARGO_TARGET_DIR/release/zerg-bench" all "$@"
