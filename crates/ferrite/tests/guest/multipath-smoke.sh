# Guest side of tests/guest_multipath.rs (run by run-guest.sh with lib.sh's helpers).
# Environment: IQN, PORTAL1, PORTAL2 (10.0.2.2:PORT of the target's portal groups 1 and 2).
# The host reads the files this saves under $OUT and checks them; markers pace the host's own
# checks (`ferrite admin`) between the steps.

DEV=
fio_verify() { # OUTPUT-NAME SIZE: random 4 KiB writes through the map, read back and checked
    fio --name=verify --filename="$DEV" --rw=randwrite --bs=4k --size="$2" --direct=1 \
        --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --output-format=json --output="$OUT/$1"
}
one_map() { [[ "$(multipathd show maps raw format "%n" | wc -l)" -eq 1 ]]; }
active_paths() { [[ "$(map_active_paths "$MAP")" -eq "$1" ]]; }
all_paths() { [[ "$(map_paths "$MAP")" -eq "$1" ]]; }
snapshot() { # NAME: what multipath shows now
    save "multipath-ll-$1" multipath -ll
    save "paths-$1" multipathd show paths raw format "%d %t %T %p"
}

start_multipathd
iscsi_login "$IQN" "$PORTAL1"
iscsi_login "$IQN" "$PORTAL2"
d1=$(session_disk "$IQN" "$PORTAL1")
d2=$(session_disk "$IQN" "$PORTAL2")
log "disks: $d1 through $PORTAL1, $d2 through $PORTAL2"
wait_until 60 one_map
MAP=$(multipathd show maps raw format "%n")
DEV=/dev/mapper/$MAP
echo "$MAP" >"$OUT/map"
wait_until 60 active_paths 2
udevadm settle --timeout=30
snapshot 1
save maps multipathd show maps raw format "%n %w %N"
save vpd-di-1 sg_vpd -p di "$d1"
save vpd-di-2 sg_vpd -p di "$d2"
save wwid-1 /lib/udev/scsi_id -g -u -d "$d1"
save wwid-2 /lib/udev/scsi_id -g -u -d "$d2"
save by-id ls -1 /dev/disk/by-id
save inq sg_inq "$d1"
mark two-paths "$(cat "$OUT/multipath-ll-1")"
wait_for sessions-checked

fio_verify fio-1.json 32M
log "fio through $DEV: done"

# Path loss under I/O: log out of the session that carries the map's I/O (its active path
# group) while a verified write runs; dm-multipath moves the I/O to the other path.
busy=$(active_group_paths "$MAP" | head -n 1)
lost=$(disk_portal "$busy")
echo "$lost" >"$OUT/lost-portal"
log "the active path is $busy through $lost"
fio_verify fio-2.json 16M &
fio_pid=$!
sleep 2
iscsi_logout "$IQN" "$lost"
wait_until 60 all_paths 1
snapshot 2
wait "$fio_pid"
log "fio across the logout: done"
fio_verify fio-3.json 8M
mark one-path
iscsi_login "$IQN" "$lost"
session_disk "$IQN" "$lost" >/dev/null
wait_until 60 active_paths 2
snapshot 3

# Persistent reservations through the map: the key goes to every path.
save pr-register mpathpersist --out --register --param-sark=0x1 "$DEV"
save pr-keys mpathpersist --in -k "$DEV"
save pr-reserve mpathpersist --out --reserve --param-rk=0x1 --prout-type=5 "$DEV"
save pr-reservation mpathpersist --in -r "$DEV"
mark reserved
wait_for pr-checked
save pr-release mpathpersist --out --release --param-rk=0x1 --prout-type=5 "$DEV"
save pr-released mpathpersist --in -r "$DEV"
save pr-unregister mpathpersist --out --register --param-rk=0x1 --param-sark=0 "$DEV"
save pr-keys-after mpathpersist --in -k "$DEV"

iscsi_logout "$IQN" "$PORTAL1"
iscsi_logout "$IQN" "$PORTAL2"
log "done"
