#!/usr/bin/env bash
# Starts each example as a new user would, hits it with a real client, stops it with SIGINT and
# checks it exits 0. Uses the release examples built by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples
port=18480
fail=0

check_http() { # name args...
  local name=$1; shift
  "$bin/$name" --port "$port" "$@" >/tmp/zerg-smoke-$name.log 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  local body; body=$(curl -s --max-time 5 "http://127.0.0.1:$port/")
  local out; out=$(wrk -t1 -c256 -d2s --timeout 2s "http://127.0.0.1:$port/" 2>&1)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local errs; errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  local limits; limits=$(check_limits "$port")
  kill -INT "$pid"
  local rc=0; wait "$pid" || rc=$?
  printf '%-10s %-40s body=%-14q req/s=%-10s limits=%-6s exit=%s %s\n' "$name" "$*" "$body" "$rps" "$limits" "$rc" "$errs"
  if [[ "$body" != "Hello, World!" || "$rc" != 0 || -n "$errs" || -z "$rps" || "$limits" != ok ]]; then
    fail=1; cat /tmp/zerg-smoke-$name.log
  fi
  port=$((port + 1))
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

check_echo() { # name args...
  local name=$1; shift
  "$bin/$name" --port "$port" "$@" >/tmp/zerg-smoke-$name.log 2>&1 &
  local pid=$!
  local got
  got=$(python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(50):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5); break
    except OSError:
        time.sleep(0.1)
msg = bytes(range(256)) * 4096  # 1 MiB
s.sendall(msg)
buf = bytearray()
while len(buf) < len(msg):
    chunk = s.recv(65536)
    if not chunk: break
    buf += chunk
print("ok" if bytes(buf) == msg else "mismatch %d" % len(buf))
PY
)
  kill -INT "$pid"
  local rc=0; wait "$pid" || rc=$?
  printf '%-10s %-40s echo-1MiB=%-10s exit=%s\n' "$name" "$*" "$got" "$rc"
  if [[ "$got" != ok || "$rc" != 0 ]]; then fail=1; cat /tmp/zerg-smoke-$name.log; fi
  port=$((port + 1))
}

check_https() { # args... (the tls example)
  "$bin/tls" --port "$port" "$@" >/tmp/zerg-smoke-tls.log 2>&1 &
  local pid=$!
  local url="https://127.0.0.1:$port/"
  for _ in $(seq 50); do curl -sk -o /dev/null "$url" && break; sleep 0.1; done
  local h1; h1=$(curl -sk --max-time 5 --http1.1 -w ' %{http_version}' "$url")
  local h2; h2=$(curl -sk --max-time 5 --http2 -w ' %{http_version}' "$url")
  # A client that does not trust the self-signed certificate fails its handshake (curl: 60);
  # the server goes on serving.
  local untrusted=0; curl -s --max-time 5 -o /dev/null "$url" || untrusted=$?
  local after; after=$(curl -sk --max-time 5 "$url")
  local out; out=$(wrk -t1 -c64 -d2s --timeout 2s "$url" 2>&1)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local errs; errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  kill -INT "$pid"
  local rc=0; wait "$pid" || rc=$?
  printf '%-10s %-40s h1=%-20q h2=%-18q untrusted=%-3s req/s=%-10s exit=%s %s\n' tls "$*" "$h1" "$h2" \
    "$untrusted" "$rps" "$rc" "$errs"
  if [[ "$h1" != "Hello, World! 1.1" || "$h2" != "Hello, World! 2" || "$untrusted" != 60 \
        || "$after" != "Hello, World!" || "$rc" != 0 || -n "$errs" || -z "$rps" ]]; then
    fail=1; cat /tmp/zerg-smoke-tls.log
  fi
  port=$((port + 1))
}

check_proxy() { # proxy args...: an echo upstream, the proxy in front, 1 MiB through it
  local up=$port down=$((port + 1))
  "$bin/echo" --port "$up" >/tmp/zerg-smoke-upstream.log 2>&1 &
  local upid=$!
  "$bin/proxy" --upstream "127.0.0.1:$up" --port "$down" "$@" >/tmp/zerg-smoke-proxy.log 2>&1 &
  local pid=$!
  local got
  got=$(python3 - "$down" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(50):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5); break
    except OSError:
        time.sleep(0.1)
msg = bytes(range(256)) * 4096  # 1 MiB
s.sendall(msg)
s.shutdown(socket.SHUT_WR)  # half-close: the echo finishes, then its FIN comes back
buf = bytearray()
while True:
    chunk = s.recv(65536)
    if not chunk: break
    buf += chunk
print("ok" if bytes(buf) == msg else "mismatch %d" % len(buf))
PY
)
  kill -INT "$pid"
  local rc=0; wait "$pid" || rc=$?
  kill -INT "$upid"
  local urc=0; wait "$upid" || urc=$?
  printf '%-10s %-40s proxy-1MiB=%-10s exit=%s upstream-exit=%s\n' proxy "$*" "$got" "$rc" "$urc"
  if [[ "$got" != ok || "$rc" != 0 || "$urc" != 0 ]]; then
    fail=1; cat /tmp/zerg-smoke-proxy.log /tmp/zerg-smoke-upstream.log
  fi
  port=$((port + 2))
}

check_metrics() { # name args...: --metrics-port serves Prometheus text that counts wrk's traffic
  local name=$1; shift
  local mport=$((port + 1000)) url="http://127.0.0.1:$port/"
  "$bin/$name" --port "$port" --metrics-port "$mport" "$@" >/tmp/zerg-smoke-$name-metrics.log 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
  # Bytes of one response (head and body): every response wrk counted was sent whole.
  local size; size=$(curl -s --max-time 5 -o /dev/null -w '%{size_header} %{size_download}' "$url" \
    | awk '{printf "%d", $1 + $2}' || true)
  local out; out=$(wrk -t1 -c64 -d2s --timeout 2s "$url" 2>&1 || true)
  local reqs; reqs=$(awk '/ requests in / {print $1}' <<<"$out")
  local text; text=$(curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" || true)
  local sum='{s += $2} END {printf "%d", s}'
  local sent; sent=$(awk "/^zerg_sent_bytes_total[{]/ $sum" <<<"$text")
  local opened; opened=$(awk "/^zerg_connections_opened_total[{]/ $sum" <<<"$text")
  kill -INT "$pid" 2>/dev/null || true
  local rc=0; wait "$pid" || rc=$?
  # wrk's 64 connections and curl's were opened; at least requests x size bytes were sent.
  local ok=ok
  if [[ -z "$reqs" || "$reqs" -le 0 || "$size" -le 0 || "$sent" -lt $((reqs * size)) \
        || "$opened" -lt 66 ]] \
     || ! grep -q '^# TYPE zerg_connections gauge$' <<<"$text"; then
    ok=FAIL
  fi
  printf '%-10s %-40s metrics=%-4s requests=%-9s sent=%-11s (>= %s x %s) opened=%-5s exit=%s\n' \
    "$name" "--metrics-port $*" "$ok" "$reqs" "$sent" "$reqs" "$size" "$opened" "$rc"
  if [[ "$ok" != ok || "$rc" != 0 ]]; then fail=1; cat /tmp/zerg-smoke-$name-metrics.log; fi
  port=$((port + 1))
}

check_http raw
check_http raw --mode reactor --accept per-reactor --reactors 2
check_http raw --incremental
check_http sequence
check_http sqpoll --sq-cpu 0
check_echo echo
check_echo echo --mode reactor --incremental
check_proxy
check_proxy --mode runtime --reactors 2
for ex in pipereader stream hyper codec; do
  [[ -x "$bin/$ex" ]] && check_http "$ex"
done
check_metrics raw
check_metrics raw --mode reactor --accept per-reactor --reactors 2
if [[ -x "$bin/hyper" ]]; then check_metrics hyper --mode reactor; fi
if [[ -x "$bin/tls" ]]; then
  check_https
  check_https --mode reactor --accept per-reactor --reactors 2
fi
if [[ -x "$bin/axum" ]]; then
  check_http axum
  check_http axum --mode reactor --accept per-reactor --reactors 2
fi
exit $fail
