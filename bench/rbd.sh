#!/usr/bin/env bash
# Ferrite on a Ceph RBD image against librbd itself (`rbd bench` on the same image, same I/O
# size and queue depth): the ceiling an RBD LUN can reach. See README.md, "Benchmarks".
# bench/run.sh --rbd runs this after its own rows.
#
#   bench/rbd.sh [--secs N] [--reps N] [--ceph-conf FILE] [--ferrite BIN] [--port P]
#
# Without --ceph-conf it starts a throw-away single-node cluster (one monitor, one MemStore
# OSD: testkit's Ceph fixture, `cargo run -p testkit --example ceph`), which holds about 2.7
# times the bytes written in memory: the image is 512 MiB. With --ceph-conf it uses pool `rbd`
# of that cluster and creates (and removes) an image `ferrite-bench-PID` there.
#
# Workloads, each on Ferrite (an rbd: LUN, over loopback iSCSI) then on rbd bench, in turn:
#   4 KiB random read, QD32        iscsi-perf -m 32 -b 8 -r     | rbd bench read 4K rand, 32 threads
#   4 KiB strided write, QD32      qemu-img bench -w -s 4K -S 1M+4K -d 32 | rbd bench write 4K rand, 32
#   128 KiB sequential read, QD16  iscsi-perf -m 16 -b 256      | rbd bench read 128K seq, 16 threads
#   128 KiB sequential write, QD16 qemu-img bench -w -s 128K -d 16 | rbd bench write 128K seq, 16
# (qemu-img bench has no random mode; a 1 MiB + 4 KiB stride puts consecutive writes in
# different RADOS objects, as random writes are.) rbd bench runs with librbd's cache off, as
# Ferrite runs librbd. Prints medians, ferrite/rbd, and each process's CPU time per I/O.
# Installs nothing; traffic stays on 127.0.0.1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SECS=4 REPS=3 CONF="" FERRITE_BIN="" PORT=3548
while (($#)); do
    case "$1" in
    --secs) SECS="${2:?}"; shift ;;
    --reps) REPS="${2:?}"; shift ;;
    --ceph-conf) CONF="${2:?}"; shift ;;
    --ferrite) FERRITE_BIN="${2:?}"; shift ;;
    --port) PORT="${2:?}"; shift ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "rbd.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
    shift
done
for t in iscsi-perf:libiscsi-bin qemu-img:qemu-utils rbd:ceph-common; do
    command -v "${t%%:*}" >/dev/null || { echo "rbd.sh: needs ${t%%:*} (Debian ${t#*:})" >&2; exit 1; }
done
if [[ -z "$FERRITE_BIN" ]]; then
    (cd "$REPO" && cargo build --release -p ferrite -q)
    FERRITE_BIN="$REPO/target/release/ferrite"
fi

SCRATCH="$(mktemp -d /tmp/ferrite-rbd-bench.XXXXXX)"
FPID="" CEPH_PID="" CEPH_IN=""
IMAGE="ferrite-bench-$$"
SIZE_MIB=512
cleanup() {
    [[ -n "$FPID" ]] && kill "$FPID" 2>/dev/null && wait "$FPID" 2>/dev/null
    if [[ -n "$CONF" && -z "$CEPH_PID" ]]; then
        rbd -c "$CONF" rm -p rbd "$IMAGE" >/dev/null 2>&1 || true
    fi
    stop_ceph
    rm -rf "$SCRATCH"
}
trap cleanup EXIT INT TERM
log() { printf '==> %s\n' "$*" >&2; }

if [[ -z "$CONF" ]]; then
    start_ceph
    log "throw-away Ceph cluster up ($CONF)"
fi
R() { rbd -c "$CONF" "$@"; }
R create --size "${SIZE_MIB}M" --image-feature layering "rbd/$IMAGE"
# Every object written: reads of never-written objects cost librbd nothing.
R bench --io-type write --io-size 4M --io-threads 8 --io-pattern seq --io-total "${SIZE_MIB}M" \
    "rbd/$IMAGE" >/dev/null

IQN=iqn.2026-11.io.ferrite:rbd-bench
INIT=iqn.2026-11.io.ferrite:rbd-bench-init
cat >"$SCRATCH/ferrite.toml" <<EOF
[settings]
state_dir = "$SCRATCH/state"
[[target]]
name = "$IQN"
[[target.portal_group]]
tag = 1
portals = ["127.0.0.1:$PORT"]
[[target.lun]]
id = 0
backstore = "rbd:rbd/$IMAGE"
ceph = { conf = "$CONF" }
EOF
serve_ferrite
URL="iscsi://127.0.0.1:$PORT/$IQN/0"
QOPTS="driver=iscsi,transport=tcp,portal=127.0.0.1:$PORT,target=$IQN,lun=0,initiator-name=$INIT-q"

# iscsi-perf with flags $@; echoes "IOPS I/Os".
perf() {
    timeout $((SECS + 30)) iscsi-perf -i "$INIT" "$@" -t "$SECS" "$URL" 2>&1 |
        tr '\r' '\n' | sed -n 's/^iops average \([0-9][0-9]*\).*/\1/p' | tail -n 1 |
        awk -v s="$SECS" '{ printf "%s %.0f", $1, $1 * s }'
}
# qemu-img bench writes: SIZE DEPTH STEP COUNT; echoes "IOPS I/Os".
qwrite() {
    local out s
    out="$(qemu-img bench --image-opts -t none -w --pattern 0x5a -s "$1" -d "$2" -S "$3" -c "$4" "$QOPTS" 2>&1)"
    s="$(sed -n 's/^Run completed in \([0-9.][0-9.]*\) seconds.*/\1/p' <<<"$out")"
    [[ -n "$s" ]] || { echo "$out" >&2; return 1; }
    awk -v c="$4" -v s="$s" 'BEGIN { printf "%.0f %d", c / s, c }'
}
# rbd bench TYPE SIZE THREADS PATTERN TOTAL; echoes "ops/s CPU-µs/op". librbd's cache off,
# as Ferrite has it (a per-client write-back cache is incoherent across nodes), so that the
# ceiling is the same client doing the same I/O.
rbench() {
    local out
    out="$(bash -c 'rbd -c "$0" bench --rbd_cache=false --io-type "$1" --io-size "$2" \
        --io-threads "$3" --io-pattern "$4" --io-total "$5" "$6" 2>&1; times' \
        "$CONF" "$1" "$2" "$3" "$4" "$5" "rbd/$IMAGE")"
    awk '/ops\/sec:/ { for (i = 1; i <= NF; i++) { if ($i == "ops:") n = $(i + 1); if ($i == "ops/sec:") r = $(i + 1) } }
        /^[0-9]+m[0-9.]+s [0-9]+m[0-9.]+s$/ { t = $0 }
        END { split(t, a, /[ms ]+/); cpu = a[1] * 60 + a[2] + a[3] * 60 + a[4];
              printf "%.0f %.1f", r, (n > 0) ? cpu * 1e6 / n : 0 }' <<<"$out"
}
ticks() { awk '{ print $14 + $15 }' "/proc/$FPID/stat"; }
HZ="$(getconf CLK_TCK)"
# Ferrite's CPU µs per I/O since ticks $1, for $2 I/Os.
fcpu() { awk -v a="$1" -v b="$(ticks)" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0) ? (b - a) / hz * 1e6 / n : 0 }'; }

declare -A S
# One workload: KEY, the rbd bench arguments, the Ferrite command (echoes "IOPS I/Os"), the
# divisor from IOPS to the unit.
run_pair() {
    local key="$1" div="$4" c cu t0 iops n
    read -r c cu <<<"$(rbench $2)"
    S[$key.rbd]+=" $(awk -v i="$c" -v d="$div" 'BEGIN { printf "%.0f", i / d }')"
    S[$key.rbdcpu]+=" $cu"
    t0="$(ticks)"
    read -r iops n <<<"$(eval "$3")"
    S[$key.ferrite]+=" $(awk -v i="$iops" -v d="$div" 'BEGIN { printf "%.0f", i / d }')"
    S[$key.ferritecpu]+=" $(fcpu "$t0" "$n")"
}
for ((r = 1; r <= REPS; r++)); do
    log "round $r of $REPS"
    run_pair rr4k "read 4K 32 rand $((SECS * 60))M" "perf -m 32 -b 8 -r" 1
    # As many writes as rbd bench did in SECS seconds.
    w="$(rbench write 4K 32 rand $((SECS * 24))M | cut -d' ' -f1)"
    run_pair rw4k "write 4K 32 rand $((SECS * 24))M" \
        "qwrite 4096 32 $(((1 << 20) + 4096)) $((w * SECS))" 1
    run_pair r128k "read 128K 16 seq $((SECS * 400))M" "perf -m 16 -b 256" 8
    w="$(rbench write 128K 16 seq $((SECS * 150))M | cut -d' ' -f1)"
    run_pair w128k "write 128K 16 seq $((SECS * 150))M" "qwrite 131072 16 131072 $((w * SECS))" 8
done
kill -0 "$FPID" 2>/dev/null || { echo "rbd.sh: ferrite died" >&2; cat "$SCRATCH/ferrite.log" >&2; exit 1; }
threads="$(ls "/proc/$FPID/task" | wc -l)"

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "RBD: $(rbd --version | cut -d' ' -f1-3), image ${SIZE_MIB} MiB (layering), $SECS s x $REPS; ferrite threads at the end: $threads"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
printf '| %-34s | %5s | %8s | %9s | %11s | %13s | %13s |\n' workload unit ferrite "rbd bench" ferrite/rbd \
    "ferrite µs/IO" "rbd bench µs/IO"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "------------------------------------" "-------" "----------" "-----------" \
    "-------------" "---------------" "-----------------"
for wl in rr4k:IOPS:"4 KiB random read, QD32" rw4k:IOPS:"4 KiB random/strided write, QD32" \
    r128k:MiB/s:"128 KiB seq. read, QD16" w128k:MiB/s:"128 KiB seq. write, QD16"; do
    IFS=: read -r key unit name <<<"$wl"
    f="$(median <<<"${S[$key.ferrite]}")"
    c="$(median <<<"${S[$key.rbd]}")"
    printf '| %-34s | %5s | %8s | %9s | %11s | %13s | %15s |\n' "$name" "$unit" "$f" "$c" \
        "$(awk -v f="$f" -v c="$c" 'BEGIN { printf "%.2f", (c > 0) ? f / c : 0 }')" \
        "$(median <<<"${S[$key.ferritecpu]}")" "$(median <<<"${S[$key.rbdcpu]}")"
done
echo "(CPU µs/IO: the process's user + system time per I/O: Ferrite's includes its iSCSI side and"
echo " librbd's threads; rbd bench's is librbd alone. The initiator's CPU is in neither.)"
echo
for k in "${!S[@]}"; do echo "  $k:${S[$k]}"; done | sort
