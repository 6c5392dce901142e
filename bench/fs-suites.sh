#!/usr/bin/env bash
# Runs the external file-system suites (pjdfstest, fsx, fio --verify) on a
# FUSE mount of a pikafs file image, plus the FUSE-vs-native sequential
# benchmark, and prints pass/fail counts. Not part of `cargo test`.
#
# Needs root, /dev/fuse, fusermount3, fio, and the two suites built once:
#   apt-get install -y fio libacl1-dev
#   cargo install pjdfstest --version 0.2.2 --root /tmp/pjdfstest-bin
#   cargo install fsx --version 0.3.2 --root /tmp/fsx-bin
# Usage: bench/fs-suites.sh [pjdfstest|fsx|fio|bench]...   (default: all)
# Env: PIKAFS_BIN (default target/release/pikafs, then debug), PJDFSTEST_BIN,
#      FSX_BIN, FSX_OPS (default 20000), FSX_SEED (default 1).
set -u

here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
PIKAFS=${PIKAFS_BIN:-}
if [ -z "$PIKAFS" ]; then
    for p in "$target/release/pikafs" "$target/debug/pikafs"; do
        [ -x "$p" ] && PIKAFS=$p && break
    done
fi
[ -x "${PIKAFS:-}" ] || { echo "no pikafs binary: build it or set PIKAFS_BIN" >&2; exit 2; }
PJD=${PJDFSTEST_BIN:-/tmp/pjdfstest-bin/bin/pjdfstest}
FSX=${FSX_BIN:-/tmp/fsx-bin/bin/fsx}
suites=${*:-pjdfstest fsx fio bench}

work=$(mktemp -d /tmp/pikafs-suites.XXXXXX)
# pjdfstest switches to other users, who must be able to reach the mount
# (mktemp makes the directory 0700).
chmod 755 "$work"
mnt=$work/mnt
mkdir -p "$mnt"
pid=

unmount() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        pid=
    fi
    timeout 10 fusermount3 -u -z "$mnt" 2>/dev/null
}
trap 'unmount; rm -rf "$work"' EXIT

mount_fresh() {
    unmount
    timeout 3600 "$PIKAFS" mount "$work/img" "$mnt" --file --mkfs 4GiB >"$work/mount.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
        mountpoint -q "$mnt" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "mount failed:" >&2
    cat "$work/mount.log" >&2
    exit 1
}

for s in $suites; do
    case $s in
    pjdfstest)
        [ -x "$PJD" ] || { echo "pjdfstest: SKIP (no $PJD)"; continue; }
        mount_fresh
        cat >"$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.001
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
TOML
        mkdir -p "$mnt/pjd"
        (cd "$mnt/pjd" && timeout 1800 "$PJD" -c "$work/pjdfstest.toml" -p "$mnt/pjd") \
            >"$work/pjdfstest.log" 2>&1
        rc=$?
        log=/tmp/pikafs-pjdfstest.log
        sed 's/\x1b\[[0-9;]*m//g' "$work/pjdfstest.log" >"$log"
        echo "pjdfstest: exit $rc; $(grep -a 'Summary' "$log")"
        echo "  per syscall (ok / FAILED / skipped):"
        for sys in $(grep -aoE '^[a-z_]+::' "$log" | sort -u | tr -d ':'); do
            ok=$(grep -acE "^$sys::[^ ]+ +ok$" "$log")
            bad=$(grep -acE "^$sys::[^ ]+ +FAILED$" "$log")
            skip=$(grep -acE "^$sys::[^ ]+ +skipped$" "$log")
            printf '    %-20s %4d %4d %4d\n' "$sys" "$ok" "$bad" "$skip"
        done
        echo "  full log: $log"
        ;;
    fsx)
        [ -x "$FSX" ] || { echo "fsx: SKIP (no $FSX)"; continue; }
        mount_fresh
        # The RW mount uses the page cache (no direct IO), so mmap reads
        # and writes stay on. Hole punching is not supported by the fs.
        cat >"$work/fsx.toml" <<'TOML'
flen = 8388608
[opsize]
max = 1048576
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
TOML
        ops=${FSX_OPS:-20000}
        seed=${FSX_SEED:-1}
        timeout 1800 "$FSX" -N "$ops" -S "$seed" -f "$work/fsx.toml" -P "$work" "$mnt/fsx.bin" \
            >"$work/fsx.log" 2>&1
        rc=$?
        cp "$work/fsx.log" /tmp/pikafs-fsx.log
        if [ $rc -eq 0 ]; then
            echo "fsx: PASS ($ops ops, seed $seed)"
        else
            echo "fsx: FAIL exit $rc (seed $seed); log /tmp/pikafs-fsx.log"
            tail -n 20 "$work/fsx.log"
        fi
        ;;
    fio)
        command -v fio >/dev/null || { echo "fio: SKIP (not installed)"; continue; }
        mount_fresh
        out=$(timeout 900 fio --name=v --filename="$mnt/fio" --size=64M --bs=4k --rw=randwrite \
            --verify=crc32c --do_verify=1 --direct=0 --output-format=terse --terse-version=3 2>&1)
        rc=$?
        errs=$(echo "$out" | tail -n 1 | cut -d';' -f5)
        if [ $rc -eq 0 ] && [ "$errs" = 0 ]; then
            echo "fio --verify=crc32c randwrite 64M: PASS"
        else
            echo "fio: FAIL exit $rc errors ${errs:-?}"
            echo "$out" | tail -n 20
        fi
        ;;
    bench)
        unmount
        timeout 900 "$PIKAFS" mount "$work/bench.img" "$mnt" --file --mkfs 2GiB --bench 256MiB \
            2>"$work/bench.log" || { echo "bench: FAIL"; cat "$work/bench.log"; }
        ;;
    *)
        echo "unknown suite $s" >&2
        exit 2
        ;;
    esac
done
