#!/usr/bin/env bash
# Server RSS after a short load, for one server command line:
#
#   bench/rss.sh PORT WORKLOAD BUF_SIZE "LOADGEN ARGS" SERVER ARGS...
#   bench/rss.sh 25001 http 16384 "--mode http --conns 256 --depth 16" zerg --fixed-ring
#   bench/rss.sh 25002 echo 16384 "--mode echo --conns 16 --size 16384" tokio
#
# Starts `zerg-bench SERVER ARGS --port PORT --workload WORKLOAD --buf-size BUF_SIZE` on CPU 0,
# runs `zerg-bench loadgen --port PORT LOADGEN ARGS` on CPU 1 for 1 s of warm-up and 3 s of
# load, prints the server's VmRSS before and after, and kills the server (by PID). Build first:
# `cargo build -p zerg-bench --release` (binary in $CARGO_TARGET_DIR, default target/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/release/zerg-bench"
port=$1 workload=$2 buf=$3 lgargs=$4
shift 4
taskset -c 0 "$bin" "$@" --port "$port" --workload "$workload" --buf-size "$buf" >/dev/null 2>&1 &
server=$!
trap 'kill -9 $server 2>/dev/null || true' EXIT
sleep 0.5
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$server/status"; }
before=$(rss)
# shellcheck disable=SC2086 # the load generator's arguments are split on purpose
taskset -c 1 "$bin" loadgen --port "$port" $lgargs --warmup 1 --duration 3 >/dev/null 2>&1
after=$(rss)
echo "$* | $workload $lgargs | server RSS before $before MiB, after the load $after MiB"
