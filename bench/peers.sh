#!/usr/bin/env bash
# surepush vs Nchan vs Pushpin, same machine, same run, interleaved rounds.
#
#   bash bench/peers.sh                       # 3 rounds, 1000/5000/9000 subscribers
#   ROUNDS=5 SUBS=1000,5000 IDLE=5000 bash bench/peers.sh
#   SKIP_INSTALL=1 SKIP_BUILD=1 bash bench/peers.sh
#   PIN=0 bash bench/peers.sh                 # unpinned: whoever gets the cores
#
# On equal terms (PIN=1, the default): every server (Nchan, the origin and Pushpin, and
# each surepush the bench starts) runs on SERVER_CPUS (default: CPU 0), the load generator
# on DRIVER_CPUS (default: the other CPUs), so no server competes with the driver or wins
# cores another server would not get.
#
# Installs Nchan (nginx-light + libnginx-mod-nchan) and Pushpin (with zurl, message_rate
# raised, a static nginx origin), all on 127.0.0.1 only, from the configs in bench/ written
# to a temp dir; builds the release binaries (CARGO_TARGET_DIR honoured, default target/);
# runs `surepush-bench compare`; writes bench/results/compare.md and the SVG plots.
# Every process started here is killed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SUBS=${SUBS:-1000,5000,9000}
IDLE=${IDLE:-1000,5000,9000}
EVENTS=${EVENTS:-100}
OUT=${OUT:-bench/results}
NOTE=${NOTE:-}
NCHAN_PORT=${NCHAN_PORT:-18081}
ORIGIN_PORT=${ORIGIN_PORT:-18082}
PUSHPIN_PORT=${PUSHPIN_PORT:-17999}
PUSHPIN_PUB_PORT=${PUSHPIN_PUB_PORT:-15561}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
PIN=${PIN:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
DRIVER_CPUS=${DRIVER_CPUS:-1-$(($(nproc) - 1))}
if [ "$PIN" = 1 ] && [ "$(nproc)" -lt 2 ]; then
    echo "PIN=1 needs at least 2 CPUs; run with PIN=0" >&2
    exit 1
fi
# runs a server on SERVER_CPUS, the load generator on DRIVER_CPUS (PIN=1)
on_server_cpus() { if [ "$PIN" = 1 ]; then taskset -c "$SERVER_CPUS" "$@"; else "$@"; fi; }
on_driver_cpus() { if [ "$PIN" = 1 ]; then taskset -c "$DRIVER_CPUS" "$@"; else "$@"; fi; }
if [ "$PIN" = 1 ]; then
    export SUREPUSH_BENCH_SERVER_CPUS="$SERVER_CPUS"
    NOTE="${NOTE:+$NOTE; }pinned: servers on CPU $SERVER_CPUS, load generator on CPU $DRIVER_CPUS"
else
    unset SUREPUSH_BENCH_SERVER_CPUS
    NOTE="${NOTE:+$NOTE; }unpinned"
fi

need_install=0
command -v nginx >/dev/null || need_install=1
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need_install=1
command -v pushpin >/dev/null || need_install=1
command -v zurl >/dev/null || need_install=1
if [ "$need_install" = 1 ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx-light libnginx-mod-nchan pushpin zurl
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --bins
fi
BIN="$TARGET_DIR/release"

WORK=$(mktemp -d /tmp/surepush-peers.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    sleep 1
    for p in "${PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

render() {
    sed -e "s#@WORK@#$WORK#g" \
        -e "s#@NCHAN_PORT@#$NCHAN_PORT#g" \
        -e "s#@ORIGIN_PORT@#$ORIGIN_PORT#g" \
        -e "s#@PUSHPIN_PORT@#$PUSHPIN_PORT#g" \
        -e "s#@PUSHPIN_PUB_PORT@#$PUSHPIN_PUB_PORT#g" \
        -e "s#@PUSHPIN_ZMQ_IN@#$((PUSHPIN_PUB_PORT + 1))#g" \
        -e "s#@PUSHPIN_ZMQ_SUB@#$((PUSHPIN_PUB_PORT + 2))#g" \
        -e "s#@PUSHPIN_CMD@#$((PUSHPIN_PUB_PORT + 3))#g" \
        "$1" > "$2"
}

mkdir -p "$WORK"/nchan-tmp "$WORK"/origin-tmp "$WORK"/pushpin-run "$WORK"/pushpin-log
render bench/nchan.conf.in "$WORK/nchan.conf"
render bench/origin.conf.in "$WORK/origin.conf"
render bench/pushpin.conf.in "$WORK/pushpin.conf"
render bench/pushpin-routes.in "$WORK/pushpin-routes"

ulimit -n 20000 2>/dev/null || true
on_server_cpus nginx -c "$WORK/nchan.conf" -p "$WORK/" >"$WORK/nchan.out" 2>&1 &
NCHAN_PID=$!
PIDS+=("$NCHAN_PID")
on_server_cpus nginx -c "$WORK/origin.conf" -p "$WORK/" >"$WORK/origin.out" 2>&1 &
PIDS+=("$!")
on_server_cpus pushpin --config "$WORK/pushpin.conf" >"$WORK/pushpin.out" 2>&1 &
PUSHPIN_PID=$!
PIDS+=("$PUSHPIN_PID")

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1; logs in $WORK" >&2
    cat "$WORK"/*.out "$WORK"/pushpin-log/* 2>/dev/null | tail -30 >&2
    return 1
}
wait_port "$NCHAN_PORT"
wait_port "$ORIGIN_PORT"
wait_port "$PUSHPIN_PORT"
wait_port "$PUSHPIN_PUB_PORT"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
echo "nchan $(nginx -v 2>&1 | sed 's/.*version: //') (1 worker), pushpin $(pushpin --version 2>/dev/null | head -1), surepush workers = the CPUs it may use; ${NOTE}"

on_driver_cpus "$BIN/surepush-bench" compare \
    --bin "$BIN/surepush" \
    --out "$OUT" \
    --rounds "$ROUNDS" \
    --subs "$SUBS" \
    --idle-conns "$IDLE" \
    --events "$EVENTS" \
    --nchan "127.0.0.1:$NCHAN_PORT" --nchan-pid "$NCHAN_PID" \
    --pushpin "127.0.0.1:$PUSHPIN_PORT" --pushpin-pub "127.0.0.1:$PUSHPIN_PUB_PORT" \
    --pushpin-pid "$PUSHPIN_PID" \
    --note "$NOTE" \
    "$@"
