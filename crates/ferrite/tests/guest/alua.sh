# Guest side of tests/guest_alua.rs (run by run-guest.sh with lib.sh's helpers).
# Environment: IQN, PORTAL1, PORTAL2 (10.0.2.2:PORT of the target's portal groups 1 and 2, in
# ALUA groups 1 and 2). The host changes ALUA states with `ferrite admin` between the steps and
# watches which portal group carries the I/O; this side records what multipath makes of it and
# keeps verified writes running through the map the whole time.

one_map() { [[ "$(multipathd show maps raw format "%n" | wc -l)" -eq 1 ]]; }
active_paths() { [[ "$(map_active_paths "$MAP")" -eq "$1" ]]; }
# Both paths' priorities as multipathd has them now equal "P1 P2".
prios_are() {
    [[ "$(multipathd show paths raw format "%d %p" | awk -v a="${d1#/dev/}" -v b="${d2#/dev/}" \
        '$1 == a { p1 = $2 } $1 == b { p2 = $2 } END { print p1, p2 }')" == "$1 $2" ]]
}
# What multipath and the kernel make of it, when a wait fails.
diag() {
    log "---- diagnostics"
    multipath -ll "$MAP" || true
    multipathd show paths raw format "%d %t %T %p %o" || true
    for dev in "$d1" "$d2"; do
        sg_rtpg -d "$dev" 2>&1 | head -20 || true
    done
    dmesg | tail -60 || true
    false
}
# multipathd's priority for DEV now equals P.
prio_is() {
    [[ "$(multipathd show paths raw format "%d %p" | awk -v d="${1#/dev/}" '$1 == d { print $2 }')" == "$2" ]]
}
snapshot() { # NAME: what multipath and the target's reports show now
    save "ll-$1" multipath -ll "$MAP"
    save "paths-$1" multipathd show paths raw format "%d %t %T %p"
}

start_multipathd
iscsi_login "$IQN" "$PORTAL1"
iscsi_login "$IQN" "$PORTAL2"
d1=$(session_disk "$IQN" "$PORTAL1")
d2=$(session_disk "$IQN" "$PORTAL2")
log "disks: $d1 through $PORTAL1, $d2 through $PORTAL2"
echo "${d1#/dev/} ${d2#/dev/}" >"$OUT/disks"
wait_until 60 one_map
MAP=$(multipathd show maps raw format "%n")
DEV=/dev/mapper/$MAP
wait_until 60 active_paths 2 || diag
# If dm-multipath initialized group 2's path group first (the paths appear one at a time),
# scsi_dh_alua asked for that group to become active/optimized with SET TARGET PORT GROUPS,
# which an initiator may do. The host puts the starting states back, then the priorities
# settle.
mark paths-up
wait_for initial-states 120
wait_until 60 prios_are 50 10 || diag
udevadm settle --timeout=30
snapshot 1
save inq-1 sg_inq "$d1"
save rtpg-1 sg_rtpg -d "$d1"
save rtpg-2 sg_rtpg -d "$d2"
save rtpg-ext-2 sg_rtpg -e -d "$d2"
save vpd-di-1 sg_vpd -p di "$d1"
save vpd-di-2 sg_vpd -p di "$d2"
save hwhandler cat "/sys/block/${d1#/dev/}/device/dh_state" "/sys/block/${d2#/dev/}/device/dh_state"
mark ready "$(cat "$OUT/ll-1")"

# Verified random writes through the map until the host says stop: fio checks every block it
# wrote as it goes (verify_backlog) and again at the end of each round.
verified_writes "$DEV" 32M 8 &
io_pid=$!
mark io-running

# Swap: group 2 active/optimized, group 1 active/non-optimized.
wait_for swapped
wait_until 60 prios_are 10 50 || diag
snapshot 2
mark step-swapped "$(cat "$OUT/ll-2")"

# Group 2 standby: I/O back on group 1 (whose path group dm-multipath now initializes: Linux
# may ask for it to become active/optimized with SET TARGET PORT GROUPS).
wait_for standby
wait_until 60 prio_is "$d2" 1 || diag
snapshot 3
save rtpg-3 sg_rtpg -d "$d1"
mark step-standby "$(cat "$OUT/ll-3")"

# Group 2 unavailable: its path fails (multipathd keeps the last priority of a failed path).
wait_for unavailable
wait_until 60 active_paths 1 || diag
snapshot 4
mark step-unavailable "$(cat "$OUT/ll-4")"

wait_for stop-io
wait "$io_pid"
log "verified writes: $(cat "$OUT/fio-rounds") rounds"
mark io-done

# The daemon restarts; the paths come back in the states it had.
wait_for restarted
wait_until 120 active_paths 1 || diag
snapshot 5
save rtpg-5 sg_rtpg -d "$d1"
mark step-restarted "$(cat "$OUT/ll-5")"

# Both groups active again, then persistent reservations through the map.
wait_for healthy
wait_until 120 active_paths 2 || diag
wait_until 60 prios_are 50 10 || diag
snapshot 6
save pr-register mpathpersist --out --register --param-sark=0x1 "$DEV"
save pr-keys mpathpersist --in -k "$DEV"
save pr-reserve mpathpersist --out --reserve --param-rk=0x1 --prout-type=5 "$DEV"
save pr-reservation mpathpersist --in -r "$DEV"
save pr-release mpathpersist --out --release --param-rk=0x1 --prout-type=5 "$DEV"
save pr-released mpathpersist --in -r "$DEV"
save pr-unregister mpathpersist --out --register --param-rk=0x1 --param-sark=0 "$DEV"

iscsi_logout "$IQN" "$PORTAL1"
iscsi_logout "$IQN" "$PORTAL2"
save dmesg dmesg
