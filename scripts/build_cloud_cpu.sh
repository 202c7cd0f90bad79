#!/usr/bin/env bash
# Build the torch-free CPU cloud image (docker/Dockerfile.cloud-cpu) for linux/amd64 with buildah, then run it:
# the server in the image on loopback, and this machine's edge runtime sending every sample x every rung of each
# ladder and a set of levels and hints of each variable-rate bundle (scripts/check_arm64_edge.py run); every
# message must be answered, and, when the PyTorch cloud's answers to the same messages are there
# ($WORK/arm64-check-x86_64.jsonl, from scripts/check_arm64_edge.sh), answered alike.
#
#   scripts/build_cloud_cpu.sh                    # base (once), context, image, check     (make images-cloud-cpu)
#   scripts/build_cloud_cpu.sh image check        # only these steps (of: base context image check)
#
# The build context ($WORK/cloud-cpu-context) is made here, where torch is installed: prebuilt/cloud (every bundle
# of shared/assets/bundles exported with `splitinfer export-cloud`), prebuilt/app (the source without rung weights,
# with the gRPC stubs and the rANS coder + integer h_s compiled with this machine's cc, -O3), prebuilt/wheels
# (requirements-cloud-cpu.txt's manylinux x86_64 wheels, `pip download`; pip installs them offline).
# Environment: PYTHON (default .venv/bin/python), WORK (/var/tmp/splitinfer-images), TAG (dev: the image is
# localhost/splitinfer-cloud-cpu:$TAG), BASE_IMAGE (default: docker/lib.sh's localhost/splitinfer-base:bookworm-slim),
# DEBIAN_MIRROR, HTTP_PORT / GRPC_PORT (18082 / 15053), LEVELS, BITRATES (as scripts/check_arm64_edge.sh),
# REFERENCE (the PyTorch cloud's answers to compare with). Needs root (buildah, debootstrap).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${WORK:-/var/tmp/splitinfer-images}
TAG=${TAG:-dev}
BASE_IMAGE=${BASE_IMAGE:-localhost/splitinfer-base:bookworm-slim}
IMAGE=localhost/splitinfer-cloud-cpu:$TAG
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HTTP_PORT=${HTTP_PORT:-18082}
GRPC_PORT=${GRPC_PORT:-15053}
LEVELS=${LEVELS:--4,0,4,8,12,20,28,40}
BITRATES=${BITRATES:-0.05,0.1,0.2}
REFERENCE=${REFERENCE:-$WORK/arm64-check-x86_64.jsonl}
CTX=$WORK/cloud-cpu-context
mkdir -p "$WORK"
LOG_NAME=build_cloud_cpu
# shellcheck source=docker/lib.sh
. "$ROOT/docker/lib.sh"

STEPS=${*:-base context image check}
step() { [[ " $STEPS " == *" $1 "* ]]; }

need_tools buildah=buildah debootstrap=debootstrap
buildah_setup

if step base && [ "$BASE_IMAGE" = localhost/splitinfer-base:bookworm-slim ]; then
    make_base "$BASE_IMAGE"
fi

# --- the build context, made here (export-cloud needs torch) -------------------------------------------------
if step context; then
t0=$(date +%s)
log "build context -> $CTX"
rm -rf "$CTX"
mkdir -p "$CTX/docker" "$CTX/prebuilt/app" "$CTX/prebuilt/cloud" "$CTX/prebuilt/wheels"
cp "$ROOT/requirements-cloud-cpu.txt" "$CTX/"
cp "$ROOT/docker/pip-install.sh" "$ROOT/docker/healthcheck.py" "$ROOT/docker/cloud-cpu-entrypoint.sh" "$CTX/docker/"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude='_ranscoder*.so' --exclude='rung-*.safetensors' \
    -cf - proto shared edge_client cloud_server splitinfer | tar -C "$CTX/prebuilt/app" -xf -
find "$CTX/prebuilt/app/shared/_proto" -type f ! -name __init__.py -delete
(cd "$CTX/prebuilt/app" && PYTHONPATH=. "$PYTHON" -m shared.proto_build)
# the coder and the integer h_s (every C file of shared/codec), for the image's python3.11 on this architecture
so=$CTX/prebuilt/app/shared/codec/_ranscoder.cpython-311-$(uname -m)-linux-gnu.so
cc -O3 -std=c99 -Wall -shared -fPIC -o "$so" "$ROOT"/shared/codec/*.c
for b in "$ROOT"/shared/assets/bundles/*/; do
    [ -f "$b/manifest.json" ] || continue
    log "  export-cloud $(basename "$b")"
    (cd "$ROOT" && PYTHONPATH=$ROOT "$PYTHON" -m splitinfer export-cloud --bundle "$b" \
        --out "$CTX/prebuilt/cloud/$(basename "$b")" > /dev/null)
done
log "  x86_64 wheels of requirements-cloud-cpu.txt"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    -d "$CTX/prebuilt/wheels" -r "$ROOT/requirements-cloud-cpu.txt" setuptools==84.2.1 wheel==0.48.0
find "$CTX" -name __pycache__ -prune -exec rm -rf {} +
chmod -R a+rX "$CTX"
log "context ready in $(( $(date +%s) - t0 )) s ($(du -sh "$CTX/prebuilt/cloud" | cut -f1) of cloud packages, \
$(ls "$CTX/prebuilt/wheels" | wc -l) wheels, $(du -sh "$CTX/prebuilt/wheels" | cut -f1) of them)"
fi

# --- the image -------------------------------------------------------------------------------------------------
if step image; then
t0=$(date +%s)
blog=$WORK/build-Dockerfile.cloud-cpu.log
log "building $IMAGE (log: $blog)"
if ! buildah bud --isolation chroot --layers --format docker --platform linux/amd64 \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f "$ROOT/docker/Dockerfile.cloud-cpu" "$CTX" > "$blog" 2>&1; then
    tail -30 "$blog"; exit 1
fi
log "built $IMAGE in $(( $(date +%s) - t0 )) s"
log "image: $(buildah images --format '{{.Size}}' "$IMAGE") (buildah images)"
fi

# --- the check: serve from the image, send from this machine's edge ---------------------------------------------
if step check; then
ctr=$(buildah from "$IMAGE")
mnt=$(buildah mount "$ctr")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
log "$IMAGE: $(buildah images --format '{{.Size}}' "$IMAGE") (buildah images), du $(du -sh "$mnt" | cut -f1); \
venv $(du -sh "$mnt/opt/venv" | cut -f1), packages $(du -sh "$mnt/opt/splitinfer/cloud" | cut -f1)"
log "torch in the image: $(buildah run --isolation chroot "$ctr" -- python -c \
    "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'compressai') if u.find_spec(m)] or 'none')")"
log "server: the image's entry point (uid 10001, host network) on 127.0.0.1:$GRPC_PORT / :$HTTP_PORT"
buildah run --isolation chroot --network host --user 10001:10001 -e SPLITINFER_HOST=127.0.0.1 \
    -e "SPLITINFER_HTTP_PORT=$HTTP_PORT" -e "SPLITINFER_GRPC_PORT=$GRPC_PORT" -e SPLITINFER_LOG_FORMAT=text \
    "$ctr" -- /opt/splitinfer/cloud-cpu-entrypoint.sh > "$WORK/cloud-cpu-server.log" 2>&1 &
server_pid=$!
t0=$(date +%s)
until SPLITINFER_HTTP_PORT=$HTTP_PORT "$PYTHON" "$ROOT/docker/healthcheck.py" cloud 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 600 ]; then
        log "the server did not become ready"; tail -30 "$WORK/cloud-cpu-server.log"; exit 1
    fi
    sleep 2
done
log "healthy after $(( $(date +%s) - t0 )) s; $(grep -c ': bundle .*(onnx runtime)' "$WORK/cloud-cpu-server.log" || true) \
of $(grep -c 'serving [^ ]*: bundle' "$WORK/cloud-cpu-server.log" || true) models served by ONNX Runtime"
# the edge: this machine's runtime on the edge packages (those of the arm64 check, else exported now)
edge=$WORK/edge-arm64-context/prebuilt/edge
if [ ! -d "$edge" ]; then
    edge=$WORK/cloud-cpu-edge
    for b in "$ROOT"/shared/assets/bundles/*/; do
        [ -f "$b/manifest.json" ] && [ ! -d "$edge/$(basename "$b")" ] && (cd "$ROOT" && PYTHONPATH=$ROOT "$PYTHON" \
            -m splitinfer export-edge --bundle "$b" --out "$edge/$(basename "$b")" > /dev/null)
    done
fi
out=$WORK/cloud-cpu-check.jsonl
(cd "$ROOT" && PYTHONPATH=$ROOT "$PYTHON" "$ROOT/scripts/check_arm64_edge.py" run --server "127.0.0.1:$GRPC_PORT" \
    "--levels=$LEVELS" "--bitrates=$BITRATES" --packages "$edge" --images "$ROOT/shared/assets/samples") > "$out"
log "$(wc -l < "$out") messages sent, $(grep -c '"ok": true' "$out") answered"
if [ -f "$REFERENCE" ]; then
    log "against the PyTorch cloud's answers to the same edge ($REFERENCE)"
    (cd "$ROOT" && PYTHONPATH=$ROOT "$PYTHON" "$ROOT/scripts/check_arm64_edge.py" compare "$REFERENCE" "$out" \
        --labels "$ROOT/shared/assets/samples/labels.csv")
else
    [ "$(wc -l < "$out")" = "$(grep -c '"ok": true' "$out")" ] || { log "FAILED: not every message answered"; exit 1; }
fi
fi
