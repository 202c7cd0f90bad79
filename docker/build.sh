#!/usr/bin/env bash
# Build docker/Dockerfile.cloud, then docker/Dockerfile.edge FROM it (its export stage runs `splitinfer export-edge`
# in the cloud image just built), with buildah (no Docker engine needed) on a Debian bookworm base made locally
# with debootstrap; then run the server inside the cloud image and the edge client inside the edge image on
# loopback and check real answers across them. Prints image sizes and build times.
#
#   docker/build.sh                  # base (once) + both images + the cross check      (make images)
#   IMAGES=edge docker/build.sh      # rebuild only the edge image (the cloud image must exist), then the check
#   SKIP_BUILD=1 docker/build.sh     # only the cross check on images already built
#   NO_CHECK=1 docker/build.sh       # build only
#
# Environment: WORK (default /var/tmp/splitinfer-images: base rootfs, containers.conf, logs), BASE_IMAGE
# (default: the locally made localhost/splitinfer-base:bookworm-slim; any python3.11 image works), TAG (dev),
# IMAGES (default "cloud edge"), TORCH_INDEX_URL (cloud build arg, see docs/deploy.md), PIP_CERT (pip's CA
# bundle, passed as the build secret `pipcert`, never baked in), DEBIAN_MIRROR, HTTP_PORT / GRPC_PORT
# (loopback ports for the check).
# Needs root (buildah with chroot isolation, debootstrap); installs buildah and debootstrap with apt-get if missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/var/tmp/splitinfer-images}
TAG=${TAG:-dev}
BASE_IMAGE=${BASE_IMAGE:-localhost/splitinfer-base:bookworm-slim}
CLOUD=localhost/splitinfer-cloud:$TAG
EDGE=localhost/splitinfer-edge:$TAG
HTTP_PORT=${HTTP_PORT:-18080}
GRPC_PORT=${GRPC_PORT:-15051}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$WORK"
LOG_NAME=build.sh
# shellcheck source=docker/lib.sh
. "$ROOT/docker/lib.sh"

# --- tools and configuration --------------------------------------------------------------------------
need_tools buildah=buildah debootstrap=debootstrap
buildah_setup

# --- base image: Debian bookworm + Debian's python3.11 (stand-in for python:3.11-slim-bookworm) -----------
[ "$BASE_IMAGE" = localhost/splitinfer-base:bookworm-slim ] && make_base "$BASE_IMAGE"

# --- the two images ----------------------------------------------------------------------------------
build() {  # build NAME DOCKERFILE [--build-arg ...]
    local name=$1 file=$2 t0 secret=() log
    shift 2
    log=$WORK/build-$(basename "$file").log
    [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ] && secret=(--secret "id=pipcert,src=$PIP_CERT")
    t0=$(date +%s)
    log "building $name from $file (log: $log)"
    if ! buildah bud --isolation chroot --layers --format docker "${secret[@]}" \
            --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" -t "$name" -f "$ROOT/$file" "$ROOT" > "$log" 2>&1; then
        tail -30 "$log"; exit 1
    fi
    echo "$(( $(date +%s) - t0 ))" > "$WORK/buildtime-$(basename "$file")"
    log "built $name in $(cat "$WORK/buildtime-$(basename "$file")") s"
}
[ -n "${SKIP_BUILD:-}" ] && IMAGES=
for image in ${IMAGES-cloud edge}; do
    case $image in
        cloud) build "$CLOUD" docker/Dockerfile.cloud --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" ;;
        # the edge's export stage runs in the cloud image just built: its packages match what that image serves
        # (EDGE_EXPORT given although it is the default: buildah 1.28 resolves a stage named by a build argument
        # in FROM only when the argument is passed, not from its default)
        edge) build "$EDGE" docker/Dockerfile.edge --build-arg "CLOUD_IMAGE=$CLOUD" --build-arg EDGE_EXPORT=export ;;
        *) log "IMAGES: unknown image $image (cloud, edge)"; exit 2 ;;
    esac
done
[ -n "${NO_CHECK:-}" ] && exit 0

# --- cross check: server in the cloud image, client in the edge image, on loopback ------------------------
cloud_ctr=$(buildah from "$CLOUD")
edge_ctr=$(buildah from "$EDGE")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    buildah rm "$cloud_ctr" "$edge_ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting the server in $CLOUD (REST 127.0.0.1:$HTTP_PORT, gRPC 127.0.0.1:$GRPC_PORT)"
buildah run --isolation chroot --network host --user 10001:10001 \
    -e SPLITINFER_HOST=127.0.0.1 -e SPLITINFER_HTTP_PORT="$HTTP_PORT" -e SPLITINFER_GRPC_PORT="$GRPC_PORT" \
    -e SPLITINFER_LOG_FORMAT=text "$cloud_ctr" -- python -m splitinfer serve > "$WORK/cloud-server.log" 2>&1 &
server_pid=$!
t0=$(date +%s)
until buildah run --isolation chroot --network host --user 10001:10001 -e SPLITINFER_HTTP_PORT="$HTTP_PORT" \
        "$cloud_ctr" -- python /opt/splitinfer/healthcheck.py cloud 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 300 ]; then
        log "server did not become ready"; tail -30 "$WORK/cloud-server.log"; exit 1
    fi
    sleep 2
done
log "server ready after $(( $(date +%s) - t0 )) s (health check inside the cloud image)"

run_edge() {  # run_edge SERVER [extra env...]
    local server=$1; shift
    buildah run --isolation chroot --network host --user 10001:10001 -e SPLITINFER_SERVER="$server" \
        -e SPLITINFER_BITRATE=0.25 -e SPLITINFER_JSON=1 "$@" "$edge_ctr" -- /opt/splitinfer/edge-entrypoint.sh
}
check() {  # check JSON_LINES_FILE: every sample answered, top-1 against labels.csv
    python3 - "$1" "$ROOT/shared/assets/samples/labels.csv" <<'PY'
import csv, json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
labels = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(open(sys.argv[2]))}
assert len(rows) == len(labels), f"{len(rows)} answers for {len(labels)} samples"
bad = [r for r in rows if not r["ok"]]
assert not bad, bad
hits = sum(r["topk"][0][0] == labels[os.path.basename(r["image"])] for r in rows)
for r in rows:
    print(f"  {os.path.basename(r['image'])}: rung {r['rung']}, {r['bytes']} B, {r['bpp']:.3f} bpp, "
          f"{r['latency_ms']:.0f} ms -> {r['topk'][0][1]}")
print(f"  {len(rows)} answers, top-1 correct {hits}/{len(rows)}")
assert hits >= len(rows) // 2, "too few correct top-1 answers"
PY
}
log "edge client in $EDGE -> 127.0.0.1:$GRPC_PORT (gRPC, 0.25 bpp)"
run_edge "127.0.0.1:$GRPC_PORT" > "$WORK/edge.jsonl" 2> "$WORK/edge.err" || { cat "$WORK/edge.err"; exit 1; }
check "$WORK/edge.jsonl"
log "edge client, target dns:///localhost:$GRPC_PORT with round_robin (the compose replica set-up)"
run_edge "dns:///localhost:$GRPC_PORT" -e SPLITINFER_GRPC_LB_POLICY=round_robin -e SPLITINFER_BITRATE=0.1 \
    > "$WORK/edge-rr.jsonl" 2> "$WORK/edge-rr.err" || { cat "$WORK/edge-rr.err"; exit 1; }
check "$WORK/edge-rr.jsonl"
log "edge client with the deep ladder's package (SPLITINFER_BUNDLE=.../efficientnet_lite0-block14, 0.1 bpp, 2 threads)"
run_edge "127.0.0.1:$GRPC_PORT" -e SPLITINFER_BUNDLE=/opt/splitinfer/edge/efficientnet_lite0-block14 \
    -e SPLITINFER_BITRATE=0.1 -e SPLITINFER_EDGE_THREADS=2 > "$WORK/edge-deep.jsonl" 2> "$WORK/edge-deep.err" \
    || { cat "$WORK/edge-deep.err"; exit 1; }
check "$WORK/edge-deep.jsonl"
log "edge health check (inside the edge image, against the server)"
buildah run --isolation chroot --network host --user 10001:10001 -e SPLITINFER_SERVER="127.0.0.1:$GRPC_PORT" \
    "$edge_ctr" -- python /opt/splitinfer/healthcheck.py edge
log "edge image: no PyTorch, no server stack; the answers come from the ONNX runtime (in-process check):"
buildah run --isolation chroot --network host --user 10001:10001 -e SPLITINFER_SERVER="127.0.0.1:$GRPC_PORT" \
    "$edge_ctr" -- python -c "
import glob, importlib.util as u, os, sys
mods = ['torch', 'torchvision', 'compressai', 'grpc_tools', 'pip', 'fastapi', 'uvicorn', 'starlette',
        'prometheus_client', 'pydantic_settings', 'cloud_server']
present = [m for m in mods if u.find_spec(m)]
print('  absent:', ', '.join(m for m in mods if m not in present)); assert not present, present
from edge_client import EdgeClient
images = sorted(glob.glob(os.path.join(os.environ['SPLITINFER_IMAGES'], '*.JPEG')))
for pkg in sorted(glob.glob('/opt/splitinfer/edge/*/')):
    with EdgeClient(os.environ['SPLITINFER_SERVER'], bundle=pkg) as c:
        rs = list(c.infer_many(images, bitrate=0.25))
    enc = type(c.encoder).__name__
    assert enc == 'OnnxEdgeEncoder' and all(r.ok for r in rs), (enc, [r.error for r in rs if not r.ok])
    print(f'  {os.path.basename(os.path.normpath(pkg))}: {len(rs)} answers from {enc} (bundle {c.bundle.bundle_id}, '
          f'package {c.encoder.package.package_id}, {c.encoder.threads} thread(s))')
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'compressai', 'onnxruntime'})
print('  loaded:', ', '.join(loaded)); assert loaded == ['onnxruntime'], loaded"
log "edge entrypoint refuses the subcommands that need PyTorch:"
if buildah run --isolation chroot --user 10001:10001 "$edge_ctr" -- /opt/splitinfer/edge-entrypoint.sh info \
        2> "$WORK/edge-info.err"; then
    log "edge-entrypoint.sh info should have failed"; exit 1
fi
grep 'needs PyTorch' "$WORK/edge-info.err" | sed 's/^/  /' || { cat "$WORK/edge-info.err"; exit 1; }

# --- report -------------------------------------------------------------------------------------------
echo
log "images (uncompressed; buildah images, and du of the mounted file system):"
for image in "$BASE_IMAGE" "$CLOUD" "$EDGE"; do
    ctr=$(buildah from "$image") && mnt=$(buildah mount "$ctr")
    size=$(buildah images --format '{{.Size}}' "$image")
    printf '  %-42s %9s  (du: %s)\n' "$image" "$size" "$(du -sh "$mnt" | cut -f1)"
    buildah umount "$ctr" >/dev/null; buildah rm "$ctr" >/dev/null
done
for f in Dockerfile.cloud Dockerfile.edge; do
    [ -f "$WORK/buildtime-$f" ] && log "last build time of $f: $(cat "$WORK/buildtime-$f") s"
done
log "OK: the edge image's client (ONNX Runtime, no PyTorch) got real answers from the cloud image's server"
