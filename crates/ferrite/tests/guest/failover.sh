# Guest side of tests/cluster_failover.rs's Linux-initiator test (run by run-guest.sh with
# lib.sh's helpers; QEMU runs inside the lab's initiator namespace, so the guest reaches the
# floating address through QEMU's user-mode network).
# Environment: IQN, PORTAL (the floating address:port). open-iscsi keeps its defaults: a NOP-Out
# every 5 s with a 5 s timeout, and 120 s (replacement_timeout) before the I/O held while the
# session is down fails. The host kills the node holding the address while fio runs.

# The guest knows only its own 10.0.2.0/24; the lab's addresses are reached through QEMU.
ip route replace default via 10.0.2.2
iscsi_login "$IQN" "$PORTAL"
DEV=$(session_disk "$IQN" "$PORTAL")
log "disk: $DEV"
save node-settings iscsiadm -m node -T "$IQN" -p "$PORTAL"
mark ready "$DEV"

# Verified random writes until the host says stop: fio checks every block it wrote as it goes
# (verify_backlog) and again at the end of each round; an I/O error or a bad block ends it
# with an error.
verified_writes "$DEV" 16M 4 &
io_pid=$!
mark io-running

wait_for stop-io 900
wait "$io_pid"
log "verified writes: $(cat "$OUT/fio-rounds") rounds"
save sessions iscsiadm -m session -P 1
save kernel dmesg
mark io-done
iscsi_logout "$IQN" "$PORTAL" || true
