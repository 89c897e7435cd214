#!/usr/bin/env bash
# s3-local.sh up|down|env|status — a throwaway, single-node Ceph RADOS Gateway on 127.0.0.1 with
# S3 Object Lock, for tests, benchmarks and trying Bulwark out. Debian packages only; no systemd.
#
#   up      install the packages when missing, start mon + OSD + radosgw, create an S3 user,
#           wait until a signed request answers, write the env file. Idempotent: when the
#           cluster in DIR already answers, it only prints the env.
#   down    stop the daemons by pid (radosgw, then OSD, then mon) and remove the cluster files.
#   env     print `export …` lines for the endpoint, keys and DIR (eval "$(scripts/s3-local.sh env)").
#   status  exit 0 when the gateway in DIR answers a signed request.
#
# Knobs (environment): BULWARK_S3_DIR (default .s3-local in the repo), RGW_PORT=7480,
# MON_PORT_V2=3300, MON_PORT_V1=6789, OSD_STORE=memstore|bluestore, OSD_SIZE_GB=8,
# S3_ACCESS_KEY, S3_SECRET_KEY.
#
# Why each odd-looking config line is there is written next to it; the pitfalls behind them are
# in docs/s3-local.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${BULWARK_S3_DIR:-$ROOT/.s3-local}
RGW_PORT=${RGW_PORT:-7480}
MON_PORT_V2=${MON_PORT_V2:-3300}
MON_PORT_V1=${MON_PORT_V1:-6789}
OSD_STORE=${OSD_STORE:-memstore}
OSD_SIZE_GB=${OSD_SIZE_GB:-8}
AK=${S3_ACCESS_KEY:-BULWARKLOCALACCESS01}
SK=${S3_SECRET_KEY:-bulwarkLocalSecretKey0000000000000000000}
CONF="$DIR/ceph.conf"
T0=$(date +%s%N)

log() { printf '[s3-local %5dms] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))" "$*" >&2; }
die() { echo "s3-local: $*" >&2; exit 1; }

print_env() {
  cat <<EOF
export BULWARK_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
export BULWARK_S3_ACCESS_KEY=$AK
export BULWARK_S3_SECRET_KEY=$SK
export BULWARK_S3_REGION=us-east-1
export BULWARK_S3_DIR=$DIR
EOF
}

signed_list_code() {
  # curl 7.88 does not add x-amz-content-sha256 itself; RGW then answers SignatureDoesNotMatch.
  curl -s -o /dev/null -m 5 -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "http://127.0.0.1:$RGW_PORT/" 2>/dev/null || true
}

healthy() { [ -f "$CONF" ] && [ "$(signed_list_code)" = 200 ]; }

install_packages() {
  local missing=()
  for bin in radosgw ceph-mon ceph-osd ceph monmaptool ceph-authtool radosgw-admin uuidgen curl; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install as root: apt-get install radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl"
  log "installing Ceph packages (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # postinst complains about systemd on machines without it; harmless, no service is started.
  apt-get install -y -qq --no-install-recommends radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl >/dev/null 2>&1 \
    || apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl
  log "packages installed"
}

stop_group() {
  # SIGTERM (or $SIG) to every daemon named, wait up to 15 s, then SIGKILL.
  local sig=$1; shift
  local pids=() f pf pid
  for f in "$@"; do
    pf="$DIR/run/$f.pid"; [ -f "$pf" ] || continue
    pid=$(cat "$pf")
    kill -0 "$pid" 2>/dev/null || continue
    # guard against pid reuse: the process must be a daemon of this cluster
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$CONF" || continue
    kill -"$sig" "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for _ in $(seq 1 150); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

down() {
  if [ -d "$DIR/run" ]; then
    # radosgw first (it hangs in shutdown when the OSD is gone); its clean stop takes ~7 s and
    # nothing of value is lost in a throwaway cluster, so it gets SIGKILL.
    stop_group KILL ceph-client.rgw.a
    stop_group TERM ceph-osd.0
    stop_group TERM ceph-mon.a
  fi
  rm -rf "$DIR"/{ceph.conf,keyring,monmap,s3.env,mon,osd,run,log,rgw,crash}
  log "stopped; cluster files removed from $DIR"
}

up() {
  if healthy; then log "already running at http://127.0.0.1:$RGW_PORT"; print_env; return 0; fi
  install_packages
  # a cluster dir whose gateway does not answer is a leftover (crash, reboot): start afresh
  [ -f "$CONF" ] && { log "removing a stale cluster in $DIR"; down; }
  for p in "$RGW_PORT" "$MON_PORT_V2" "$MON_PORT_V1"; do
    # ss (iproute2) may be missing on a minimal machine; bash's /dev/tcp tells the same
    if (command -v ss >/dev/null && ss -Hltn "sport = :$p" 2>/dev/null | grep -q .) || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p is already in use (another cluster? run 'scripts/s3-local.sh down', or set RGW_PORT/MON_PORT_V1/MON_PORT_V2)"
    fi
  done
  mkdir -p "$DIR"/{mon/ceph-a,osd/ceph-0,run,log,rgw,crash}
  local fsid store_conf
  fsid=$(uuidgen)
  case "$OSD_STORE" in
    memstore) store_conf="memstore device bytes = $((OSD_SIZE_GB * 1024 * 1024 * 1024))" ;;
    bluestore) truncate -s "${OSD_SIZE_GB}G" "$DIR/osd/ceph-0.block"
      store_conf="bluestore block path = $DIR/osd/ceph-0.block
bluestore block create = false
bluestore fsck on mount = false
bdev enable discard = false" ;;
    *) die "unknown OSD_STORE=$OSD_STORE (memstore or bluestore)" ;;
  esac
  cat > "$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $DIR/run
admin socket = $DIR/run/\$cluster-\$name.asok
pid file = $DIR/run/\$cluster-\$name.pid
log file = $DIR/log/\$cluster-\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $DIR/log/\$cluster.log
crash dir = $DIR/crash
keyring = $DIR/keyring
# one OSD, no replication, few placement groups
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 500
mon data avail warn = 1
mon data avail crit = 0
# the single mon commits each map change after 1 s by default and every pool radosgw creates
# waits for that: 0.1 s cuts a cold start from ~15 s to ~3 s
paxos propose interval = 0.1

[mon]
mon data = $DIR/mon/\$cluster-\$id

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = $OSD_STORE
$store_conf
osd op num threads per shard = 1
osd op num shards = 2

[client]
# radosgw defaults to ms_mon_client_mode=secure, which cannot work with auth=none:
# without this line it hangs 300 s in "get_initial_auth_request returned -13".
ms mon client mode = crc
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw thread pool size = 64
rgw dns name = localhost
rgw enable usage log = false
EOF
  local ceph="ceph -c $CONF --connect-timeout 20"
  # --mkfs wants a keyring even with auth none
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
  ceph-mon -c "$CONF" -i a
  log "mon started"
  local uuid id
  uuid=$(uuidgen)
  id=$($ceph osd new "$uuid")
  [ "$id" = 0 ] || die "unexpected osd id $id"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" 2>"$DIR/log/osd-mkfs.err" || { cat "$DIR/log/osd-mkfs.err" >&2; die "osd mkfs failed"; }
  ceph-osd -c "$CONF" -i 0 2>"$DIR/log/osd-start.err" || { cat "$DIR/log/osd-start.err" >&2; die "osd start failed"; }
  for _ in $(seq 1 120); do $ceph osd dump 2>/dev/null | grep -q '^osd.0 up' && break; sleep 0.25; done
  $ceph osd dump | grep -q '^osd.0 up' || die "osd.0 did not come up; see $DIR/log"
  log "osd up"
  radosgw -c "$CONF" -n client.rgw.a --rgw-data "$DIR/rgw"
  local code=000
  for _ in $(seq 1 240); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$RGW_PORT/" || true)
    [ "$code" = 200 ] && break
    sleep 0.25
  done
  [ "$code" = 200 ] || die "radosgw did not answer on :$RGW_PORT (last HTTP $code); see $DIR/log"
  log "radosgw answers"
  radosgw-admin -c "$CONF" -n client.admin user create --uid=bulwark --display-name="bulwark test user" \
    --access-key="$AK" --secret-key="$SK" >/dev/null
  for _ in $(seq 1 80); do code=$(signed_list_code); [ "$code" = 200 ] && break; sleep 0.25; done
  [ "$code" = 200 ] || die "signed ListBuckets failed (HTTP $code)"
  print_env > "$DIR/s3.env"
  log "ready at http://127.0.0.1:$RGW_PORT (env: $DIR/s3.env)"
  print_env
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) print_env ;;
  status) healthy && { echo "running at http://127.0.0.1:$RGW_PORT"; exit 0; } || { echo "not running"; exit 1; } ;;
  *) echo "usage: scripts/s3-local.sh up|down|env|status" >&2; exit 2 ;;
esac
