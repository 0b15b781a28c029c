#!/usr/bin/env bash
# Boots the test guest (build-image.sh) under QEMU for one run and returns when it has powered off.
#
#   run-guest.sh SHARE_DIR
#
# SHARE_DIR is the run's directory, seen by the guest as /share (9p). The caller puts there:
#   script.sh        the bash script to run as root in the guest (required); lib.sh's helpers
#                    are defined when it starts
#   env.sh           optional, sourced first (e.g. `export PORT1=3260`)
#   initiator-name   optional, the guest's InitiatorName (default iqn.2026-11.io.ferrite.guest:default)
#   multipath.conf   optional, installed as /etc/multipath.conf
#   signals/NAME     written while the guest runs: what `wait_for NAME` waits for
# This script adds `init` (init.sh) and `lib.sh`, and the run leaves:
#   console.log      the guest's serial console (kernel messages, init steps)
#   qemu.log         QEMU's own stdout and stderr
#   output.log       the script's stdout and stderr
#   status           the script's exit status, once it has exited
#   markers/NAME     what `mark NAME` wrote; markers/booted when the script starts
#   out/             the script's working directory (`save NAME ...` writes there)
#
# Exit status: the script's, 124 if the guest was still running after the hard timeout, 125 if it
# ended without a status (look at console.log). With a terminal on stdout the script's output is
# streamed there.
#
# Environment:
#   FERRITE_GUEST_IMAGE    the image directory build-image.sh printed (default: run build-image.sh,
#                          which returns at once when the image is cached)
#   FERRITE_GUEST_TIMEOUT  hard limit in seconds on the whole boot-run-poweroff (default 600): QEMU
#                          gets SIGTERM then, SIGKILL 10 s later
#   FERRITE_GUEST_MEM      guest memory in MiB (default 1024)
#   FERRITE_GUEST_ACCEL    tcg (default) or kvm. On a VM without nested virtualisation /dev/kvm may
#                          exist and still never run a guest, hence TCG.
# A SIGTERM or SIGINT to this script stops QEMU too (so does killing its process group).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { echo "run-guest: $*" >&2; }
die() {
    say "$*"
    exit 2
}

[[ $# -eq 1 ]] || die "usage: run-guest.sh SHARE_DIR"
SHARE="$(cd "$1" && pwd)" || die "no such directory: $1"
[[ -f "$SHARE/script.sh" ]] || die "$SHARE/script.sh missing"
[[ "$SHARE" != *,* ]] || die "QEMU cannot take a share path with a comma: $SHARE"
command -v qemu-system-x86_64 >/dev/null ||
    die "qemu-system-x86_64 not found: install Debian package qemu-system-x86 from the suite qemu-utils came from (bookworm-backports; .ci/run does)"

IMAGE="${FERRITE_GUEST_IMAGE:-}"
if [[ -z "$IMAGE" ]]; then
    IMAGE="$("$HERE/build-image.sh")" || die "build-image.sh failed"
fi
for f in vmlinuz initrd.img root.img; do
    [[ -f "$IMAGE/$f" ]] || die "$IMAGE/$f missing (run build-image.sh)"
done
touch "$IMAGE/last-used" 2>/dev/null || true

TIMEOUT="${FERRITE_GUEST_TIMEOUT:-600}"
case "${FERRITE_GUEST_ACCEL:-tcg}" in
    tcg) accel=(-accel tcg -cpu max) ;;
    kvm) accel=(-accel kvm -cpu host) ;;
    *) die "FERRITE_GUEST_ACCEL must be tcg or kvm" ;;
esac

install -m 0755 "$HERE/init.sh" "$SHARE/init"
install -m 0644 "$HERE/lib.sh" "$SHARE/lib.sh"
mkdir -p "$SHARE/markers" "$SHARE/signals" "$SHARE/out"
rm -f "$SHARE/status" "$SHARE/console.log"
: >"$SHARE/output.log"

# The kernel's console goes to the serial port (a file); fsck is skipped (the image is fresh and
# the disk a snapshot); panic=-1 with -no-reboot makes a kernel panic end QEMU at once.
append="root=/dev/vda rw rootfstype=ext4 init=/sbin/ferrite-guest-init console=ttyS0 quiet loglevel=4"
append+=" fsck.mode=skip net.ifnames=0 panic=-1 mitigations=off"

t0=$SECONDS
# --foreground keeps QEMU in this script's process group, so killing the group stops it.
timeout --foreground --kill-after=10 "$TIMEOUT" \
    qemu-system-x86_64 "${accel[@]}" -M q35 -smp 1 -m "${FERRITE_GUEST_MEM:-1024}" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" -append "$append" \
    -drive "file=$IMAGE/root.img,if=virtio,format=raw,snapshot=on" \
    -virtfs "local,path=$SHARE,mount_tag=ferrite,security_model=none" \
    -netdev user,id=net0,net=10.0.2.0/24,host=10.0.2.2 -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci \
    -serial "file:$SHARE/console.log" \
    </dev/null >"$SHARE/qemu.log" 2>&1 &
qpid=$!
trap 'kill -TERM "$qpid" 2>/dev/null || true' TERM INT HUP
if [[ -t 1 ]]; then
    tail -n +1 -F --pid="$qpid" "$SHARE/output.log" 2>/dev/null &
fi

qrc=0
while :; do
    wait "$qpid" && qrc=0 || qrc=$?
    # A trapped signal interrupts `wait`; QEMU may still be shutting down.
    kill -0 "$qpid" 2>/dev/null || break
done
wait 2>/dev/null || true

if [[ -s "$SHARE/status" ]]; then
    rc="$(cat "$SHARE/status")"
    say "script exited $rc; guest ran $((SECONDS - t0)) s"
    exit "$rc"
fi
if ((qrc == 124 || qrc == 137)); then
    say "guest still running after the hard timeout of ${TIMEOUT} s; stopped"
    rc=124
else
    say "guest ended without a script status (QEMU exit $qrc) after $((SECONDS - t0)) s"
    rc=125
fi
say "--- qemu.log"
cat "$SHARE/qemu.log" >&2 || true
say "--- last lines of console.log"
tail -n 30 "$SHARE/console.log" >&2 || true
exit "$rc"
