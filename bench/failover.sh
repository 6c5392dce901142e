#!/usr/bin/env bash
# kv failover time, same machine: on a `pikafs playground --no-kv` cluster
# (3 chunkservers, 3 replicas) run one RW and two RO `pikafs kv --volume`
# nodes and a client that SETs unique keys, one at a time, to whichever
# node answers OK. ROUNDS times: SIGKILL the RW node, measure the write
# unavailability (last OK before the kill -> first OK after it, so it
# includes lease lapse, fence, promotion, RocksDB WAL replay and the
# client finding the new writer), restart the killed node as RO, wait.
# Prints each round, then median and max. At the end every acknowledged
# key is read back from the last writer (a lost one fails the run).
#
# Not run in CI. Needs redis-cli and a release build:
#   cargo build --release -p pikafs
# Env: PIKAFS_BIN (default $CARGO_TARGET_DIR/release/pikafs or
# target/release/pikafs), ROUNDS (5), BASE_PORT (random by default),
# KV_LEASE (ctrl's --kv-lease is the playground's default, 2s), KEEP=1
# keeps the work dir.
set -euo pipefail

BIN=${PIKAFS_BIN:-${CARGO_TARGET_DIR:-target}/release/pikafs}
ROUNDS=${ROUNDS:-5}
# Below the kernel's ephemeral range (32768+), so no outgoing connection holds one of ours.
BASE=${BASE_PORT:-$((20000 + RANDOM % 12000))}
command -v redis-cli >/dev/null || { echo "failover.sh: redis-cli not found" >&2; exit 1; }
[ -x "$BIN" ] || { echo "failover.sh: $BIN not found; cargo build --release -p pikafs" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pikafs-failover.XXXXXX)
PIDS=()
cleanup() {
    touch "$WORK/stop"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PG_BASE=$BASE            # ctrl; chunkservers at +100.., metrics +1/+200..
KV_PORTS=($((BASE + 11)) $((BASE + 12)) $((BASE + 13)))
declare -A KV_PID

now_ns() { date +%s%N; }

wait_port() { # port what
    local deadline=$((SECONDS + 120))
    until [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; do
        [ $SECONDS -lt $deadline ] || { echo "failover.sh: $2 on port $1 did not come up" >&2; exit 1; }
        sleep 0.1
    done
}

start_kv() { # port role
    "$BIN" --ctrl "$CTRL" kv --role "$2" --volume vol0 --listen "127.0.0.1:$1" \
        --local-dir "$WORK/kv-$1" --memory 128MiB >>"$WORK/kv-$1.log" 2>&1 &
    KV_PID[$1]=$!
    PIDS+=($!)
}

# role_of PORT: rw|ro|promoting|"" as ctrl lists it.
role_of() {
    "$BIN" --ctrl "$CTRL" status --json 2>/dev/null \
        | jq -r --arg a "127.0.0.1:$1" '.kv[]?.nodes[] | select(.addr == $a) | .role' 2>/dev/null || true
}

wait_role() { # port role
    local deadline=$((SECONDS + 120))
    until [ "$(role_of "$1")" = "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "failover.sh: node $1 never became $2" >&2; tail -20 "$WORK/kv-$1.log" >&2; exit 1; }
        sleep 0.2
    done
}

echo "failover.sh: $(date -u '+%F %T UTC'), $(nproc) CPUs, $ROUNDS rounds, binary $BIN"
"$BIN" playground --dir "$WORK/pg" --base-port "$PG_BASE" --no-kv >"$WORK/playground.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 180))
until grep -q "playground is up" "$WORK/playground.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "failover.sh: playground did not come up" >&2; tail -20 "$WORK/playground.log" >&2; exit 1; }
    sleep 0.5
done
CTRL=$(sed -n 's/.*playground is up: ctrl at \([^,]*\),.*/\1/p' "$WORK/playground.log" | head -1)
echo "playground up, ctrl $CTRL"

start_kv "${KV_PORTS[0]}" rw
wait_role "${KV_PORTS[0]}" rw
start_kv "${KV_PORTS[1]}" ro
start_kv "${KV_PORTS[2]}" ro
wait_role "${KV_PORTS[1]}" ro
wait_role "${KV_PORTS[2]}" ro
echo "kv nodes up: rw ${KV_PORTS[0]}, ro ${KV_PORTS[1]} ${KV_PORTS[2]}"

# The client: one SET at a time; tries the node that last said OK first,
# then the others. Each OK is logged as "ns port key".
(
    i=0; cur=${KV_PORTS[0]}
    while [ ! -e "$WORK/stop" ]; do
        for p in "$cur" "${KV_PORTS[@]}"; do
            r=$(timeout 2 redis-cli -p "$p" set "fo:$i" "v$i" 2>/dev/null || true)
            if [ "$r" = OK ]; then
                echo "$(now_ns) $p fo:$i" >>"$WORK/acks"
                cur=$p; i=$((i + 1))
                break
            fi
        done
    done
) &
PIDS+=($!)

current_rw() { tail -1 "$WORK/acks" | awk '{print $2}'; }
# acks_after NS PORT: OKs from other nodes after NS (an OK of the killed
# node may land just after the kill: its reply was already on the way).
acks_after() { awk -v t="$1" -v p="$2" '$1 > t && $2 != p' "$WORK/acks" | wc -l; }

until [ -s "$WORK/acks" ] && [ "$(wc -l <"$WORK/acks")" -gt 200 ]; do sleep 0.1; done
RESULTS=()
for round in $(seq 1 "$ROUNDS"); do
    rw=$(current_rw)
    kill_ns=$(now_ns)
    kill -9 "${KV_PID[$rw]}"
    wait "${KV_PID[$rw]}" 2>/dev/null || true
    deadline=$((SECONDS + 60))
    until [ "$(acks_after "$kill_ns" "$rw")" -ge 20 ]; do
        [ $SECONDS -lt $deadline ] || { echo "failover.sh: no writes 60 s after the kill" >&2; exit 1; }
        sleep 0.1
    done
    # Last OK of the killed node -> first OK of another one.
    last=$(awk -v p="$rw" '$2 == p {l = $1} END {print l}' "$WORK/acks")
    first=$(awk -v t="$kill_ns" -v p="$rw" '$1 > t && $2 != p {print $1; exit}' "$WORK/acks")
    new=$(awk -v t="$kill_ns" -v p="$rw" '$1 > t && $2 != p {print $2; exit}' "$WORK/acks")
    ms=$(( (first - last) / 1000000 ))
    RESULTS+=("$ms")
    echo "round $round: killed RW $rw, $new took over, writes unavailable for $ms ms"
    start_kv "$rw" ro
    wait_role "$rw" ro
    sleep 2
done
touch "$WORK/stop"
sleep 2

# Every acknowledged key is on the last writer.
rw=$(current_rw)
lost=0
total=$(wc -l <"$WORK/acks")
awk '{print $3}' "$WORK/acks" | while read -r k; do echo "GET $k"; done \
    | redis-cli -p "$rw" >"$WORK/readback"
paste -d' ' <(awk '{print $3}' "$WORK/acks") "$WORK/readback" >"$WORK/check"
lost=$(awk '{ split($1, a, ":"); if ($2 != "v" a[2]) n++ } END { print n + 0 }' "$WORK/check")
echo "acknowledged writes: $total, lost: $lost"

sorted=($(printf '%s\n' "${RESULTS[@]}" | sort -n))
n=${#sorted[@]}
median=${sorted[$((n / 2))]}
max=${sorted[$((n - 1))]}
echo "failover unavailability over $n rounds (ms): ${RESULTS[*]}"
echo "median $median ms, max $max ms"
[ "$lost" -eq 0 ] || { echo "failover.sh: $lost acknowledged writes lost" >&2; exit 1; }
