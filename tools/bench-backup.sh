#!/usr/bin/env bash
# Backup figures of one node: base backup and restore rates (MB/s of store),
# verification time, and the log archive's lag under a create load.
#
#   tools/bench-backup.sh [--hale target/release/hale] [--patients 5000] [--load-s 20]
#
# Starts `hale serve --demo` with a [backup] section in a scratch directory,
# waits for the demo board, then: `hale backup` (online, into a second
# directory), `hale restore` of it, `hale backup verify`, and `hale bench
# create` for --load-s seconds while /ops/status is polled for the archive's
# lag. Prints one line per figure. Compare figures within one run: the
# machine is shared.
set -euo pipefail
HALE=target/release/hale
PATIENTS=5000
LOAD_S=20
while [ $# -gt 0 ]; do
  case "$1" in
    --hale) HALE=$2; shift 2 ;;
    --patients) PATIENTS=$2; shift 2 ;;
    --load-s) LOAD_S=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
HALE=$(realpath "$HALE")
W=$(mktemp -d /tmp/hale-bench-backup.XXXXXX)
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT
PORT=$((20000 + RANDOM % 20000))
PUB=$("$HALE" backup keygen --out "$W/key.txt" 2>/dev/null)
cat > "$W/hale.toml" <<EOF
listen = "127.0.0.1:$PORT"
data = '$W/data'
[demo]
enabled = true
patients = $PATIENTS
[backup]
dir = '$W/archive'
recipients = ["$PUB"]
every_s = 0
archive_interval_ms = 1000
EOF
HALE_LOG=warn "$HALE" serve --config "$W/hale.toml" > "$W/serve.out" 2> "$W/serve.err" &
PID=$!
for _ in $(seq 1 1800); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 1
done
ADMIN=$(grep -o 'token=[^ ]*' "$W/serve.err" "$W/serve.out" | grep -m1 admin | sed 's/.*token=//' || true)
[ -n "$ADMIN" ] || ADMIN=demo-admin
store_mb=$(du -sm "$W/data/hale.db" | cut -f1)
echo "store: ${store_mb} MB (hale.db) with $PATIENTS demo patients"

"$HALE" backup --to "$W/online" --data "$W/data" --recipient "$PUB" > /dev/null 2> "$W/backup.err"
echo "backup (online, node idle): $(tail -1 "$W/backup.err")"
"$HALE" restore --from "$W/online" --data "$W/restored" --identity "$W/key.txt" > /dev/null 2> "$W/restore.err"
echo "restore: $(grep -m1 '^restored' "$W/restore.err")"
"$HALE" backup verify --from "$W/online" --identity "$W/key.txt" --scratch "$W" > /dev/null 2> "$W/verify.err"
echo "verify: $(tail -1 "$W/verify.err")"

# Archive lag under a create load: poll /ops/status every 200 ms.
"$HALE" bench create --url "http://127.0.0.1:$PORT" --token "$ADMIN" --duration-s "$LOAD_S" --warmup-s 1 > "$W/bench.out" 2>&1 &
BPID=$!
max=0; sum=0; n=0
while kill -0 $BPID 2>/dev/null; do
  lag=$(curl -fs -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$PORT/ops/status" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["backup"].get("archiveLagEntries") or 0)' 2>/dev/null || echo 0)
  [ "$lag" -gt "$max" ] && max=$lag
  sum=$((sum + lag)); n=$((n + 1))
  sleep 0.2
done
wait $BPID || true
echo "create load: $(grep -m1 -i 'create' "$W/bench.out" | tr -s ' ')"
echo "archive lag under that load: max ${max} entries, mean $((sum / (n > 0 ? n : 1))) entries over $n samples (archive_interval_ms = 1000)"
# During a base backup under the same load.
"$HALE" bench create --url "http://127.0.0.1:$PORT" --token "$ADMIN" --duration-s 8 --warmup-s 0 > "$W/bench2.out" 2>&1 &
BPID=$!
sleep 1
"$HALE" backup --to "$W/online2" --data "$W/data" --recipient "$PUB" > /dev/null 2> "$W/backup2.err"
wait $BPID || true
echo "backup (online, under create load): $(tail -1 "$W/backup2.err")"
du -sh "$W/archive" | sed 's/^/archive directory: /'
