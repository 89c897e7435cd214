#!/usr/bin/env bash
# quickstart.sh [FOLDER] — the whole product on this machine in one command: installs what is
# missing (npm packages, Ceph RGW from Debian's packages), starts the local S3, a controller and
# an agent protecting FOLDER (default: ./demo-data, created with a few files), adds the target
# and a policy, runs a first backup and shows `hosts` and `snapshots`.
# State lives in .bulwark/ (controller and agent data dirs, logs, pids); `scripts/quickstart.sh stop`
# stops the controller, the agent and the local S3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=$ROOT/.bulwark
B="node $ROOT/bin/bulwark.js"

if [ "${1:-}" = stop ]; then
  for p in agent controller; do [ -f "$STATE/$p.pid" ] && kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true; rm -f "$STATE/$p.pid"; done
  bash scripts/s3-local.sh down
  exit 0
fi

FOLDER=$(realpath -m "${1:-$ROOT/demo-data}")
mkdir -p "$STATE"
[ -d node_modules ] || npm ci --no-audit --no-fund
eval "$(bash scripts/s3-local.sh up)"
if [ ! -d "$FOLDER" ]; then
  mkdir -p "$FOLDER/docs"
  echo "hello from Bulwark" > "$FOLDER/hello.txt"
  head -c 2000000 /dev/urandom > "$FOLDER/docs/random.bin"
fi

export BULWARK_ADMIN=$STATE/controller/admin.json
if [ ! -f "$STATE/controller.pid" ] || ! kill -0 "$(cat "$STATE/controller.pid")" 2>/dev/null; then
  $B controller start --data-dir "$STATE/controller" --listen 127.0.0.1:7443 > "$STATE/controller.log" 2>&1 &
  echo $! > "$STATE/controller.pid"
  for _ in $(seq 1 50); do [ -f "$BULWARK_ADMIN" ] && $B target list >/dev/null 2>&1 && break; sleep 0.2; done
fi

npx tsx scripts/make-bucket.ts bulwark-demo
[ -f "$STATE/recovery-passphrase" ] || (head -c 24 /dev/urandom | base64 > "$STATE/recovery-passphrase"; chmod 600 "$STATE/recovery-passphrase")
$B target list --json | grep -q '"name": "local"' || \
  $B target add local --endpoint "$BULWARK_S3_ENDPOINT" --bucket bulwark-demo \
    --agent-key "$BULWARK_S3_ACCESS_KEY" --agent-secret "$BULWARK_S3_SECRET_KEY" --passphrase-file "$STATE/recovery-passphrase"
$B policy list --json | grep -q '"name": "demo"' || \
  $B policy create demo --target local --path "$FOLDER" --schedule "every 1h" --retention 7d

if [ ! -f "$STATE/agent.pid" ] || ! kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null; then
  TOKEN=""
  [ -f "$STATE/agent/identity.json" ] || TOKEN=$($B token create --json | node -e 'process.stdin.on("data",d=>process.stdout.write(JSON.parse(d).token))')
  $B agent start --data-dir "$STATE/agent" ${TOKEN:+--token "$TOKEN"} > "$STATE/agent.log" 2>&1 &
  echo $! > "$STATE/agent.pid"
fi
HOST=""
for _ in $(seq 1 100); do
  HOST=$($B hosts --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const h=JSON.parse(s).find(h=>h.status==="online");process.stdout.write(h?h.hostId:"")})')
  [ -n "$HOST" ] && break
  sleep 0.2
done
[ -n "$HOST" ] || { echo "the agent did not connect; see $STATE/agent.log" >&2; exit 1; }
$B backup "$HOST" --wait
echo; $B hosts
echo; $B snapshots
echo
echo "Running: controller (log $STATE/controller.log), agent $HOST (log $STATE/agent.log), S3 at $BULWARK_S3_ENDPOINT."
echo "Try: export BULWARK_ADMIN=$BULWARK_ADMIN; bin/bulwark.js ls $HOST <snapshot> $FOLDER; scripts/quickstart.sh stop"
