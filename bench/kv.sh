#!/usr/bin/env bash
# kv benchmark, one run, same machine:
#   redis-benchmark -P 16 -c 50 -d 128 -r 100000 -n $N -q -t set,get,incr,hset,lpush,sadd,zadd
# against (a) redis-server (no persistence), (b) `pikafs kv --dir` (local
# directory), (c) `pikafs kv --volume` on a `pikafs playground` volume; then
# the RO visibility lag under write load (`pikafs bench kv-lag`) on the
# volume's RW + RO pair (and the local pair for reference).
#
# Not run in CI. Needs redis-server, redis-benchmark, redis-cli and a release
# build: `cargo build --release -p pikafs`.
# Env: PIKAFS_BIN (default $CARGO_TARGET_DIR/release/pikafs or
# target/release/pikafs), LAG_BIN (the binary whose `bench kv-lag` measures,
# default PIKAFS_BIN: to compare two kv builds with one probe), N (requests per test, 200000), BASE_PORT
# (random by default), LAG_DURATION (10s), LAG_WRITERS (4), KEEP=1 keeps
# the work dir.
set -euo pipefail

BIN=${PIKAFS_BIN:-${CARGO_TARGET_DIR:-target}/release/pikafs}
LAG_BIN=${LAG_BIN:-$BIN}
N=${N:-200000}
TESTS=set,get,incr,hset,lpush,sadd,zadd
# Below the kernel's ephemeral range (32768+), so no outgoing connection holds one of ours.
BASE=${BASE_PORT:-$((20000 + RANDOM % 12000))}
LAG_DURATION=${LAG_DURATION:-10s}
LAG_WRITERS=${LAG_WRITERS:-4}
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "kv.sh: $tool not found (apt-get install -y redis-server)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "kv.sh: $BIN not found; cargo build --release -p pikafs" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pikafs-kvbench.XXXXXX)
PIDS=()
cleanup() {
    # Only what this script started, by PID; the playground stops its own
    # children. Newest first, so kv nodes stop while the playground's ctrl
    # is still up; SIGKILL after 10 s.
    local i p
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p=${PIDS[i]}
        kill "$p" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

REDIS_PORT=$BASE
LOCAL_RW=$((BASE + 1))
LOCAL_RO=$((BASE + 2))
VOL_RW=$((BASE + 3))
VOL_RO=$((BASE + 4))
PG_BASE=$((BASE + 10))   # ctrl; chunkservers at +100.., metrics +1/+200..

wait_port() { # port what
    local deadline=$((SECONDS + 120))
    until [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; do
        [ $SECONDS -lt $deadline ] || { echo "kv.sh: $2 on port $1 did not come up" >&2; exit 1; }
        sleep 0.2
    done
}

# bench NAME PORT [PID]: redis-benchmark; results in $WORK/NAME.res as
# "TEST rps p50"; with PID, the peak RSS (KiB) of that process in NAME.rss.
bench() {
    local name=$1 port=$2 pid=${3:-}
    local sampler=
    if [ -n "$pid" ]; then
        ( peak=0; while kill -0 "$pid" 2>/dev/null; do
              r=$(ps -o rss= -p "$pid" | tr -d ' '); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
              echo "$peak" > "$WORK/$name.rss"; sleep 0.5
          done ) &
        sampler=$!
    fi
    redis-cli -p "$port" flushall >/dev/null
    redis-benchmark -p "$port" -P 16 -c 50 -d 128 -r 100000 -n "$N" -q -t "$TESTS" \
        | tr '\r' '\n' | grep 'requests per second' \
        | sed -E 's/^([A-Z]+)[^:]*: ([0-9.]+) requests per second(, p50=([0-9.]+) msec)?.*/\1 \2 \4/' \
        > "$WORK/$name.res"
    [ -n "$sampler" ] && { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
    echo "== $name (port $port)"; cat "$WORK/$name.res"
}

echo "kv.sh: $(date -u '+%F %T UTC'), $(nproc) CPUs, N=$N, binary $BIN"

# (a) redis-server, no persistence.
redis-server --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" --daemonize no &
PIDS+=($!)
wait_port "$REDIS_PORT" redis-server
bench redis "$REDIS_PORT"

# (b) pikafs kv on a local directory (default durability: appendfsync always).
"$BIN" kv --role rw --dir "$WORK/localdb" --listen "127.0.0.1:$LOCAL_RW" >"$WORK/local-rw.log" 2>&1 &
LOCAL_RW_PID=$!
PIDS+=($LOCAL_RW_PID)
wait_port "$LOCAL_RW" "pikafs kv --dir"
bench local "$LOCAL_RW" "$LOCAL_RW_PID"

# (c) pikafs kv on a playground volume (3 chunkservers, 3 replicas).
"$BIN" playground --dir "$WORK/pg" --base-port "$PG_BASE" --no-kv >"$WORK/playground.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 180))
until grep -q "playground is up" "$WORK/playground.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "kv.sh: playground did not come up" >&2; tail -20 "$WORK/playground.log" >&2; exit 1; }
    sleep 0.5
done
CTRL=$(sed -n 's/.*playground is up: ctrl at \([^,]*\),.*/\1/p' "$WORK/playground.log" | head -1)
echo "playground up, ctrl $CTRL"
"$BIN" --ctrl "$CTRL" kv --role rw --volume vol0 --listen "127.0.0.1:$VOL_RW" \
    --local-dir "$WORK/vol-rw" >"$WORK/vol-rw.log" 2>&1 &
VOL_RW_PID=$!
PIDS+=($VOL_RW_PID)
wait_port "$VOL_RW" "pikafs kv --volume (rw)"
bench volume "$VOL_RW" "$VOL_RW_PID"

echo
echo "| test | redis-server | kv local dir | kv on volume | volume / redis | volume / local |"
echo "|---|---|---|---|---|---|"
while read -r t r _; do
    l=$(awk -v t="$t" '$1==t {print $2}' "$WORK/local.res")
    v=$(awk -v t="$t" '$1==t {print $2}' "$WORK/volume.res")
    awk -v t="$t" -v r="$r" -v l="$l" -v v="$v" 'BEGIN {
        printf "| %s | %.0f | %.0f | %.0f | %.0f%% | %.0f%% |\n", t, r, l, v, 100*v/r, 100*v/l }'
done < "$WORK/redis.res"
for t in SET GET; do
    r=$(awk -v t="$t" '$1==t {print $2}' "$WORK/redis.res")
    l=$(awk -v t="$t" '$1==t {print $2}' "$WORK/local.res")
    v=$(awk -v t="$t" '$1==t {print $2}' "$WORK/volume.res")
    awk -v t="$t" -v r="$r" -v l="$l" -v v="$v" 'BEGIN {
        printf "target %s: volume/redis %.0f%% (goal >= 40%%: %s), volume/local %.0f%% (goal >= 70%%: %s)\n",
            t, 100*v/r, (v >= 0.4*r ? "PASS" : "MISS"), 100*v/l, (v >= 0.7*l ? "PASS" : "MISS") }'
done
echo "RW RSS peak under load: local $(( $(cat "$WORK/local.rss") / 1024 )) MiB, volume $(( $(cat "$WORK/volume.rss") / 1024 )) MiB"

# RO visibility lag under write load.
VOL_RO_METRICS=$((BASE + 5))
"$BIN" --ctrl "$CTRL" kv --role ro --volume vol0 --listen "127.0.0.1:$VOL_RO" \
    --local-dir "$WORK/vol-ro" --metrics "127.0.0.1:$VOL_RO_METRICS" >"$WORK/vol-ro.log" 2>&1 &
PIDS+=($!)
wait_port "$VOL_RO" "pikafs kv --volume (ro)"
echo
echo "== RO lag, volume RW + RO: $LAG_BIN bench kv-lag --rw 127.0.0.1:$VOL_RW --ro 127.0.0.1:$VOL_RO --duration $LAG_DURATION --writers $LAG_WRITERS"
"$LAG_BIN" bench kv-lag --rw "127.0.0.1:$VOL_RW" --ro "127.0.0.1:$VOL_RO" --duration "$LAG_DURATION" --writers "$LAG_WRITERS"
# Where the lag goes: one catch-up (try_catch_up_with_primary through the fs).
if command -v curl >/dev/null; then
    curl -s "127.0.0.1:$VOL_RO_METRICS/metrics" | awk '
        /^pikafs_kv_catch_up_duration_seconds_sum/ {s=$2} /^pikafs_kv_catch_up_duration_seconds_count/ {n=$2}
        END { if (n > 0) printf "  RO catch-ups: %d, mean %.2f ms each (pikafs_kv_catch_up_duration_seconds)\n", n, 1000*s/n }'
fi

"$BIN" kv --role ro --dir "$WORK/localdb" --secondary-dir "$WORK/local-ro" --listen "127.0.0.1:$LOCAL_RO" >"$WORK/local-ro.log" 2>&1 &
PIDS+=($!)
wait_port "$LOCAL_RO" "pikafs kv --dir (ro)"
echo
echo "== RO lag, local dir RW + RO (50 ms catch-up timer, no fs notification): $LAG_BIN bench kv-lag --rw 127.0.0.1:$LOCAL_RW --ro 127.0.0.1:$LOCAL_RO --duration $LAG_DURATION --writers $LAG_WRITERS"
"$LAG_BIN" bench kv-lag --rw "127.0.0.1:$LOCAL_RW" --ro "127.0.0.1:$LOCAL_RO" --duration "$LAG_DURATION" --writers "$LAG_WRITERS"
