#!/usr/bin/env bash
# What encryption costs: one Ferrite with the same LUN twice, plain and encrypted
# (`encryption = { key_file }`, AES-256-XTS), on RAM and on a file, measured in turn
# (plain, encrypted, plain, ...). See README.md, "Benchmarks".
#
#   bench/crypt.sh [--secs N] [--reps N] [--scratch DIR] [--ferrite BIN] [--rbd]
#
# --rbd adds the same rows on two RBD images of a throw-away single-node Ceph cluster
# (bench/lib.sh's start_ceph; about 3 GiB of memory).
#
# Workloads: 4 KiB random read QD32 and 128 KiB sequential read QD16 (iscsi-perf), 128 KiB
# sequential write QD16 (qemu-img bench over iscsi://). Prints the medians, encrypted/plain,
# and the median of each encrypted run over the plain run just before it. Installs nothing; traffic stays on 127.0.0.1:3550.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SECS=3 REPS=5 SCRATCH_PARENT=/var/tmp FERRITE_BIN="" PORT=3550 KINDS="ram file"
while (($#)); do
    case "$1" in
    --secs) SECS="${2:?}"; shift ;;
    --reps) REPS="${2:?}"; shift ;;
    --scratch) SCRATCH_PARENT="${2:?}"; shift ;;
    --ferrite) FERRITE_BIN="${2:?}"; shift ;;
    --rbd) KINDS="ram file rbd" ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "crypt.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
    shift
done
for t in iscsi-perf:libiscsi-bin qemu-img:qemu-utils; do
    command -v "${t%%:*}" >/dev/null || { echo "crypt.sh: needs ${t%%:*} (Debian ${t#*:})" >&2; exit 1; }
done
if [[ -z "$FERRITE_BIN" ]]; then
    (cd "$REPO" && cargo build --release -p ferrite -q)
    FERRITE_BIN="$REPO/target/release/ferrite"
fi

SCRATCH="$(mktemp -d "$SCRATCH_PARENT/ferrite-crypt.XXXXXX")"
FPID="" CEPH_PID=""
cleanup() {
    [[ -n "$FPID" ]] && kill "$FPID" 2>/dev/null && wait "$FPID" 2>/dev/null
    stop_ceph
    rm -rf "$SCRATCH"
}
trap cleanup EXIT INT TERM
IQN=iqn.2026-11.io.ferrite:crypt-bench
INIT=iqn.2026-11.io.ferrite:crypt-bench-init
SIZE=512M
head -c 32 /dev/urandom >"$SCRATCH/lun.key"
chmod 600 "$SCRATCH/lun.key"
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
backstore = "ram:$SIZE"
[[target.lun]]
id = 1
backstore = "ram:$SIZE"
encryption = { key_file = "$SCRATCH/lun.key" }
[[target.lun]]
id = 2
backstore = "file:$SCRATCH/plain.img:$SIZE"
[[target.lun]]
id = 3
backstore = "file:$SCRATCH/encrypted.img:$SIZE"
encryption = { key_file = "$SCRATCH/lun.key" }
EOF
if [[ $KINDS == *rbd* ]]; then
    command -v rbd >/dev/null || { echo "crypt.sh: --rbd needs rbd (Debian ceph-common)" >&2; exit 1; }
    start_ceph
    for image in plain encrypted; do
        rbd -c "$CONF" create --size "$SIZE" --image-feature layering "rbd/$image"
    done
    cat >>"$SCRATCH/ferrite.toml" <<EOF
[[target.lun]]
id = 4
backstore = "rbd:rbd/plain"
ceph = { conf = "$CONF" }
[[target.lun]]
id = 5
backstore = "rbd:rbd/encrypted"
ceph = { conf = "$CONF" }
encryption = { key_file = "$SCRATCH/lun.key" }
EOF
fi
serve_ferrite

url() { echo "iscsi://127.0.0.1:$PORT/$IQN/$1"; }
qopts() { echo "driver=iscsi,transport=tcp,portal=127.0.0.1:$PORT,target=$IQN,lun=$1,initiator-name=$INIT-q"; }
# qemu-img bench 128 KiB writes to LUN $1, $2 of them; echoes MiB/s.
qwrite() {
    local out s
    out="$(qemu-img bench --image-opts -t none -w --pattern 0x5a -s 131072 -d 16 -c "$2" "$(qopts "$1")" 2>&1)"
    s="$(sed -n 's/^Run completed in \([0-9.][0-9.]*\) seconds.*/\1/p' <<<"$out")"
    awk -v c="$2" -v s="$s" 'BEGIN { printf "%.0f", c / 8 / s }'
}
# iscsi-perf on LUN $1 with flags $2...; echoes IOPS.
perf() {
    local lun="$1"
    shift
    timeout $((SECS + 30)) iscsi-perf -i "$INIT" "$@" -t "$SECS" "$(url "$lun")" 2>&1 |
        tr '\r' '\n' | sed -n 's/^iops average \([0-9][0-9]*\).*/\1/p' | tail -n 1
}

# Every block written (RAM disks store no all-zero chunk; holes read for free).
COUNT=$((512 * 8))
declare -A BASE=([ram]=0 [file]=2 [rbd]=4)
for kind in $KINDS; do
    for lun in "${BASE[$kind]}" $((BASE[$kind] + 1)); do qwrite "$lun" "$COUNT" >/dev/null; done
done

declare -A S
for ((r = 1; r <= REPS; r++)); do
    for kind in $KINDS; do
        for enc in plain encrypted; do
            lun="${BASE[$kind]}"
            [[ $enc == encrypted ]] && lun=$((lun + 1))
            S[rr4k.$kind.$enc]+=" $(perf "$lun" -m 32 -b 8 -r)"
            S[r128k.$kind.$enc]+=" $(awk -v i="$(perf "$lun" -m 16 -b 256)" 'BEGIN { printf "%.0f", i / 8 }')"
            S[w128k.$kind.$enc]+=" $(qwrite "$lun" $((SECS * 8 * 600)))"
        done
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Each encrypted run over the plain run just before it: the machine's drift between repeats
# cancels out of these pairs better than out of the ratio of the two medians.
pair_ratios() {
    paste -d' ' <(tr ' ' '\n' <<<"$1" | grep .) <(tr ' ' '\n' <<<"$2" | grep .) |
        awk '$1 > 0 { printf " %.3f", $2 / $1 }'
}
printf '| %-32s | %5s | %9s | %9s | %9s | %11s |\n' workload unit plain encrypted enc/plain "pair median"
printf '|%s|%s|%s|%s|%s|%s|\n' "----------------------------------" "-------" "-----------" "-----------" "-----------" "-------------"
for kind in $KINDS; do
    for wl in rr4k:IOPS:"4 KiB random read, QD32" r128k:MiB/s:"128 KiB seq. read, QD16" w128k:MiB/s:"128 KiB seq. write, QD16"; do
        IFS=: read -r key unit name <<<"$wl"
        p="$(median <<<"${S[$key.$kind.plain]}")"
        e="$(median <<<"${S[$key.$kind.encrypted]}")"
        r="$(median <<<"$(pair_ratios "${S[$key.$kind.plain]}" "${S[$key.$kind.encrypted]}")")"
        printf '| %-32s | %5s | %9s | %9s | %9s | %11.2f |\n' "$name, $kind" "$unit" "$p" "$e" \
            "$(awk -v p="$p" -v e="$e" 'BEGIN { printf "%.2f", e / p }')" "$r"
    done
done
echo
for k in "${!S[@]}"; do echo "  $k:${S[$k]}"; done | sort
