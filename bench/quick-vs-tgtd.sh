#!/usr/bin/env bash
# Quick side-by-side: iscsi-perf 4 KiB random reads, 32 in flight, against Ferrite and tgtd,
# each serving a file LUN of the same size on loopback. Prints both IOPS figures and the ratio.
# Usage: bench/quick-vs-tgtd.sh [SECONDS] [FERRITE_BINARY]
# Needs: libiscsi-bin (iscsi-perf), tgt (tgtd, tgtadm). Runs as root (tgtd).
set -euo pipefail
secs=${1:-10}
ferrite=${2:-target/release/ferrite}
dir=$(mktemp -d)
fport=3270
tport=3271
cleanup() {
  [ -n "${fpid:-}" ] && kill "$fpid" 2>/dev/null || true
  # tgtd ignores SIGTERM while it has targets.
  [ -n "${tpid:-}" ] && kill -9 "$tpid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

for f in ferrite tgt; do
  # A written (not sparse) 1 GiB file, so both read real data from the page cache.
  dd if=/dev/urandom of="$dir/$f.img" bs=1M count=1024 status=none
done

"$ferrite" serve --portal 127.0.0.1:$fport --target iqn.2026-11.io.ferrite:bench \
  --lun "file:$dir/ferrite.img" --log warn &
fpid=$!
tgtd -f --iscsi portal=127.0.0.1:$tport --control-port 9988 >/dev/null 2>&1 &
tpid=$!
sleep 1
tgtadm -C 9988 --lld iscsi --mode target --op new --tid 1 --targetname iqn.2026-11.io.ferrite:tgt
tgtadm -C 9988 --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$dir/tgt.img"
tgtadm -C 9988 --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL

perf() { # URL -> IOPS
  timeout $((secs + 20)) iscsi-perf -m 32 -b 8 -r -t "$secs" "$1" 2>&1 | tr '\r' '\n' |
    grep -o 'iops average [0-9]*' | tail -n 1 | awk '{print $3+0}'
}
f1=$(perf "iscsi://127.0.0.1:$fport/iqn.2026-11.io.ferrite:bench/0")
t1=$(perf "iscsi://127.0.0.1:$tport/iqn.2026-11.io.ferrite:tgt/1")
f2=$(perf "iscsi://127.0.0.1:$fport/iqn.2026-11.io.ferrite:bench/0")
t2=$(perf "iscsi://127.0.0.1:$tport/iqn.2026-11.io.ferrite:tgt/1")
echo "4KiB random read, 32 in flight, ${secs}s per run, alternating:"
echo "  ferrite IOPS: $f1 $f2"
echo "  tgtd    IOPS: $t1 $t2"
awk -v a="$f1" -v b="$f2" -v c="$t1" -v d="$t2" 'BEGIN { if (c+d > 0) printf "  ferrite/tgtd: %.2f\n", (a+b)/(c+d) }'
