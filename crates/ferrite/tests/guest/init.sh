#!/bin/sh
# The guest's boot steps, one run at a time. run-guest.sh copies this file into the run's share
# as `init`; the image's PID 1 (/sbin/ferrite-guest-init, see build-image.sh) mounts the share at
# /share, runs this with /bin/sh and powers the guest off when it returns. Being outside the
# image, it can change without a rebuild.
#
# It brings up what an initiator host needs, in this order:
#   - /run, /tmp, /dev/pts, /dev/shm; the host name `ferrite-guest`;
#   - /etc/iscsi/initiatorname.iscsi from /share/initiator-name (default below);
#   - /etc/multipath.conf from /share/multipath.conf, only if the run has one (a script may also
#     write its own before it starts multipathd);
#   - udevd (device nodes, /dev/disk/by-id, the uevents multipathd listens to);
#   - the kernel modules: iscsi_tcp, dm_multipath with its path selectors, the SCSI device
#     handlers (scsi_dh_alua must be loaded before a disk appears to attach to it), sg;
#   - eth0 = 10.0.2.15/24 on QEMU's user network, where 10.0.2.2 is the host's loopback;
#   - iscsid, with replacement_timeout 15 s for new node records (multipath's usual setting:
#     a dead path fails its I/O over after 15 s instead of 120);
# then runs the test's script (bash, /share/lib.sh sourced first, /share/env.sh if present)
# with its output in /share/output.log and its exit status in /share/status, and finally logs
# out of every session and stops multipathd, each bounded in time.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
SHARE=/share

say() { echo "ferrite-guest: [$(cut -d' ' -f1 /proc/uptime)] $*" >/dev/console; }

say "init"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock /run/multipath /run/lock/iscsi
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname ferrite-guest
mkdir -p "$SHARE/markers" "$SHARE/signals" "$SHARE/out"

initiator=iqn.2026-11.io.ferrite.guest:default
if [ -s "$SHARE/initiator-name" ]; then
    initiator=$(cat "$SHARE/initiator-name")
fi
echo "InitiatorName=$initiator" >/etc/iscsi/initiatorname.iscsi
if [ -f "$SHARE/multipath.conf" ]; then
    cp "$SHARE/multipath.conf" /etc/multipath.conf
fi
sed -i 's/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = 15/' \
    /etc/iscsi/iscsid.conf

/lib/systemd/systemd-udevd --daemon --resolve-names=never || say "udevd did not start"
udevadm trigger --action=add --type=subsystems
udevadm trigger --action=add --type=devices
udevadm settle --timeout=30
modprobe -a iscsi_tcp dm_multipath dm_round_robin dm_service_time dm_queue_length \
    scsi_dh_alua scsi_dh_emc scsi_dh_rdac sg || say "a kernel module did not load"

ip link set lo up
n=0
until ip link show eth0 >/dev/null 2>&1 || [ $n -ge 100 ]; do
    sleep 0.1
    n=$((n + 1))
done
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || say "eth0 did not come up"

iscsid || say "iscsid did not start"

say "running the script"
: >"$SHARE/markers/.booted" && mv "$SHARE/markers/.booted" "$SHARE/markers/booted"
cd "$SHARE/out" || cd /
SHARE=$SHARE OUT=$SHARE/out bash --noprofile --norc -c '
    [ -f "$SHARE/env.sh" ] && . "$SHARE/env.sh"
    . "$SHARE/lib.sh"
    . "$SHARE/script.sh"' >"$SHARE/output.log" 2>&1 </dev/null
rc=$?
echo "$rc" >"$SHARE/.status" && mv "$SHARE/.status" "$SHARE/status"
say "script exited $rc"

# Clean up: the target sees logouts rather than dropped connections.
timeout 20 multipathd shutdown >/dev/null 2>&1
timeout 30 iscsiadm -m node --logoutall=all >/dev/null 2>&1
sync
say "powering off"
