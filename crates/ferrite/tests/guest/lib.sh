# shellcheck shell=bash
# Helpers for the scripts the tests run in the guest. init.sh sources this (bash) before the
# test's script, with SHARE=/share (the run's 9p share) and OUT=/share/out (the working
# directory; files there are the host's `GuestOutcome::file` / `Guest::file`).
#
#   log TEXT...                  a line in the output with the guest's uptime: "[12.34] TEXT"
#   mark NAME [TEXT...]          tell the host a step is reached: /share/markers/NAME holds TEXT
#                                (the host's Guest::wait_marker returns it)
#   wait_for NAME [SECONDS]      wait (default 300 s) for the host's Guest::signal(NAME); its text
#                                is then in /share/signals/NAME. Fails on timeout.
#   wait_until SECONDS CMD...    run CMD every 0.2 s until it succeeds; fails after SECONDS
#   save NAME CMD...             run CMD with its output (stdout and stderr) in $OUT/NAME, copy
#                                that output into the log, return CMD's status
#   iscsi_login IQN PORTAL       make the node record for PORTAL (host:port; the host's loopback
#                                is 10.0.2.2) unless it exists, and log in
#   iscsi_logout IQN PORTAL      log out of that session
#   session_disk IQN PORTAL [S]  print the block device (/dev/sdX) of the lowest LUN of the
#                                session through PORTAL once udev has made it (at most S s, 30)
#   disk_portal DEV              the portal (10.0.2.2:PORT) of the session DEV (sdX) belongs to
#   start_multipathd             start multipathd and wait until it answers
#   map_paths MAP                the number of paths multipathd lists for MAP
#   map_active_paths MAP         the number of those whose dm state is active and checker ready
#   active_group_paths MAP       the devices (sdX) of MAP's active path group, which carry its I/O
#   verified_writes DEV SIZE DEPTH
#                                rounds of fio random writes of SIZE over DEV (queue depth DEPTH),
#                                each block checked as it goes and again at the end of the round,
#                                until the host's signal stop-io; $OUT/fio-N.json per round and
#                                $OUT/fio-rounds (the host's GuestOutcome::verified_fio_rounds).
#                                Fails on the first I/O error or bad block. Run it in the
#                                background and `wait` for it.
#
# Scripts run under `set -Eeuo pipefail` with an ERR trap that names the failing line, so a
# failed command ends the run with its status unless the script handles it (`|| true`, `if`).

set -Eeuo pipefail

# The failing command, where it is, and the calls that led there.
on_err() {
    local rc=$? i
    echo "guest script: \`${BASH_COMMAND}\` exited $rc at ${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}" >&2
    for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
        echo "  in ${FUNCNAME[i]}, called at ${BASH_SOURCE[i + 1]##*/}:${BASH_LINENO[i]}" >&2
    done
    trap - ERR
}
trap on_err ERR

MARKS="$SHARE/markers"
SIGNALS="$SHARE/signals"

log() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

mark() {
    local name=$1
    printf '%s' "${*:2}" >"$MARKS/.$name.tmp"
    mv -f "$MARKS/.$name.tmp" "$MARKS/$name"
    log "mark $name"
}

wait_for() {
    local name=$1 limit=${2:-300} waited=0
    log "waiting for the host's signal $name"
    while [[ ! -e "$SIGNALS/$name" ]]; do
        if ((waited >= limit * 5)); then
            log "no signal $name from the host after ${limit} s"
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    log "signal $name"
}

wait_until() {
    local limit=$1 tries=0
    shift
    until "$@" >/dev/null 2>&1; do
        if ((tries >= limit * 5)); then
            log "still failing after ${limit} s: $*"
            return 1
        fi
        sleep 0.2
        tries=$((tries + 1))
    done
}

save() {
    local name=$1 rc=0
    shift
    log "\$ $* > $name"
    "$@" >"$OUT/$name" 2>&1 || rc=$?
    cat "$OUT/$name"
    return "$rc"
}

iscsi_login() {
    local iqn=$1 portal=$2
    if ! iscsiadm -m node -T "$iqn" -p "$portal" >/dev/null 2>&1; then
        iscsiadm -m node -o new -T "$iqn" -p "$portal" >/dev/null
    fi
    iscsiadm -m node -T "$iqn" -p "$portal" --login
}

iscsi_logout() {
    iscsiadm -m node -T "$1" -p "$2" --logout
}

# The session id of the session to IQN through PORTAL ("[3]" in `iscsiadm -m session`).
session_id() {
    iscsiadm -m session 2>/dev/null |
        awk -v p="$2," -v t="$1" 'index($3, p) == 1 && $4 == t { gsub(/[][]/, "", $2); print $2; exit }'
}

session_disk() {
    local iqn=$1 portal=$2 limit=${3:-30} sid tries=0 b
    while :; do
        sid=$(session_id "$iqn" "$portal")
        if [[ -n "$sid" ]]; then
            udevadm settle --timeout=5 || true
            # target<host>:0:0/<host>:0:0:<lun>/block/sdX, lowest LUN first
            for b in $(ls -d /sys/class/iscsi_session/session"$sid"/device/target*/*/block/* 2>/dev/null | sort -t: -k4 -n); do
                if [[ -b "/dev/${b##*/}" ]]; then
                    echo "/dev/${b##*/}"
                    return 0
                fi
            done
        fi
        if ((tries >= limit * 5)); then
            log "no disk behind the session to $iqn through $portal after ${limit} s"
            return 1
        fi
        sleep 0.2
        tries=$((tries + 1))
    done
}

disk_portal() {
    local dev=${1#/dev/} s sid c
    for s in /sys/class/iscsi_session/session*; do
        sid=${s##*session}
        if compgen -G "$s/device/target*/*/block/$dev" >/dev/null; then
            for c in /sys/class/iscsi_connection/connection"$sid":*; do
                echo "$(cat "$c/persistent_address"):$(cat "$c/persistent_port")"
                return 0
            done
        fi
    done
    return 1
}

start_multipathd() {
    multipathd
    wait_until 30 multipathd show daemon
}

map_paths() {
    multipathd show paths raw format "%m %d" | awk -v m="$1" '$1 == m' | wc -l
}

map_active_paths() {
    multipathd show paths raw format "%m %t %T" | awk -v m="$1" '$1 == m && $2 == "active" && $3 == "ready"' | wc -l
}

# `multipath -ll MAP` shows each path group as "-+- policy=... prio=N status=active|enabled|..."
# followed by its paths as "H:C:T:L sdX MAJ:MIN dm-state checker-state online-state".
active_group_paths() {
    multipath -ll "$1" | awk '
        /status=/ { active = ($0 ~ /status=active/) }
        active && match($0, /[0-9]+:[0-9]+:[0-9]+:[0-9]+ [a-z]+/) {
            split(substr($0, RSTART, RLENGTH), f, " ")
            print f[2]
        }'
}

verified_writes() {
    local dev=$1 size=$2 depth=$3 round=0
    while [[ ! -e "$SIGNALS/stop-io" ]]; do
        round=$((round + 1))
        fio --name=verified --filename="$dev" --rw=randwrite --bs=4k --size="$size" --direct=1 \
            --ioengine=libaio --iodepth="$depth" --verify=crc32c --verify_backlog=64 --do_verify=1 \
            --verify_fatal=1 --output-format=json --output="$OUT/fio-$round.json"
        echo "$round" >"$OUT/fio-rounds"
    done
}
