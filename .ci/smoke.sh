#!/usr/bin/env bash
# Starts each example as a new user would, hits it with a real client (curl, wrk, h2load,
# redis-cli, redis-benchmark, python sockets), stops it with SIGINT and checks it exits 0. Uses
# the release examples built by .ci/run. Every example runs with its defaults (handlers on the
# reactor threads, per-reactor accept) and in runtime mode.
#
# Each server listens on 127.0.0.1, a free port it picks itself (--port 0) and prints, so runs
# never collide with another server on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples
logs=$(mktemp -d /tmp/zerg-smoke.XXXXXX)
fail=0
pid=
port=
rc=

# launch LOG NAME ARGS...: starts an example on a free port; sets $pid and $port, or returns 1
# (and shows the log) when it printed no `listening on` line within 10 s.
launch() {
  local log=$1 name=$2; shift 2
  : >"$log" # created before the server starts, so the first look finds it
  "$bin/$name" --ip 127.0.0.1 --port 0 "$@" >"$log" 2>&1 &
  pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^listening on [^ ]*:\([0-9]*\) .*/\1/p' "$log" | head -n 1)
    [[ -n $port ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name $*: did not start"; cat "$log"
  kill -9 "$pid" 2>/dev/null || true
  fail=1
  return 1
}

# stop: SIGINT to $pid; sets $rc to its exit status.
stop() {
  kill -INT "$pid"
  rc=0; wait "$pid" || rc=$?
}

check_http() { # name args...
  local name=$1; shift
  local log=$logs/$name.log
  launch "$log" "$name" "$@" || return 0
  local url="http://127.0.0.1:$port/"
  local body; body=$(curl -s --max-time 5 "$url" || true)
  local out; out=$(wrk -t1 -c256 -d2s --timeout 2s "$url" 2>&1 || true)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local errs; errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  local limits; limits=$(check_limits "$port" 2>&1 | tail -n 1)
  # hyper-based examples also speak h2c (HTTP/2 prior knowledge): curl, then h2load with 16
  # concurrent streams on each of 8 connections.
  local h2=-
  if [[ $name == hyper || $name == axum ]]; then
    h2=$(curl -s --max-time 5 --http2-prior-knowledge -w ' %{http_version}' "$url" || true)
    local h2load_out; h2load_out=$(h2load -c8 -m16 -n20000 "$url" 2>&1 || true)
    grep -q "20000 succeeded, 0 failed, 0 errored" <<<"$h2load_out" || h2="h2load failed"
  fi
  stop
  printf '%-10s %-40s body=%-14q h2c=%-18q req/s=%-10s limits=%-6s exit=%s %s\n' "$name" "$*" \
    "$body" "$h2" "$rps" "$limits" "$rc" "$errs"
  if [[ "$body" != "Hello, World!" || "$rc" != 0 || -n "$errs" || -z "$rps" || "$limits" != ok \
        || ( "$h2" != - && "$h2" != "Hello, World! 2" ) ]]; then
    fail=1; cat "$log"
  fi
}

check_limits() { # port: a malformed request gets 400, a 16 KiB head 431, each then a close;
  # a 64 MiB header flood is cut off; a GET afterwards is still served.
  python3 - "$1" <<'PY'
import socket, sys
port = int(sys.argv[1])
def ask(data, flood=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if flood:
            chunk = b"GET / HTTP/1.1\r\nX: " + b"a" * 65536
            for _ in range(1024):
                s.sendall(chunk); chunk = b"a" * 65536
        else:
            s.sendall(data)
    except OSError:
        pass  # the server closed while we were still sending
    out = b""
    try:
        while True:
            c = s.recv(65536)
            if not c: return out
            out += c
    except ConnectionResetError:
        return out
def status(out): return out[9:12]
bad = status(ask(b"GET / HTTP/1.1\r\nBad\x01Header: x\r\n\r\n"))
big = status(ask(b"GET / HTTP/1.1\r\nX: " + b"a" * 16384 + b"\r\n\r\n"))
flood = status(ask(None, flood=True))
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
ok = s.recv(4096)
print("ok" if (bad, big, flood) == (b"400", b"431", b"431") and ok.endswith(b"Hello, World!")
      else "FAIL %r %r %r %r" % (bad, big, flood, ok[:12]))
PY
}

# echo_1mib PORT [half-close]: sends 1 MiB, prints "ok" when the same bytes come back.
echo_1mib() {
  python3 - "$@" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
msg = bytes(range(256)) * 4096  # 1 MiB
s.sendall(msg)
if len(sys.argv) > 2:
    s.shutdown(socket.SHUT_WR)  # half-close: the echo finishes, then its FIN comes back
buf = bytearray()
while len(buf) < len(msg) or len(sys.argv) > 2:
    chunk = s.recv(65536)
    if not chunk: break
    buf += chunk
print("ok" if bytes(buf) == msg else "mismatch %d" % len(buf))
PY
}

check_echo() { # name args...
  local name=$1; shift
  local log=$logs/$name.log
  launch "$log" "$name" "$@" || return 0
  local got; got=$(echo_1mib "$port" 2>&1 | tail -n 1)
  stop
  printf '%-10s %-40s echo-1MiB=%-10s exit=%s\n' "$name" "$*" "$got" "$rc"
  if [[ "$got" != ok || "$rc" != 0 ]]; then fail=1; cat "$log"; fi
}

check_https() { # args... (the tls example)
  local log=$logs/tls.log
  launch "$log" tls "$@" || return 0
  local url="https://127.0.0.1:$port/"
  local h1; h1=$(curl -sk --max-time 5 --http1.1 -w ' %{http_version}' "$url" || true)
  local h2; h2=$(curl -sk --max-time 5 --http2 -w ' %{http_version}' "$url" || true)
  # A client that does not trust the self-signed certificate fails its handshake (curl: 60);
  # the server goes on serving.
  local untrusted=0; curl -s --max-time 5 -o /dev/null "$url" || untrusted=$?
  local after; after=$(curl -sk --max-time 5 "$url" || true)
  local out; out=$(wrk -t1 -c64 -d2s --timeout 2s "$url" 2>&1 || true)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local errs; errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  # HTTP/2 over TLS with 16 concurrent streams on each of 8 connections.
  local h2load_out; h2load_out=$(h2load -c8 -m16 -n10000 "$url" 2>&1 || true)
  local h2load=ok
  grep -q "10000 succeeded, 0 failed, 0 errored" <<<"$h2load_out" || h2load=failed
  stop
  printf '%-10s %-40s h1=%-20q h2=%-18q untrusted=%-3s h2load=%-6s req/s=%-10s exit=%s %s\n' tls "$*" \
    "$h1" "$h2" "$untrusted" "$h2load" "$rps" "$rc" "$errs"
  if [[ "$h1" != "Hello, World! 1.1" || "$h2" != "Hello, World! 2" || "$untrusted" != 60 \
        || "$after" != "Hello, World!" || "$h2load" != ok || "$rc" != 0 || -n "$errs" \
        || -z "$rps" ]]; then
    fail=1; cat "$log"
  fi
}

check_resp() { # args... (the resp example): redis-cli with a 5 MiB value, redis-benchmark
  # pipelined, a protocol error answered then closed, and the server still serving.
  local log=$logs/resp.log
  launch "$log" resp "$@" || return 0
  local value=$logs/resp.value
  head -c 5000000 /dev/urandom >"$value"
  local set; set=$(redis-cli -p "$port" -x SET big <"$value" 2>&1 || true)
  local exact=no
  # --raw prints the value and a newline.
  if redis-cli -p "$port" --raw GET big | head -c 5000000 | cmp -s - "$value"; then exact=yes; fi
  # -t set,get,ping runs four tests: PING_INLINE, PING_MBULK, SET and GET.
  local bench; bench=$(redis-benchmark -p "$port" -P 16 -c 50 -n 100000 -r 1000 -d 4096 \
    -t set,get,ping -q 2>&1 | tr '\r' '\n' | grep -c "requests per second" || true)
  local refused; refused=$(python3 - "$port" <<'PY' 2>&1 | tail -n 1
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"*1\r\n$999999999999\r\n")
out = b""
while True:
    c = s.recv(4096)
    if not c: break
    out += c
print("ok" if out.startswith(b"-ERR Protocol error") else "FAIL %r" % out)
PY
)
  local after; after=$(redis-cli -p "$port" ECHO still 2>&1 || true)
  stop
  printf '%-10s %-40s set=%-4s 5MiB-exact=%-4s bench-tests=%-3s refused=%-4s exit=%s\n' resp "$*" \
    "$set" "$exact" "$bench" "$refused" "$rc"
  if [[ "$set" != OK || "$exact" != yes || "$bench" != 4 || "$refused" != ok \
        || "$after" != still || "$rc" != 0 ]]; then
    fail=1; cat "$log"
  fi
}

check_proxy() { # proxy args...: an echo upstream, the proxy in front, 1 MiB through it
  launch "$logs/upstream.log" echo || return 0
  local upid=$pid up=$port
  if ! launch "$logs/proxy.log" proxy --upstream "127.0.0.1:$up" "$@"; then
    kill -INT "$upid"; wait "$upid" || true
    return 0
  fi
  local got; got=$(echo_1mib "$port" half-close 2>&1 | tail -n 1)
  stop
  local prc=$rc
  pid=$upid
  stop
  local urc=$rc rc=$prc
  printf '%-10s %-40s proxy-1MiB=%-10s exit=%s upstream-exit=%s\n' proxy "$*" "$got" "$rc" "$urc"
  if [[ "$got" != ok || "$rc" != 0 || "$urc" != 0 ]]; then
    fail=1; cat "$logs/proxy.log" "$logs/upstream.log"
  fi
}

check_metrics() { # name args...: --metrics-port serves Prometheus text that counts wrk's traffic
  local name=$1; shift
  local log=$logs/$name-metrics.log
  # --metrics-port 0: a free port, printed like the server's.
  launch "$log" "$name" --metrics-port 0 "$@" || return 0
  local url="http://127.0.0.1:$port/" murl=
  for _ in $(seq 50); do # printed just after the `listening on` line
    murl=$(sed -n 's/^metrics on \(http:[^ ]*\)$/\1/p' "$log" | head -n 1)
    [[ -n $murl ]] && break
    sleep 0.1
  done
  # Bytes of one response (head and body): every response wrk counted was sent whole.
  local size; size=$(curl -s --max-time 5 -o /dev/null -w '%{size_header} %{size_download}' "$url" \
    | awk '{printf "%d", $1 + $2}' || true)
  local out; out=$(wrk -t1 -c64 -d2s --timeout 2s "$url" 2>&1 || true)
  local reqs; reqs=$(awk '/ requests in / {print $1}' <<<"$out")
  local text; text=$(curl -s --max-time 5 "$murl" || true)
  local sum='{s += $2} END {printf "%d", s}'
  local sent; sent=$(awk "/^zerg_sent_bytes_total[{]/ $sum" <<<"$text")
  local opened; opened=$(awk "/^zerg_connections_opened_total[{]/ $sum" <<<"$text")
  stop
  # wrk's 64 connections and curl's were opened; at least requests x size bytes were sent.
  local ok=ok
  if [[ -z "$murl" || -z "$reqs" || "$reqs" -le 0 || "${size:-0}" -le 0 \
        || "${sent:-0}" -lt $((reqs * size)) || "${opened:-0}" -lt 65 ]] \
     || ! grep -q '^# TYPE zerg_connections gauge$' <<<"$text"; then
    ok=FAIL
  fi
  printf '%-10s %-40s metrics=%-4s requests=%-9s sent=%-11s (>= %s x %s) opened=%-5s exit=%s\n' \
    "$name" "--metrics-port $*" "$ok" "$reqs" "$sent" "$reqs" "$size" "$opened" "$rc"
  if [[ "$ok" != ok || "$rc" != 0 ]]; then fail=1; cat "$log"; fi
}

check_http raw
check_http raw --reactors 2
check_http raw --mode runtime --accept dedicated --incremental
check_http sequence
check_http sqpoll --sq-cpu 0
check_echo echo
check_echo echo --mode runtime --incremental
check_resp
check_resp --mode runtime --reactors 2
check_proxy
check_proxy --mode runtime --reactors 2
for ex in pipereader stream hyper codec axum; do
  if [[ -x "$bin/$ex" ]]; then
    check_http "$ex"
    check_http "$ex" --mode runtime --accept dedicated --reactors 2
  fi
done
check_metrics raw
check_metrics raw --mode runtime --accept dedicated --reactors 2
if [[ -x "$bin/hyper" ]]; then check_metrics hyper; fi
if [[ -x "$bin/axum" ]]; then check_metrics axum --mode runtime; fi
if [[ -x "$bin/tls" ]]; then
  check_https
  check_https --mode runtime --accept dedicated --reactors 2
fi
if [[ $fail == 0 ]]; then rm -rf "$logs"; else echo "logs: $logs"; fi
exit $fail
