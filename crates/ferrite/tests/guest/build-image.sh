#!/usr/bin/env bash
# Builds (once) the Debian guest that carries the Linux kernel iSCSI initiator for the whole-system
# tests, and prints the directory that holds it: `vmlinuz`, `initrd.img` and `root.img` (ext4, the
# guest's root file system, booted read-only-in-effect with QEMU's snapshot=on).
#
#   crates/ferrite/tests/guest/build-image.sh      # as root; prints e.g. /var/cache/ferrite-guest/3f0c…
#
# The image lives under ${FERRITE_GUEST_CACHE:-/var/cache/ferrite-guest}/<key>, where <key> is a hash
# of this file (the package list and the PID 1 stub below are in it) and of the Debian codename: a
# second call returns at once, and editing this file builds a new image. A build happens in a
# temporary directory renamed into place at the end, under an flock on the cache, so concurrent
# callers wait for one build instead of racing, and an interrupted build leaves nothing that looks
# finished. Images not used for two weeks are removed after a build. To force a rebuild, remove the
# key directory.
#
# The Debian mirror is not written here: mmdebstrap gets the archive entries of this machine's apt
# sources (.ci/lib-apt.sh's apt_entries) for <codename>, <codename>-updates and <codename>-security.
# Needs root (mmdebstrap's root mode), mmdebstrap, e2fsprogs >= 1.43 (mkfs.ext4 -d: no loop device).
# About 130 s on a 2-core machine; the image is about 1.4 GiB, sparse.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../../.." && pwd)"
# log, CODENAME, apt_entries
source "$REPO/.ci/lib-apt.sh"

CACHE="${FERRITE_GUEST_CACHE:-/var/cache/ferrite-guest}"

# What the guest carries. kmod/iproute2/procps/mount/util-linux are spelled out because the
# per-run init (init.sh) uses them; fio uses libaio.
PACKAGES=(
    linux-image-amd64 initramfs-tools kmod udev
    iproute2 procps mount util-linux bash coreutils
    open-iscsi multipath-tools sg3-utils lsscsi fio e2fsprogs
)

# The guest's PID 1, baked into the image as /sbin/ferrite-guest-init: it mounts the run's 9p share
# (tag "ferrite") at /share and runs /share/init there, which run-guest.sh copies from init.sh on
# every run, so the boot steps can change without a new image. Whatever happens, it powers off.
read -r -d '' PID1 <<'STUB' || true
#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
modprobe -q 9pnet_virtio
modprobe -q 9p
mkdir -p /share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 ferrite /share && [ -f /share/init ]; then
    /bin/sh /share/init
else
    echo "ferrite-guest-init: no 9p share 'ferrite' with an init script; powering off" >/dev/console
fi
sync
echo o >/proc/sysrq-trigger
# Power-off is asynchronous and takes the root disk away first: wait with builtins only, since
# no program can be loaded from it any more (a failed exec would make PID 1 exit: a panic).
while :; do read -r _ </dev/console || :; done
STUB

die() {
    echo "build-image: $*" >&2
    exit 1
}

# Remove a build directory. A build killed mid-way may have left mmdebstrap's mounts (proc,
# sys, dev) inside it: unmount those first, deepest first, and never let rm cross into another
# file system.
remove_tree() {
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$1"
}

key() {
    { cat "${BASH_SOURCE[0]}"; echo "$CODENAME $(uname -m)"; } | sha256sum | cut -c1-16
}
KEY="$(key)"
DEST="$CACHE/$KEY"

if [[ -f "$DEST/root.img" ]]; then
    echo "$DEST"
    exit 0
fi

# The tools, each named with the Debian package that brings it.
need() { command -v "$1" >/dev/null || die "$1 not found: install Debian package $2 (.ci/run does)"; }
need mmdebstrap mmdebstrap
need mkfs.ext4 e2fsprogs
need flock util-linux
need sha256sum coreutils
((EUID == 0)) || die "needs root (mmdebstrap builds the root file system in root mode)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "guest image: another build is under way; waiting for $CACHE/.lock"
    flock -w 1800 9 || die "another build held $CACHE/.lock for 30 minutes"
fi
if [[ -f "$DEST/root.img" ]]; then
    # Another caller built it while this one waited.
    echo "$DEST"
    exit 0
fi
# Leftovers of builds that were killed (every builder holds the lock, so none is running).
for d in "$CACHE"/.build-*; do
    if [[ -e "$d" ]]; then remove_tree "$d"; fi
done

# mmdebstrap's mirror arguments: one-line sources entries for the codename's main suites, from the
# machine's apt sources (no host name is written into this repository).
mapfile -t MIRRORS < <(apt_entries | awk -F'\t' -v c="$CODENAME" '
    $2 == c || $2 == c "-updates" || $2 == c "-security" {
        opt = ($3 != "") ? "[signed-by=" $3 "] " : ""
        line = "deb " opt $1 " " $2 " main"
        if (!seen[line]++) print line
    }')
((${#MIRRORS[@]})) || die "no '${CODENAME}' archive entry in this machine's apt sources"

WORK="$(mktemp -d "$CACHE/.build-$KEY.XXXXXX")"
trap 'remove_tree "$WORK"' EXIT
ROOT="$WORK/root"
BUILD_LOG="$WORK/build.log"
t0=$SECONDS
log "guest image: mmdebstrap ${CODENAME} into $ROOT (about 2 minutes; log: $BUILD_LOG)"
printf '%s\n' "$PID1" >"$WORK/ferrite-guest-init"
pkgs="$(IFS=,; echo "${PACKAGES[*]}")"
if ! mmdebstrap --mode=root --variant=minbase --include="$pkgs" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='echo ferrite-guest >"$1/etc/hostname"' \
    --customize-hook="install -m 0755 '$WORK/ferrite-guest-init' \"\$1/sbin/ferrite-guest-init\"" \
    "$CODENAME" "$ROOT" "${MIRRORS[@]}" >"$BUILD_LOG" 2>&1; then
    cp "$BUILD_LOG" "$CACHE/build-$KEY.failed.log" || true
    tail -n 30 "$BUILD_LOG" >&2
    die "mmdebstrap failed (log: $CACHE/build-$KEY.failed.log)"
fi
log "guest image: root file system in $((SECONDS - t0)) s"

kernels=("$ROOT"/boot/vmlinuz-*)
initrds=("$ROOT"/boot/initrd.img-*)
[[ -f "${kernels[0]}" && -f "${initrds[0]}" ]] || die "no kernel or initrd under $ROOT/boot"
cp "${kernels[0]}" "$WORK/vmlinuz"
cp "${initrds[0]}" "$WORK/initrd.img"
# Room for what a run writes (the overlay of snapshot=on takes it anyway): a third more, +256 MiB.
mib=$(($(du -sm "$ROOT" | cut -f1) * 4 / 3 + 256))
mkfs.ext4 -q -F -L ferrite-guest -d "$ROOT" "$WORK/root.img.tmp" "${mib}M" >>"$BUILD_LOG" 2>&1 \
    || die "mkfs.ext4 -d failed (see $BUILD_LOG)"
mv "$WORK/root.img.tmp" "$WORK/root.img"
# The image holds the tree now. Nothing may be mounted under it before it goes.
if grep -q " $ROOT/" /proc/mounts; then
    die "mounts left under $ROOT; not removing it"
fi
rm -rf --one-file-system "$ROOT"
{ echo "key $KEY"; echo "codename $CODENAME"; echo "packages ${PACKAGES[*]}"; echo "built $(date -u +%FT%TZ) in $((SECONDS - t0)) s"; } >"$WORK/info"
touch "$WORK/last-used"
chmod 0755 "$WORK"
mv -T "$WORK" "$DEST"
trap - EXIT
log "guest image: $DEST ready (${mib} MiB file system) in $((SECONDS - t0)) s"

# Images of other versions of this file nobody booted for 14 days.
for d in "$CACHE"/*/; do
    d="${d%/}"
    [[ "$d" != "$DEST" && -f "$d/root.img" ]] || continue
    if [[ -z "$(find "$d/last-used" -mtime -14 2>/dev/null)" ]]; then
        log "guest image: removing unused $d"
        rm -rf "$d"
    fi
done
echo "$DEST"
