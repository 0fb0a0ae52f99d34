#!/usr/bin/env bash
# The cost of security on the API's hot paths, measured in one run on one
# machine: `hale bench read` and `hale bench create` against four nodes that
# differ only in how a request is secured:
#
#   plain-static  http,  a static development token (the figures before issue 13)
#   plain-jwt     http,  an access token (ES256 JWT) from a real OpenID provider
#   tls-static    https (rustls, ring), a static token
#   tls-jwt       https, a JWT: what a trust deploys
#
# The provider is tests/oidc/idp.mjs (npm oidc-provider, pinned; `npm ci` in
# tests/oidc first). Tokens come from it by client credentials, so every JWT
# request is checked against its keys (the first time in full, then from the
# verified-token cache until the token expires).
#
#   tools/bench-security.sh [--hale target/release/hale] [--duration 10] [--connections 16] [--rounds 2]
#
# Besides throughput and latency (client and server share the machine, so
# those include the bench client's own TLS work), it reports the server's CPU
# time (utime + stime from /proc) per request: what TLS and JWT checks cost
# the node itself. That figure covers the whole bench command (seeding and
# warm-up too), which is the same work in every configuration.
#
# Each configuration gets a fresh data directory and its own server; the
# patient-level access rule is off on all four, so only the security layer
# differs. Rounds interleave the configurations, so drift on a shared machine
# spreads over all of them; compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

HALE=target/release/hale
DURATION=10
CONNECTIONS=16
ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --hale) HALE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$HALE" ]; then
  echo "error: $HALE is not built; run: cargo build --release -p hale" >&2
  exit 1
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  echo "error: the test OpenID provider is not installed; run: (cd tests/oidc && npm ci)" >&2
  exit 1
fi

WORK=$(mktemp -d /tmp/hale-bench-security.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The server's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # url [curl args...]
  local url=$1; shift
  for _ in $(seq 1 300); do
    if curl -s -o /dev/null "$@" "$url"; then return 0; fi
    sleep 0.2
  done
  echo "error: nothing answered at $url" >&2
  exit 1
}

AUDIENCE="https://hale.bench.example/fhir"
"$HALE" cert init --dir "$WORK/certs" >/dev/null
"$HALE" cert issue --dir "$WORK/certs" --name api --ip 127.0.0.1 --dns localhost >/dev/null

IDP_PORT=$(free_port)
node tests/oidc/idp.mjs --port "$IDP_PORT" --keys "$WORK/idp-key.json" --audience "$AUDIENCE" >"$WORK/idp.log" 2>&1 &
PIDS+=($!)
ISSUER="http://127.0.0.1:$IDP_PORT"
wait_for "$ISSUER/.well-known/openid-configuration"

# A fresh access token (300 s lifetime) for each bench run.
jwt() {
  curl -s -u clinician-app:secret -d grant_type=client_credentials \
    --data-urlencode 'scope=user/Patient.cruds' "$ISSUER/token" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

start_node() { # name tls(yes|no) -> sets URL, CA_ARGS
  local name=$1 tls=$2 port
  port=$(free_port)
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/hale.toml" <<EOF
[access]
legitimate_relationship = false

[[auth.tokens]]
token = "bench-static"
user = "dr.bench"
role = "clinician"
site = "QEUH"

[auth.oidc]
issuer = "$ISSUER"
audience = "$AUDIENCE"
EOF
  local args=(serve --data "$WORK/$name/data" --listen "127.0.0.1:$port" --config "$WORK/$name/hale.toml")
  if [ "$tls" = yes ]; then
    args+=(--tls-cert "$WORK/certs/api.pem" --tls-key "$WORK/certs/api-key.pem")
    URL="https://127.0.0.1:$port"
    CA_ARGS=(--ca "$WORK/certs/ca.pem")
  else
    URL="http://127.0.0.1:$port"
    CA_ARGS=()
  fi
  RUST_LOG=warn "$HALE" "${args[@]}" >"$WORK/$name/log" 2>&1 &
  PIDS+=($!)
  NODE_PID=$!
  wait_for "$URL/metadata" --cacert "$WORK/certs/ca.pem"
}

CONFIGS="plain-static plain-jwt tls-static tls-jwt"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for cfg in $CONFIGS; do
    case $cfg in tls-*) tls=yes ;; *) tls=no ;; esac
    start_node "$cfg-$round" "$tls"
    for workload in read create; do
      case $cfg in *-jwt) token=$(jwt) ;; *) token=bench-static ;; esac
      cpu0=$(cpu_ticks "$NODE_PID")
      out=$("$HALE" bench "$workload" --url "$URL" --token "$token" "${CA_ARGS[@]}" \
        --connections "$CONNECTIONS" --duration-s "$DURATION" --json)
      cpu1=$(cpu_ticks "$NODE_PID")
      echo "$out" | python3 -c '
import json, sys
text = sys.stdin.read()
doc = json.loads(text[text.index("\n{") + 1:])
w = doc["workloads"][0]
lat = w["latency"]
cpu_us = (int(sys.argv[5]) - int(sys.argv[4])) * 1e6 / int(sys.argv[6]) / max(1, w["requests"])
print("\t".join([sys.argv[1], sys.argv[2], sys.argv[3], str(w["throughput_per_s"]), str(lat["p50_ms"]), str(lat["p99_ms"]), str(w["errors_total"]), f"{cpu_us:.1f}"]))
' "$round" "$cfg" "$workload" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" >>"$RESULTS"
      tail -1 "$RESULTS"
    done
    kill "$NODE_PID"
    wait "$NODE_PID" 2>/dev/null || true
  done
done

echo
echo "median over $ROUNDS round(s), $CONNECTIONS connections, ${DURATION} s each ($(nproc) cores)"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for r, cfg, wl, rps, p50, p99, err, cpu in rows:
    by.setdefault((wl, cfg), []).append((float(rps), float(p50), float(p99), int(err), float(cpu)))
print(f"{'workload':8} {'config':13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'vs plain-static':>16} {'server CPU us/req':>18} {'vs plain-static':>16}")
for wl in ("read", "create"):
    base = statistics.median(x[0] for x in by[(wl, "plain-static")])
    base_cpu = statistics.median(x[4] for x in by[(wl, "plain-static")])
    for cfg in ("plain-static", "plain-jwt", "tls-static", "tls-jwt"):
        xs = by[(wl, cfg)]
        rps = statistics.median(x[0] for x in xs)
        p50 = statistics.median(x[1] for x in xs)
        p99 = statistics.median(x[2] for x in xs)
        err = sum(x[3] for x in xs)
        cpu = statistics.median(x[4] for x in xs)
        print(f"{wl:8} {cfg:13} {rps:9.0f} {p50:8.2f} {p99:8.2f} {err:6d} {100*(rps/base-1):+15.1f}% {cpu:18.1f} {100*(cpu/base_cpu-1):+15.1f}%")
EOF
