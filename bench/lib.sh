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
