# shellcheck shell=bash
# Shared by .ci/run and .ci/bench-deps (sourced, not run): the apt helpers that install the
# external peers on a Debian machine, qemu-block-extra from <codename>-backports included.
# Expects to be sourced from the repository root, under `set -euo pipefail`.

log() { printf '==> %s\n' "$*" >&2; }

# The Debian codename (bookworm); qemu-block-extra must come from <codename>-backports, the suite
# the machine's qemu-utils was installed from.
codename() {
    local c=""
    if [[ -r /etc/os-release ]]; then
        c="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    fi
    echo "${c:-bookworm}"
}
CODENAME="$(codename)"
BACKPORTS="${CODENAME}-backports"
APT_ETC="${FERRITE_CI_APT_ETC:-/etc/apt}"   # overridable only to test this script

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep "install ok installed" >/dev/null; }

# Print "URI<TAB>SUITE<TAB>SIGNED-BY" for every enabled `deb` entry of the machine's apt sources,
# one-line (*.list) and deb822 (*.sources) formats alike.
apt_entries() {
    local f
    for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        # deb [opt=val ...] URI SUITE COMPONENT...
        awk '
            /^[[:space:]]*#/ || NF < 3 { next }
            $1 != "deb" { next }
            {
                i = 2; signed = ""
                if ($i ~ /^\[/) {
                    while (i <= NF) {
                        o = $i; gsub(/[\[\]]/, "", o)
                        if (o ~ /^signed-by=/) { sub(/^signed-by=/, "", o); signed = o }
                        if ($i ~ /\]$/) { i++; break }
                        i++
                    }
                }
                if (i + 1 <= NF) printf "%s\t%s\t%s\n", $i, $(i + 1), signed
            }' "$f"
    done
    for f in "$APT_ETC"/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        # Stanzas separated by blank lines; continuation lines start with white space.
        awk '
            function flush(   n, u, s, i, j, us, ss) {
                if (types ~ /(^|[[:space:]])deb([[:space:]]|$)/ && tolower(enabled) != "no") {
                    n = split(uris, us, /[[:space:]]+/)
                    m = split(suites, ss, /[[:space:]]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (us[i] != "" && ss[j] != "") printf "%s\t%s\t%s\n", us[i], ss[j], signed
                }
                types = uris = suites = signed = enabled = ""; key = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]/ { next }   # continuation (e.g. an inline key): not needed
            {
                k = $0; sub(/:.*/, "", k); k = tolower(k)
                v = $0; sub(/^[^:]*:[[:space:]]*/, "", v)
                if (k == "types") types = v
                else if (k == "uris") uris = v
                else if (k == "suites") suites = v
                else if (k == "enabled") enabled = v
                # Only a key file path is carried over, not an inline key block.
                else if (k == "signed-by" && v ~ /^\//) signed = v
            }
            END { flush() }' "$f"
    done
}

# Add a <codename>-backports entry that mirrors the machine's Debian main archive entry, unless
# one exists. Returns 0 when a new entry was written.
ensure_backports() {
    local entries uri signed
    entries="$(apt_entries)"
    if awk -F'\t' -v s="$BACKPORTS" '$2 == s { found = 1 } END { exit !found }' <<<"$entries"; then
        log "apt: a ${BACKPORTS} entry exists"
        return 1
    fi
    # The main archive: the entry for the plain codename suite, whose URI is not the security one.
    uri="$(awk -F'\t' -v s="$CODENAME" '$2 == s && $1 !~ /security/ { print $1; exit }' <<<"$entries")"
    signed="$(awk -F'\t' -v s="$CODENAME" -v u="$uri" '$2 == s && $1 == u { print $3; exit }' <<<"$entries")"
    if [[ -z "$uri" ]]; then
        echo "ci: no Debian '${CODENAME}' archive entry in $APT_ETC/sources.list{,.d}; cannot add ${BACKPORTS}" >&2
        exit 1
    fi
    log "apt: adding ${BACKPORTS} from ${uri}"
    {
        echo "Types: deb"
        echo "URIs: ${uri}"
        echo "Suites: ${BACKPORTS}"
        echo "Components: main"
        if [[ -n "$signed" ]]; then echo "Signed-By: ${signed}"; fi
    } >"$APT_ETC"/sources.list.d/ferrite-ci-backports.sources
    return 0
}

# qemu-img can open iscsi:// (the module from qemu-block-extra loads and matches qemu-img).
# `qemu-img --help` lists iscsi even when the module is absent, so ask the driver itself: against
# a closed loopback port it fails to connect when loaded, and says "Unknown driver" otherwise.
qemu_has_iscsi() {
    local out
    command -v qemu-img >/dev/null || return 1
    out="$(qemu-img info --image-opts \
        driver=iscsi,transport=tcp,portal=127.0.0.1:1,target=iqn.2026-11.io.ferrite:probe,lun=0 2>&1 || true)"
    ! grep -E "Unknown driver|Unable to load module|Unknown protocol" >/dev/null <<<"$out"
}

apt_retry() {
    local i
    for i in 1 2 3; do
        "$@" && return 0
        log "apt: '$*' failed (try $i of 3)"
        sleep $((i * 5))
    done
    return 1
}
