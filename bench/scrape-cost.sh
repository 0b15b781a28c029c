#!/usr/bin/env bash
# What a Prometheus scrape costs while the target serves: 4 KiB random reads at QD32
# (iscsi-perf -m 32 -b 8 -r) on a RAM LUN, alternating runs without and with a scraper that
# fetches /metrics every INTERVAL seconds. Reports IOPS and the daemon's CPU seconds per
# million I/Os (from /proc/PID/stat) for each, the median of REPS runs.
#
#   bench/scrape-cost.sh [--ferrite BIN] [--secs N] [--reps N] [--interval S]
#
# Traffic stays on 127.0.0.1 (ports 3550 and 3551). Needs iscsi-perf (libiscsi-bin) and curl.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=""
SECS=8
REPS=3
INTERVAL=1
while (($#)); do
    case "$1" in
        --ferrite) BIN=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --interval) INTERVAL=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for t in iscsi-perf curl; do
    command -v "$t" >/dev/null || { echo "scrape-cost: $t missing" >&2; exit 1; }
done
if [[ -z $BIN ]]; then
    (cd "$REPO" && cargo build --release -q -p ferrite)
    BIN=$REPO/target/release/ferrite
fi
PORT=3550
MPORT=3551
URL=iscsi://127.0.0.1:$PORT/iqn.2026-11.io.ferrite:demo/0
LOG=$(mktemp)
"$BIN" serve --portal 127.0.0.1:$PORT --lun ram:1G --admin-socket none \
    --metrics 127.0.0.1:$MPORT 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null && break
    sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
hz=$(getconf CLK_TCK)

# One run; prints "IOPS CPU-s/MIO".
run() {
    local scrape=$1 spid="" t0 t1 out iops
    if [[ $scrape == yes ]]; then
        (while :; do curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null; sleep "$INTERVAL"; done) &
        spid=$!
    fi
    t0=$(ticks)
    out=$(timeout $((SECS + 30)) iscsi-perf -i iqn.2026-11.io.ferrite:scrape-cost \
        -m 32 -b 8 -r -t "$SECS" "$URL" 2>&1 || true)
    t1=$(ticks)
    [[ -n $spid ]] && { kill "$spid"; wait "$spid" 2>/dev/null || true; }
    iops=$(grep -o 'iops average [0-9]*' <<<"$out" | tail -n1 | awk '{print $3}')
    [[ -z $iops ]] && { echo "iscsi-perf failed: $out" >&2; exit 1; }
    awk -v i="$iops" -v t=$((t1 - t0)) -v hz="$hz" -v s="$SECS" \
        'BEGIN { printf "%d %.2f\n", i, (t / hz) / (i * s / 1e6) }'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -a no_iops no_cpu yes_iops yes_cpu
for r in $(seq "$REPS"); do
    read -r i c < <(run no); no_iops+=("$i"); no_cpu+=("$c")
    read -r i c < <(run yes); yes_iops+=("$i"); yes_cpu+=("$c")
    echo "rep $r: no scrape ${no_iops[-1]} IOPS ${no_cpu[-1]} CPU s/MIO; scrape every ${INTERVAL}s ${yes_iops[-1]} IOPS ${yes_cpu[-1]} CPU s/MIO"
done
bytes=$(curl -sf "http://127.0.0.1:$MPORT/metrics" | wc -c)
echo "| scraping            | IOPS (median) | CPU s/MIO (median) |"
echo "|---------------------|---------------|--------------------|"
echo "| none                | $(printf '%s\n' "${no_iops[@]}" | median) | $(printf '%s\n' "${no_cpu[@]}" | median) |"
echo "| every ${INTERVAL} s           | $(printf '%s\n' "${yes_iops[@]}" | median) | $(printf '%s\n' "${yes_cpu[@]}" | median) |"
echo "exposition: $bytes bytes"
