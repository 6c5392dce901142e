#!/usr/bin/env bash
# bench/proxy.sh: redis-benchmark directly against the RW kv node and through
# `pikafs proxy`, in the same run, plus GET throughput through the proxy with
# 1, 2 and 3 RO nodes. Everything runs on this machine (loopback): the kv
# nodes, the proxy and redis-benchmark share the same cores, so the figures
# are CPU-bound and only comparable within one run.
#
# Usage: bench/proxy.sh            (N=200000 C=50 P=16 by default)
#        N=50000 bench/proxy.sh    (quicker)
#        BIN=/tmp/pikafs.old bench/proxy.sh   (another binary, no build)
set -euo pipefail

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pikafs-target}
N=${N:-200000}
C=${C:-50}
P=${P:-16}
# Below the kernel's ephemeral range (32768+), so no outgoing connection holds one of ours.
BASE=${BASE:-$((20000 + RANDOM % 12000))}
cd "$(dirname "$0")/.."

if [ -z "${BIN:-}" ]; then
    timeout 3600 cargo build --release -p pikafs >&2
    BIN=$CARGO_TARGET_DIR/release/pikafs
fi
DIR=$(mktemp -d /tmp/pikafs-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

RW=$BASE
RO1=$((BASE + 1)); RO2=$((BASE + 2)); RO3=$((BASE + 3))
PROXY=$((BASE + 10))

wait_port() {
    for _ in $(seq 1 300); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "port $1 never answered" >&2
    return 1
}

start_kv() { # role port
    "$BIN" kv --role "$1" --listen "127.0.0.1:$2" --dir "$DIR/db" --memory 256MiB \
        >"$DIR/kv-$1-$2.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    wait_port "$2"
    # A port taken by someone else's server also answers PING.
    kill -0 "$pid" 2>/dev/null || { echo "kv on port $2 did not start:" >&2; cat "$DIR/kv-$1-$2.log" >&2; exit 1; }
}

PROXY_PID=
start_proxy() { # ro ports...
    local args=(proxy --listen "127.0.0.1:$PROXY" --rw "127.0.0.1:$RW")
    local p
    for p in "$@"; do args+=(--ro "127.0.0.1:$p"); done
    "$BIN" "${args[@]}" >>"$DIR/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    wait_port "$PROXY"
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "proxy on port $PROXY did not start" >&2; exit 1; }
}
stop_proxy() {
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        redis-cli -p "$PROXY" PING >/dev/null 2>&1 || return 0
        sleep 0.05
    done
}

# requests per second of one test (set|get) against a port.
rps() { # port test
    timeout 600 redis-benchmark -p "$1" -P "$P" -c "$C" -n "$N" -r 100000 -d 128 -q -t "$2" \
        | tr '\r' '\n' | awk -F'[: ]+' '/requests per second/ {print $2}' | tail -1
}
# CPU time (ms) a process used so far: utime + stime from /proc (ticks).
cpu_ms() {
    awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }

start_kv rw "$RW"
start_kv ro "$RO1"
start_kv ro "$RO2"
start_kv ro "$RO3"

echo "# pikafs proxy benchmark: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# redis-benchmark -P $P -c $C -n $N -r 100000 -d 128 -q"
# Fill the key space so GETs hit, and let the RO nodes catch up.
rps "$RW" set >/dev/null
sleep 1

# 1. Proxy overhead: the same node (RW) directly and through a proxy with
#    no RO node (every request goes to the RW node).
start_proxy
d_set=$(rps "$RW" set);    p_set=$(rps "$PROXY" set)
d_get=$(rps "$RW" get);    p_get=$(rps "$PROXY" get)
printf "SET direct RW               %10s req/s\n" "$d_set"
printf "SET through proxy (RW only) %10s req/s  (%s of direct)\n" "$p_set" "$(ratio "$p_set" "$d_set")"
printf "GET direct RW               %10s req/s\n" "$d_get"
printf "GET through proxy (RW only) %10s req/s  (%s of direct)\n" "$p_get" "$(ratio "$p_get" "$d_get")"
stop_proxy

# 2. Reads spread over RO nodes.
ro_get1=$(rps "$RO1" get)
printf "GET direct RO               %10s req/s\n" "$ro_get1"
for n in 1 2 3; do
    case $n in
        1) start_proxy "$RO1" ;;
        2) start_proxy "$RO1" "$RO2" ;;
        3) start_proxy "$RO1" "$RO2" "$RO3" ;;
    esac
    c0=$(cpu_ms "$PROXY_PID")
    g=$(rps "$PROXY" get)
    c1=$(cpu_ms "$PROXY_PID")
    printf "GET through proxy, %d RO     %10s req/s  (%s of direct RO; proxy CPU %d ms per %d GETs)\n" \
        "$n" "$g" "$(ratio "$g" "$ro_get1")" "$((c1 - c0))" "$N"
    stop_proxy
done
