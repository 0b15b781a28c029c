# shellcheck shell=bash
# Helpers the bench scripts share (sourced).

# serve_ferrite: start "$FERRITE_BIN" on "$SCRATCH/ferrite.toml" (log in "$SCRATCH/ferrite.log"),
# set FPID, and return once its portal 127.0.0.1:$PORT answers iscsi-ls (at most 10 s); exit
# with the log if the daemon dies first.
serve_ferrite() {
    "$FERRITE_BIN" serve --config "$SCRATCH/ferrite.toml" --admin-socket none --log warn \
        2>"$SCRATCH/ferrite.log" &
    FPID=$!
    for _ in $(seq 100); do
        iscsi-ls "iscsi://127.0.0.1:$PORT" >/dev/null 2>&1 && return 0
        kill -0 "$FPID" 2>/dev/null || { cat "$SCRATCH/ferrite.log" >&2; exit 1; }
        sleep 0.1
    done
}

# start_ceph: a throw-away single-node Ceph cluster (one monitor, one MemStore OSD: testkit's
# fixture, `cargo run -p testkit --example ceph`, built here in release); sets CONF to its
# ceph.conf, and CEPH_PID and CEPH_IN for stop_ceph. Needs $REPO and $SCRATCH. MemStore keeps
# about 2.7 times the bytes written in memory.
start_ceph() {
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null ||
        { echo "$(basename "$0"): needs ceph-mon and ceph-osd (Debian packages)" >&2; exit 1; }
    (cd "$REPO" && cargo build --release -q -p testkit --example ceph)
    mkfifo "$SCRATCH/ceph.in" "$SCRATCH/ceph.out"
    "$REPO/target/release/examples/ceph" <"$SCRATCH/ceph.in" >"$SCRATCH/ceph.out" 2>"$SCRATCH/ceph.log" &
    CEPH_PID=$!
    exec {CEPH_IN}>"$SCRATCH/ceph.in"
    local line
    read -r line <"$SCRATCH/ceph.out" || { cat "$SCRATCH/ceph.log" >&2; exit 1; }
    CONF="${line#CEPH_CONF=}"
}

# stop_ceph: stop what start_ceph started, if it did (closing the fixture's standard input
# stops it, and it stops the daemons it started).
stop_ceph() {
    [[ -n "${CEPH_PID:-}" ]] || return 0
    exec {CEPH_IN}>&- 2>/dev/null || true
    wait "$CEPH_PID" 2>/dev/null || true
}
