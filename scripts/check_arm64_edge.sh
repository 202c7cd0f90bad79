#!/usr/bin/env bash
# The arm64 edge image (scripts/build_edge_arm64.sh), run under qemu-user-static against the x86_64 cloud (this
# tree's `splitinfer serve`, every embedded bundle) on loopback, and the x86_64 edge runtime on the same edge
# packages (the files inside the arm64 image): every sample x every rung of each ladder, and a set of levels and
# bitrate hints of each variable-rate bundle, must give byte-identical messages and the same answers.
#
#   scripts/check_arm64_edge.sh          # after scripts/build_edge_arm64.sh (which runs it at its end)
#
# Environment: PYTHON (default .venv/bin/python), WORK (/var/tmp/splitinfer-images: logs and the two runs' JSON
# lines), TAG (dev: checks localhost/splitinfer-edge:$TAG-arm64), LEVELS (default -4,0,4,8,12,20,28,40, or `all`),
# BITRATES (0.05,0.1,0.2), HTTP_PORT / GRPC_PORT (18081 / 15052), ANSWERS_ONLY (set: pass when messages differ
# but every one is answered alike; each differing one is still listed with its differing symbols). Needs root (buildah) and qemu-aarch64 registered
# with binfmt_misc (scripts/build_edge_arm64.sh does it). No timing is reported: under emulation it would say
# nothing about an ARM board.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${WORK:-/var/tmp/splitinfer-images}
TAG=${TAG:-dev}
EDGE=localhost/splitinfer-edge:$TAG-arm64
HTTP_PORT=${HTTP_PORT:-18081}
GRPC_PORT=${GRPC_PORT:-15052}
LEVELS=${LEVELS:--4,0,4,8,12,20,28,40}
BITRATES=${BITRATES:-0.05,0.1,0.2}
mkdir -p "$WORK"
# the source the image's packages were exported from (scripts/build_edge_arm64.sh: the working tree or SOURCE_REV)
SRC=$(cat "$WORK/edge-arm64-context/source" 2>/dev/null || echo "$ROOT")
cd "$SRC"
export PYTHONPATH=$SRC
LOG_NAME=check_arm64_edge
# shellcheck source=docker/lib.sh
. "$ROOT/docker/lib.sh"
buildah_setup

command -v buildah >/dev/null || { log "no buildah (scripts/build_edge_arm64.sh installs it)"; exit 3; }
buildah inspect --type image "$EDGE" >/dev/null 2>&1 || { log "no image $EDGE: run scripts/build_edge_arm64.sh"; exit 3; }
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
    || { log "qemu-aarch64 is not registered with binfmt_misc: run scripts/build_edge_arm64.sh"; exit 3; }
interp=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)
log "emulator: $interp ($("$(readlink -f "$interp")" --version | head -1); qemu < 8.1 crashes ONNX Runtime, see build_edge_arm64.sh)"

ctr=$(buildah from "$EDGE")
mnt=$(buildah mount "$ctr")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
in_image() {  # in_image COMMAND...: as the image's service user, on the host network, under emulation
    buildah run --isolation chroot --network host --user 10001:10001 \
        -v "$ROOT/scripts/check_arm64_edge.py:/opt/check_arm64_edge.py:ro" "$ctr" -- "$@"
}
log "$EDGE: $(buildah inspect --type image --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}}/{{.OCIv1.Variant}}' "$EDGE"), \
$(buildah images --format '{{.Size}}' "$EDGE") (buildah images), du $(du -sh "$mnt" | cut -f1)"
# the compiled coder and integer hyper-decoder, when the image ships the library, must load there (else the Python
# coder and the numpy h_s would quietly take over)
log "inside: $(in_image python -c "import glob, platform, sys; from shared.codec import rans, integer_numpy as hs; \
shipped = glob.glob('/opt/splitinfer/app/shared/codec/_ranscoder*.so'); \
assert rans.implementation() == 'c' or not shipped, (shipped, rans.COMPILED_ERROR); \
assert hs.implementation() == 'c' or not shipped, (shipped, hs.COMPILED_ERROR); \
print(platform.machine(), 'Python', sys.version.split()[0], 'rANS coder:', rans.implementation(), \
'h_s:', hs.implementation(), *shipped)")"

# --- the cloud: x86_64, this tree, every embedded bundle -----------------------------------------------------
bundles=()
for b in "$SRC"/shared/assets/bundles/*/; do [ -f "$b/manifest.json" ] && bundles+=(--bundle "$b"); done
log "cloud: splitinfer serve (x86_64, source $SRC) on 127.0.0.1:$GRPC_PORT, $(( ${#bundles[@]} / 2 )) bundles"
"$PYTHON" -m splitinfer serve "${bundles[@]}" --host 127.0.0.1 --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --preload --log-format text > "$WORK/arm64-check-server.log" 2>&1 &
server_pid=$!
t0=$(date +%s)
until SPLITINFER_HTTP_PORT=$HTTP_PORT "$PYTHON" "$ROOT/docker/healthcheck.py" cloud 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 600 ]; then
        log "the server did not become ready"; tail -30 "$WORK/arm64-check-server.log"; exit 1
    fi
    sleep 3
done

# --- the two edges on the same packages and images: the files in the arm64 image ------------------------------
run_args=(run --server "127.0.0.1:$GRPC_PORT" "--levels=$LEVELS" "--bitrates=$BITRATES")  # (= : -4 is not an option)
log "x86_64 edge (this machine's runtime) on the image's packages"
"$PYTHON" "$ROOT/scripts/check_arm64_edge.py" "${run_args[@]}" --packages "$mnt/opt/splitinfer/edge" \
    --images "$mnt/opt/splitinfer/app/shared/assets/samples" > "$WORK/arm64-check-x86_64.jsonl"
log "arm64 edge (the image, under qemu-aarch64)"
in_image python /opt/check_arm64_edge.py "${run_args[@]}" --packages /opt/splitinfer/edge \
    --images /opt/splitinfer/app/shared/assets/samples > "$WORK/arm64-check-arm64.jsonl"
log "comparison"
"$PYTHON" "$ROOT/scripts/check_arm64_edge.py" compare "$WORK/arm64-check-x86_64.jsonl" "$WORK/arm64-check-arm64.jsonl" \
    --labels "$mnt/opt/splitinfer/app/shared/assets/samples/labels.csv" --packages "$mnt/opt/splitinfer/edge" \
    ${ANSWERS_ONLY:+--answers-only}
