#!/usr/bin/env bash
# Ferrite against tgtd (Linux SCSI target framework, Debian `tgt`) on loopback, on equal
# backstores, alternating between the two targets within one run. See README.md, "Benchmarks".
#
#   bench/run.sh [--quick] [--secs N] [--reps N] [--json FILE] [--scratch DIR] [--keep] ...
#
# Installs nothing: a missing tool is named with its Debian package (`.ci/bench-deps` installs
# them all). Traffic stays on 127.0.0.1, on ports 3500-3549. Daemons, the scratch directory and
# the /dev/shm file are removed on exit, whatever the exit.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    cat <<'EOF'
usage: bench/run.sh [OPTIONS]

Builds Ferrite (release), starts Ferrite and tgtd on loopback with a 1 GiB RAM LUN and a 1 GiB
file LUN each, and measures them in turn (ferrite, tgtd, ferrite, tgtd, ...):

  4 KiB random read, 32 in flight            iscsi-perf -m 32 -b 8 -r
  128 KiB sequential read, 16 in flight      iscsi-perf -m 16 -b 256
  4 KiB sequential write, 32 in flight       qemu-img bench -w -s 4096 -d 32 (iscsi://)
  128 KiB sequential write, 16 in flight     qemu-img bench -w -s 131072 -d 16 (iscsi://)
  64 and 256 sessions, 4 KiB random read,    N x iscsi-perf -m 1 -b 8 -r (RAM LUN)
    1 in flight each
  loopback TCP baseline, one stream          iperf3 (if installed)

OPTIONS
  --quick            about one minute: --secs 2 --reps 1 (explicit --secs/--reps still win)
  --secs N           seconds per measured run (default 4)
  --reps N           repeats of every workload on each target (default 3)
  --sessions "A B"   session counts for the many-sessions runs (default "64 256"; "" skips)
  --json FILE        also write the results as JSON to FILE
  --scratch DIR      where the scratch directory with the two 1 GiB files goes (default /var/tmp;
                     a disk file system, not tmpfs, for the file LUNs to mean "file")
  --port-base P      ports P..P+3 (default 3500; must stay within 3500-3549)
  --ferrite BIN      use this ferrite binary instead of building one
  --keep             keep the scratch directory (logs, raw outputs) and print its path
  --rbd              then the RBD rows: Ferrite on a Ceph RBD image against `rbd bench` on the
                     same image (bench/rbd.sh, same --secs/--reps; starts a throw-away
                     single-node cluster: Debian ceph-mon, ceph-osd, ceph-common)
  --ceph-conf FILE   the RBD rows on this cluster's pool rbd instead (implies --rbd)
  -h, --help         this text

Defaults take about 4-5 minutes (8 workloads x 2 targets x reps x secs, plus the session runs
and ~20 s of setup). Runs as root (tgtd).
EOF
}

# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
SECS="" REPS="" QUICK=0 JSON_OUT="" SCRATCH_PARENT="/var/tmp" PORT_BASE=3500
SESSIONS="64 256" FERRITE_BIN="" KEEP=0 RBD=0 CEPH_CONF_ARG=""
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --secs) SECS="${2:?--secs needs a value}"; shift ;;
    --reps) REPS="${2:?--reps needs a value}"; shift ;;
    --sessions) SESSIONS="${2?--sessions needs a value}"; shift ;;
    --json) JSON_OUT="${2:?--json needs a file}"; shift ;;
    --scratch) SCRATCH_PARENT="${2:?--scratch needs a directory}"; shift ;;
    --port-base) PORT_BASE="${2:?--port-base needs a value}"; shift ;;
    --ferrite) FERRITE_BIN="${2:?--ferrite needs a path}"; shift ;;
    --keep) KEEP=1 ;;
    --rbd) RBD=1 ;;
    --ceph-conf) RBD=1; CEPH_CONF_ARG="${2:?--ceph-conf needs a file}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    SECS="${SECS:-2}" REPS="${REPS:-1}"
else
    SECS="${SECS:-4}" REPS="${REPS:-3}"
fi
usage_error() { echo "bench: $*" >&2; exit 2; }
# A whole number in [MIN, MAX].
uint_in() { [[ "$1" =~ ^[0-9]+$ ]] && (($1 >= $2 && $1 <= $3)); }
uint_in "$SECS" 1 3600 || usage_error "--secs must be a whole number of seconds, 1 to 3600"
uint_in "$REPS" 1 100 || usage_error "--reps must be a whole number, 1 to 100"
for n in $SESSIONS; do
    uint_in "$n" 1 1024 || usage_error "--sessions: '$n' is not a whole number from 1 to 1024"
done
uint_in "$PORT_BASE" 3500 3546 || usage_error "--port-base must leave P..P+3 inside 3500-3549"
if [[ -n "$JSON_OUT" ]]; then
    # Checked (and made absolute) before anything is started.
    dir="$(cd "$(dirname "$JSON_OUT")" 2>/dev/null && pwd)" ||
        usage_error "--json: the directory of '$JSON_OUT' does not exist"
    JSON_OUT="$dir/$(basename "$JSON_OUT")"
fi
# A many-sessions run needs every login done well inside its window.
SESSION_SECS=$((SECS < 3 ? 3 : SECS))

FPORT=$PORT_BASE                # Ferrite's portal
TPORT=$((PORT_BASE + 1))        # tgtd's portal
IPORT=$((PORT_BASE + 2))        # iperf3
TCTL=$((PORT_BASE + 3))         # tgtd --control-port (names its management socket; not TCP)
HOST=127.0.0.1
FIQN=iqn.2026-11.io.ferrite:bench
TIQN=iqn.2026-11.io.ferrite:bench-tgtd
INIT=iqn.2026-11.io.ferrite:bench-initiator
LUN_BYTES=$((1 << 30))

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools: say which Debian package brings a missing one; install nothing.
# ---------------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
missing=()
need() { # TOOL PACKAGE
    command -v "$1" >/dev/null || missing+=("$1 (Debian package $2)")
}
[[ -n "$FERRITE_BIN" ]] || need cargo "cargo, or a rustup toolchain"
need tgtd tgt
need tgtadm tgt
need iscsi-perf libiscsi-bin
need qemu-img qemu-utils
need python3 python3
need timeout coreutils
need getconf libc-bin
# `qemu-img --help` lists iscsi even without the module; ask the driver itself. Loaded, it fails
# to connect to a closed port; absent, it says so.
if command -v qemu-img >/dev/null; then
    probe="$(qemu-img info --image-opts \
        "driver=iscsi,transport=tcp,portal=$HOST:1,target=$FIQN,lun=0" 2>&1 || true)"
    if grep -Eq "Unknown driver|Unable to load module|Unknown protocol" <<<"$probe"; then
        missing+=("qemu-img's iscsi driver (Debian package qemu-block-extra, from the same suite as qemu-utils)")
    fi
fi
if ((${#missing[@]})); then
    printf 'bench: missing: %s\n' "${missing[@]}" >&2
    echo "bench: as root, 'bash .ci/bench-deps' installs them" >&2
    exit 2
fi
HAVE_IPERF=1
command -v iperf3 >/dev/null || {
    HAVE_IPERF=0
    log "iperf3 missing (Debian package iperf3): the loopback TCP baseline is skipped"
}
((EUID == 0)) || log "not root: tgtd may fail to start"

# A socket listening on PORT (any address), read from /proc so that probing opens no connection.
listening() {
    local hex
    hex="$(printf '%04X' "$1")"
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'
}
for p in "$FPORT" "$TPORT" "$IPORT"; do
    listening "$p" && die "port $p is in use (pick others with --port-base)"
done

# ---------------------------------------------------------------------------------------------
# Scratch space and cleanup
# ---------------------------------------------------------------------------------------------
[[ -d "$SCRATCH_PARENT" ]] || die "--scratch $SCRATCH_PARENT is not a directory"
[[ "$(stat -f -c %T "$SCRATCH_PARENT")" != tmpfs ]] ||
    log "warning: $SCRATCH_PARENT is tmpfs, so the file LUNs live in RAM too"
avail_kib() { df -Pk "$1" | awk 'NR == 2 { print $4 }'; }
(($(avail_kib "$SCRATCH_PARENT") > 2 * LUN_BYTES / 1024 + 262144)) ||
    die "$SCRATCH_PARENT needs 2.25 GiB free for two 1 GiB files"
[[ -d /dev/shm && "$(stat -f -c %T /dev/shm)" == tmpfs ]] || die "/dev/shm is not a tmpfs"
(($(avail_kib /dev/shm) > LUN_BYTES / 1024 + 65536)) || die "/dev/shm needs 1.1 GiB free"

SCRATCH=""
SHM="/dev/shm/ferrite-bench-$$.img"
FPID="" TPID="" IPID=""
declare -a CHILDREN=()

stop_pid() { # PID SIGNAL: signal it, wait up to 5 s, then SIGKILL
    local pid="$1" sig="$2" i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    for p in "${CHILDREN[@]}"; do kill "$p" 2>/dev/null; done
    stop_pid "$IPID" TERM
    stop_pid "$FPID" TERM
    # tgtd ignores SIGTERM while it has targets.
    stop_pid "$TPID" KILL
    wait 2>/dev/null
    rm -f "$SHM"
    if [[ -n "$SCRATCH" && -d "$SCRATCH" ]]; then
        # A failure (not an interrupt) shows the daemons' last words.
        if ((rc != 0 && rc != 130 && rc != 143)); then
            for p in ferrite.log tgtd.log; do
                [[ -s "$SCRATCH/$p" ]] && { echo "--- tail of $p" >&2; tail -n 20 "$SCRATCH/$p" >&2; }
            done
        fi
        if ((KEEP)); then
            echo "bench: scratch kept in $SCRATCH" >&2
        else
            rm -rf "$SCRATCH"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SCRATCH="$(mktemp -d "$SCRATCH_PARENT/ferrite-bench.XXXXXX")"
RESULTS="$SCRATCH/results.tsv"
: >"$RESULTS"
meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------------
# Build and start
# ---------------------------------------------------------------------------------------------
if [[ -z "$FERRITE_BIN" ]]; then
    log "cargo build --release -p ferrite"
    (cd "$REPO" && cargo build --release -p ferrite)
    FERRITE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/ferrite"
fi
[[ -x "$FERRITE_BIN" ]] || die "no ferrite binary at $FERRITE_BIN"

nruns=$((8 * 2 * REPS))
est=$((nruns * SECS + REPS * 2 * $(wc -w <<<"$SESSIONS") * (SESSION_SECS + 2) + REPS * SECS * HAVE_IPERF + 20))
log "$((8 * 2 * REPS)) runs of ${SECS}s, many-sessions runs for '${SESSIONS}' of ${SESSION_SECS}s: about $((est / 60))m$((est % 60))s"

# Equal file backstores: written (not sparse) 1 GiB files in one file system. Both stay in the
# page cache (this machine has the memory), so the file rows measure the targets, not the disk.
log "writing two 1 GiB files in $SCRATCH"
dd if=/dev/urandom of="$SCRATCH/ferrite.img" bs=1M count=1024 iflag=fullblock status=none
cp --sparse=never "$SCRATCH/ferrite.img" "$SCRATCH/tgtd.img"
# tgtd's RAM LUN: a tmpfs file through its rdwr backstore (tgt has no RAM backstore). Sized here,
# filled through iSCSI below exactly like Ferrite's RAM LUN.
truncate -s "$LUN_BYTES" "$SHM"

log "starting ferrite on $HOST:$FPORT and tgtd on $HOST:$TPORT"
"$FERRITE_BIN" serve --portal "$HOST:$FPORT" --target "$FIQN" \
    --lun ram:1G --lun "file:$SCRATCH/ferrite.img" \
    --admin-socket none --log warn 2>"$SCRATCH/ferrite.log" &
FPID=$!
tgtd -f --iscsi "portal=$HOST:$TPORT" --control-port "$TCTL" >"$SCRATCH/tgtd.log" 2>&1 &
TPID=$!
# It ends with SIGKILL; disowned, the shell does not announce that as "Killed".
disown "$TPID"

alive() { kill -0 "$1" 2>/dev/null; }
wait_until() { # SECONDS PID DESCRIPTION COMMAND...: until COMMAND succeeds, while PID lives
    local limit=$(($1 * 10)) pid="$2" what="$3" i
    shift 3
    for ((i = 0; i < limit; i++)); do
        "$@" 2>/dev/null && return 0
        alive "$pid" || die "$what exited"
        sleep 0.1
    done
    die "$what did not come up in ${limit}00 ms"
}
wait_until 20 "$FPID" "ferrite" listening "$FPORT"
tgtctl() { tgtadm -C "$TCTL" --lld iscsi "$@"; }
wait_until 20 "$TPID" "tgtd" tgtctl --mode target --op show
tgtctl --mode target --op new --tid 1 --targetname "$TIQN"
# tgtd's LUN 0 is its controller; the disks are LUN 1 (RAM) and LUN 2 (file).
tgtctl --mode logicalunit --op new --tid 1 --lun 1 --bstype rdwr --backing-store "$SHM"
tgtctl --mode logicalunit --op new --tid 1 --lun 2 --bstype rdwr --backing-store "$SCRATCH/tgtd.img"
tgtctl --mode target --op bind --tid 1 --initiator-address ALL
log "ferrite is pid $FPID, tgtd pid $TPID"

CLK_TCK="$(getconf CLK_TCK)"
# utime + stime of a whole process (every thread, live or exited), in clock ticks.
cpu_ticks() {
    local s
    s="$(<"/proc/$1/stat")"
    s="${s##*) }"
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

meta secs "$SECS"
meta reps "$REPS"
meta session_secs "$SESSION_SECS"
meta quick "$QUICK"
meta nproc "$(nproc)"
meta kernel "$(uname -r)"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta ferrite_commit "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo +changes)"
meta tgt "$(dpkg-query -W -f '${Version}' tgt 2>/dev/null || echo unknown)"
meta libiscsi "$(dpkg-query -W -f '${Version}' libiscsi-bin 2>/dev/null || echo unknown)"
meta qemu "$(qemu-img --version | head -n1)"
((HAVE_IPERF)) && meta iperf3 "$(iperf3 --version | head -n1)"
LOAD="$(cut -d' ' -f1 /proc/loadavg)"
meta loadavg_start "$LOAD"
awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }' &&
    log "warning: load average $LOAD on $(nproc) CPUs: other work on this machine will skew the numbers"
meta ferrite_rss_idle_kib "$(status_kib "$FPID" VmRSS)"

# Where each workload goes on each target.
url() { # TARGET ram|file
    case "$1/$2" in
    ferrite/ram) echo "iscsi://$HOST:$FPORT/$FIQN/0" ;;
    ferrite/file) echo "iscsi://$HOST:$FPORT/$FIQN/1" ;;
    tgtd/ram) echo "iscsi://$HOST:$TPORT/$TIQN/1" ;;
    tgtd/file) echo "iscsi://$HOST:$TPORT/$TIQN/2" ;;
    esac
}
qemu_opts() { # TARGET ram|file
    local u
    u="$(url "$1" "$2")"
    u="${u#iscsi://}"
    local portal="${u%%/*}" rest="${u#*/}"
    echo "driver=iscsi,transport=tcp,portal=$portal,target=${rest%/*},lun=${rest##*/},initiator-name=$INIT-qemu"
}
pid_of() { [[ "$1" == ferrite ]] && echo "$FPID" || echo "$TPID"; }

check_daemons() {
    alive "$FPID" || die "ferrite exited"
    alive "$TPID" || die "tgtd exited"
}

# One line per measured run: run, workload, target, rep, value, I/Os done, CPU seconds of the
# target, wall seconds, extra key=value pairs.
record() { printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# The last "iops average N" of an iscsi-perf output ("" if the run failed).
perf_iops() { tr '\r' '\n' <"$1" | sed -n 's/^iops average \([0-9][0-9]*\).*/\1/p' | tail -n 1; }

# iscsi-perf for SECS seconds. WORKLOAD TARGET REP LUNKIND -- iscsi-perf flags
run_perf() {
    local wl="$1" tgt="$2" rep="$3" kind="$4" out pid c0 c1 t0 t1 iops
    shift 5
    out="$SCRATCH/$wl.$tgt.$rep.out"
    pid="$(pid_of "$tgt")"
    c0="$(cpu_ticks "$pid")" t0="$(date +%s.%N)"
    timeout $((SECS + 30)) iscsi-perf -i "$INIT" "$@" -t "$SECS" "$(url "$tgt" "$kind")" >"$out" 2>&1 || true
    c1="$(cpu_ticks "$pid")" t1="$(date +%s.%N)"
    iops="$(perf_iops "$out")"
    if [[ -z "$iops" ]]; then
        log "warning: $wl on $tgt (rep $rep) gave no result; last output:"
        tr '\r' '\n' <"$out" | tail -n 5 >&2
        record "$wl" "$tgt" "$rep" "" 0 0 0 ""
        return
    fi
    record "$wl" "$tgt" "$rep" "$iops" $((iops * SECS)) \
        "$(awk -v a="$c0" -v b="$c1" -v h="$CLK_TCK" 'BEGIN { print (b - a) / h }')" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" ""
}

# qemu-img bench writes over iscsi://; prints "Run completed in X seconds". Echoes the seconds.
qemu_write() { # TARGET LUNKIND SIZE DEPTH COUNT OUTFILE
    timeout 300 qemu-img bench --image-opts -t none -w --pattern 0x5a \
        -s "$3" -d "$4" -c "$5" "$(qemu_opts "$1" "$2")" >"$6" 2>&1 || true
    sed -n 's/^Run completed in \([0-9.][0-9.]*\) seconds.*/\1/p' "$6" | tail -n 1
}

run_qemu() { # WORKLOAD TARGET REP LUNKIND SIZE DEPTH COUNT
    local wl="$1" tgt="$2" rep="$3" pid c0 c1 secs out
    out="$SCRATCH/$wl.$tgt.$rep.out"
    pid="$(pid_of "$tgt")"
    c0="$(cpu_ticks "$pid")"
    secs="$(qemu_write "$tgt" "$4" "$5" "$6" "$7" "$out")"
    c1="$(cpu_ticks "$pid")"
    if [[ -z "$secs" ]]; then
        log "warning: $wl on $tgt (rep $rep) gave no result; last output:"
        tail -n 5 "$out" >&2
        record "$wl" "$tgt" "$rep" "" 0 0 0 ""
        return
    fi
    record "$wl" "$tgt" "$rep" \
        "$(awk -v c="$7" -v s="$secs" 'BEGIN { printf "%.0f", c / s }')" "$7" \
        "$(awk -v a="$c0" -v b="$c1" -v h="$CLK_TCK" 'BEGIN { print (b - a) / h }')" "$secs" ""
}

# N concurrent sessions, one iscsi-perf each (4 KiB random reads, 1 in flight), on the RAM LUN.
# Records the summed IOPS, and the target's RSS before, after and at its peak during the run.
run_sessions() { # N TARGET REP
    local n="$1" tgt="$2" rep="$3" wl="sessions$1" pid dir c0 c1 t0 t1 i before after hwm sum ok v
    pid="$(pid_of "$tgt")"
    dir="$SCRATCH/$wl.$tgt.$rep"
    mkdir -p "$dir"
    before="$(status_kib "$pid" VmRSS)"
    # Restart the peak (VmHWM) at the current RSS, so it is this run's peak (clear_refs, mode 5).
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    c0="$(cpu_ticks "$pid")" t0="$(date +%s.%N)"
    CHILDREN=()
    for ((i = 1; i <= n; i++)); do
        timeout $((SESSION_SECS + 60)) iscsi-perf -i "$INIT-$i" -m 1 -b 8 -r -t "$SESSION_SECS" \
            "$(url "$tgt" ram)" >"$dir/$i.out" 2>&1 &
        CHILDREN+=($!)
    done
    wait "${CHILDREN[@]}" 2>/dev/null || true
    CHILDREN=()
    c1="$(cpu_ticks "$pid")" t1="$(date +%s.%N)"
    after="$(status_kib "$pid" VmRSS)"
    hwm="$(status_kib "$pid" VmHWM)"
    sum=0 ok=0
    for ((i = 1; i <= n; i++)); do
        v="$(perf_iops "$dir/$i.out")"
        [[ -n "$v" ]] && { sum=$((sum + v)); ok=$((ok + 1)); }
    done
    ((ok == n)) || log "warning: $wl on $tgt (rep $rep): only $ok of $n sessions reported"
    record "$wl" "$tgt" "$rep" "$sum" $((sum * SESSION_SECS)) \
        "$(awk -v a="$c0" -v b="$c1" -v h="$CLK_TCK" 'BEGIN { print (b - a) / h }')" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "sessions=$n,sessions_ok=$ok,rss_before_kib=$before,rss_after_kib=$after,rss_peak_kib=$hwm"
}

run_tcp() { # REP
    local out="$SCRATCH/tcp.$1.json"
    iperf3 -s -1 -B "$HOST" -p "$IPORT" >"$SCRATCH/iperf3-server.log" 2>&1 &
    IPID=$!
    wait_until 10 "$IPID" "iperf3 server" listening "$IPORT"
    timeout $((SECS + 20)) iperf3 -c "$HOST" -p "$IPORT" -t "$SECS" -J >"$out" 2>&1 || true
    stop_pid "$IPID" TERM
    IPID=""
    python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"])
except Exception:
    print("")' "$out"
}

# ---------------------------------------------------------------------------------------------
# Fill the RAM LUNs and size the write runs
# ---------------------------------------------------------------------------------------------
# Both RAM LUNs get every byte written with a non-zero pattern before anything is measured:
# Ferrite's RAM disk commits memory only for chunks that hold data (an all-zero disk reads
# without copying), and tgtd's tmpfs file is sparse until written. The same pass warms both.
declare -A RATE=()
for tgt in ferrite tgtd; do
    log "filling the $tgt RAM LUN (1 GiB of 128 KiB writes)"
    s="$(qemu_write "$tgt" ram 131072 16 $((LUN_BYTES / 131072)) "$SCRATCH/fill.$tgt.out")"
    [[ -n "$s" ]] || { tail -n 5 "$SCRATCH/fill.$tgt.out" >&2; die "filling the $tgt RAM LUN failed"; }
    RATE[w128k.$tgt]="$(awk -v c=$((LUN_BYTES / 131072)) -v s="$s" 'BEGIN { print c / s }')"
    s="$(qemu_write "$tgt" ram 4096 32 20000 "$SCRATCH/probe.$tgt.out")"
    [[ -n "$s" ]] || { tail -n 5 "$SCRATCH/probe.$tgt.out" >&2; die "4 KiB writes to $tgt failed"; }
    RATE[w4k.$tgt]="$(awk -v s="$s" 'BEGIN { print 20000 / s }')"
done
meta ferrite_rss_filled_kib "$(status_kib "$FPID" VmRSS)"
# qemu-img bench counts requests, not seconds: both targets get the same count, sized so that
# the mean of the two measured rates would take SECS.
count_for() { awk -v a="${RATE[$1.ferrite]}" -v b="${RATE[$1.tgtd]}" -v s="$SECS" \
    'BEGIN { c = int((a + b) / 2 * s); if (c < 1000) c = 1000; print c }'; }
W4K_COUNT="$(count_for w4k)"
W128K_COUNT="$(count_for w128k)"
meta write4k_count "$W4K_COUNT"
meta write128k_count "$W128K_COUNT"

# ---------------------------------------------------------------------------------------------
# The runs: every workload on ferrite, then on tgtd, repeated REPS times.
# ---------------------------------------------------------------------------------------------
PEAK_KIB=0
note_peak() {
    local h
    h="$(status_kib "$FPID" VmHWM)"
    ((h > PEAK_KIB)) && PEAK_KIB=$h
    return 0
}
for ((rep = 1; rep <= REPS; rep++)); do
    log "repeat $rep of $REPS"
    for kind in ram file; do
        for tgt in ferrite tgtd; do
            check_daemons
            run_perf "rr4k_$kind" "$tgt" "$rep" "$kind" -- -m 32 -b 8 -r
        done
        for tgt in ferrite tgtd; do
            check_daemons
            run_perf "sr128k_$kind" "$tgt" "$rep" "$kind" -- -m 16 -b 256
        done
        for tgt in ferrite tgtd; do
            check_daemons
            run_qemu "sw4k_$kind" "$tgt" "$rep" "$kind" 4096 32 "$W4K_COUNT"
        done
        for tgt in ferrite tgtd; do
            check_daemons
            run_qemu "sw128k_$kind" "$tgt" "$rep" "$kind" 131072 16 "$W128K_COUNT"
        done
        note_peak
    done
    for n in $SESSIONS; do
        for tgt in ferrite tgtd; do
            check_daemons
            note_peak # the session run restarts VmHWM: keep the peak so far
            run_sessions "$n" "$tgt" "$rep"
        done
        note_peak
    done
    if ((HAVE_IPERF)); then
        bps="$(run_tcp "$rep")"
        if [[ -n "$bps" ]]; then
            record tcp loopback "$rep" "$bps" 0 0 "$SECS" ""
        else
            log "warning: iperf3 gave no result"
        fi
    fi
done
check_daemons
note_peak
meta ferrite_rss_peak_kib "$PEAK_KIB"
meta ferrite_rss_end_kib "$(status_kib "$FPID" VmRSS)"
meta loadavg_end "$(cut -d' ' -f1 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
python3 "$REPO/bench/report.py" "$RESULTS" ${JSON_OUT:+--json "$JSON_OUT"}
[[ -z "$JSON_OUT" ]] || log "results written to $JSON_OUT"

# ---------------------------------------------------------------------------------------------
# RBD rows (--rbd): Ferrite on an RBD image against librbd's own `rbd bench`, the ceiling
# ---------------------------------------------------------------------------------------------
if ((RBD)); then
    log "RBD rows (bench/rbd.sh)"
    "$REPO/bench/rbd.sh" --secs "$SECS" --reps "$REPS" --ferrite "$FERRITE_BIN" \
        --port $((PORT_BASE + 3)) ${CEPH_CONF_ARG:+--ceph-conf "$CEPH_CONF_ARG"}
fi
