#!/bin/sh
# Edge container entry point: SPLITINFER_* environment -> `splitinfer edge` flags (see Dockerfile.edge).
# Arguments, when given, replace the image list (or run `splitinfer edge ...` / `--help` as given).
# SPLITINFER_EDGE_THREADS (ONNX Runtime threads, default 1) needs no flag: `splitinfer edge` reads it itself.
set -eu
case "${1:-}" in
    edge|--help|-h) exec python -m splitinfer "$@" ;;
    # these load PyTorch, which the edge image does not have (the cloud image runs them)
    models|train|train-teacher|encode|decode|eval|report|migrate|merge|demo|info|serve|export-edge|export-cloud)
        echo "splitinfer $1 needs PyTorch, which this edge image does not have: run it in the cloud image" >&2
        exit 2 ;;
esac
set -- --server "$SPLITINFER_SERVER" ${*:-${SPLITINFER_IMAGES}}
if [ -n "${SPLITINFER_KBPS:-}" ]; then
    set -- "$@" --kbps "$SPLITINFER_KBPS" --fps "${SPLITINFER_FPS:?SPLITINFER_FPS goes with SPLITINFER_KBPS}"
elif [ -n "${SPLITINFER_RUNG:-}" ]; then
    set -- "$@" --rung "$SPLITINFER_RUNG"
elif [ -n "${SPLITINFER_BITRATE:-}" ]; then
    set -- "$@" --bitrate "$SPLITINFER_BITRATE"
fi
on() { case "$(echo "${1:-}" | tr A-Z a-z)" in 1|true|yes|on) return 0 ;; esac; return 1; }
on "${SPLITINFER_STREAM:-}" && set -- "$@" --stream
on "${SPLITINFER_REST:-}" && set -- "$@" --rest
on "${SPLITINFER_TLS:-}" && set -- "$@" --tls
on "${SPLITINFER_JSON:-}" && set -- "$@" --json
[ -n "${SPLITINFER_CA_CERT:-}" ] && set -- "$@" --ca-cert "$SPLITINFER_CA_CERT"
[ -n "${SPLITINFER_BUNDLE:-}" ] && set -- "$@" --bundle "$SPLITINFER_BUNDLE"
[ -n "${SPLITINFER_TIMEOUT_S:-}" ] && set -- "$@" --timeout "$SPLITINFER_TIMEOUT_S"
if [ -n "${SPLITINFER_API_KEY_FILE:-}" ]; then
    SPLITINFER_API_KEY=$(grep -v '^[[:space:]]*#' "$SPLITINFER_API_KEY_FILE" | head -n 1 | tr -d '[:space:]')
    export SPLITINFER_API_KEY
fi
repeat=${SPLITINFER_REPEAT:-1}   # 0 = forever
i=0
while :; do
    rc=0
    python -m splitinfer edge "$@" || rc=$?
    i=$((i + 1))
    if [ "$repeat" -ne 0 ] && [ "$i" -ge "$repeat" ]; then break; fi
    sleep "${SPLITINFER_INTERVAL_S:-5}"
done
exit "$rc"
