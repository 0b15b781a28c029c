#!/usr/bin/env bash
# Build the Debian package of Ferrite with dpkg-deb: the binary, the systemd unit, an example
# configuration (also installed as /etc/ferrite/ferrite.toml, a conffile), the man page, shell
# completions and, as examples, the Grafana dashboard and the floating-portals unit drop-in.
#
#   ops/build-deb.sh BINARY OUTDIR [VERSION]
#
# BINARY is a built `ferrite` (cargo build --release -p ferrite: target/release/ferrite);
# VERSION defaults to the workspace's. Prints the path of the .deb it wrote.
set -euo pipefail

bin=${1:?usage: ops/build-deb.sh BINARY OUTDIR [VERSION]}
out=${2:?usage: ops/build-deb.sh BINARY OUTDIR [VERSION]}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
version=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)}
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/ferrite"
install -D -m 0644 "$here/ferrite.service" "$stage/lib/systemd/system/ferrite.service"
install -D -m 0644 "$here/ferrite.toml.example" "$stage/etc/ferrite/ferrite.toml"
install -D -m 0644 "$here/ferrite.toml.example" \
    "$stage/usr/share/doc/ferrite/examples/ferrite.toml"
install -D -m 0644 "$here/grafana-dashboard.json" \
    "$stage/usr/share/doc/ferrite/examples/grafana-dashboard.json"
install -D -m 0644 "$here/floating-portals.conf" \
    "$stage/usr/share/doc/ferrite/examples/floating-portals.conf"
install -D -m 0644 "$here/ferrite.8" "$stage/usr/share/man/man8/ferrite.8"
gzip -9n "$stage/usr/share/man/man8/ferrite.8"
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions"
"$bin" completions bash > "$stage/usr/share/bash-completion/completions/ferrite"
"$bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_ferrite"
install -d "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: ferrite
Version: $version
Architecture: $arch
Maintainer: Ferrite developers <ferrite@localhost>
Installed-Size: $size
Depends: libc6
Section: net
Priority: optional
Description: iSCSI target serving SCSI block devices
 Ferrite exports files, block devices and RAM disks over iSCSI (RFC 7143) to
 Linux, Windows, VMware and QEMU initiators: CHAP, ACLs, persistent
 reservations, multiple connections per session, error recovery up to level 2,
 Prometheus metrics and a systemd unit.
CONTROL
echo /etc/ferrite/ferrite.toml > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
# The unit is installed but not enabled: edit /etc/ferrite/ferrite.toml first, then
# systemctl enable --now ferrite.
# (Not for an installation into another root: DPKG_ROOT set.)
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] && [ "$1" = configure ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
POSTINST
chmod 0755 "$stage/DEBIAN/postinst"
mkdir -p "$out"
deb="$out/ferrite_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
