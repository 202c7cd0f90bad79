#!/usr/bin/env bash
# Build the edge image (docker/Dockerfile.edge) for linux/arm64 on this x86_64 machine with buildah and
# qemu-user-static, without any cloud image: everything that runs PyTorch or pip's resolver runs here, natively.
#
#   scripts/build_edge_arm64.sh                 # base (once), context, image, then scripts/check_arm64_edge.sh
#   NO_CHECK=1 scripts/build_edge_arm64.sh      # build only
#   scripts/build_edge_arm64.sh context image   # only these steps (of: base context image check)
#
# 1. binfmt_misc: qemu-aarch64 registered with the `F` flag (the interpreter opened now, so it also runs inside
#    chroots and buildah's chroot isolation): Debian's /usr/lib/binfmt.d/qemu-aarch64.conf written to the kernel,
#    with a qemu >= 8 (bookworm's 7.2 crashes ONNX Runtime: see below).
# 2. A Debian bookworm arm64 base (debootstrap --arch=arm64, second stage under qemu), slimmed as for amd64.
# 3. A build context in $WORK/edge-arm64-context, made here: prebuilt/app (proto/, shared/ without rung weights and
#    with the generated gRPC stubs, edge_client/, splitinfer/: what the Dockerfile's export stage writes),
#    prebuilt/edge (every bundle in shared/assets/bundles exported with `splitinfer export-edge` from this tree's
#    .venv), prebuilt/wheels
#    (requirements-edge.txt's aarch64 wheels, `pip download --platform ...`) and the rANS coder cross-compiled for
#    aarch64 with Debian's aarch64-linux-gnu-gcc into prebuilt/app/shared/codec (every C file there, -O3).
# 4. buildah bud --platform linux/arm64 --build-arg EDGE_EXPORT=export-prebuilt: only the final stage runs under
#    emulation (venv, an offline pip install, the build checks).
#
# Environment: SOURCE_REV (a git revision: export, app, and the check's cloud and x86 edge all from
# `git archive SOURCE_REV` in $WORK/edge-arm64-src, not from the working tree, e.g. HEAD while others edit it),
# PYTHON (default .venv/bin/python: the full install, for export-edge), WORK (default
# /var/tmp/splitinfer-images), TAG (dev: the image is localhost/splitinfer-edge:$TAG-arm64), BASE_IMAGE (default: the
# locally made localhost/splitinfer-base:bookworm-slim-arm64), DEBIAN_MIRROR, CROSS_CC (aarch64-linux-gnu-gcc),
# QEMU_AARCH64 (a qemu-aarch64 >= 8.1 to register; default: qemu-aarch64-static if >= 8, else bookworm-backports'),
# NO_CHECK. Needs root (binfmt_misc, debootstrap, buildah); installs buildah, debootstrap, qemu-user-static and
# gcc-aarch64-linux-gnu with apt-get if missing. Timings under emulation say nothing about an ARM board.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${WORK:-/var/tmp/splitinfer-images}
TAG=${TAG:-dev}
BASE_IMAGE=${BASE_IMAGE:-localhost/splitinfer-base:bookworm-slim-arm64}
EDGE=localhost/splitinfer-edge:$TAG-arm64
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
CTX=$WORK/edge-arm64-context
mkdir -p "$WORK"
LOG_NAME=build_edge_arm64
# shellcheck source=docker/lib.sh
. "$ROOT/docker/lib.sh"

STEPS=${*:-base context image check}
[ -n "${NO_CHECK:-}" ] && STEPS=${STEPS//check/}
step() { [[ " $STEPS " == *" $1 "* ]]; }

need_tools buildah=buildah debootstrap=debootstrap qemu-aarch64-static=qemu-user-static "$CROSS_CC=gcc-aarch64-linux-gnu"
buildah_setup

# --- 1. qemu and binfmt_misc ---------------------------------------------------------------------------------
# qemu >= 8.1 answers /proc/cpuinfo for an aarch64 guest; bookworm's 7.2 shows it the host's x86 one, and ONNX
# Runtime (its cpuinfo library) then dies with SIGSEGV on import wherever /proc and /sys are both mounted, as in
# buildah's RUN and run. So with qemu < 8 the interpreter is bookworm-backports' (apt-get download of qemu-user, a
# private package list, nothing installed), unpacked into $WORK/qemu. QEMU_AARCH64 names another one.
conf=/usr/lib/binfmt.d/qemu-aarch64.conf  # qemu-user-static's: flags OPF (F: usable inside a chroot)
[ -f "$conf" ] || { log "no $conf (apt-get install qemu-user-static)"; exit 1; }
qemu=${QEMU_AARCH64:-$(command -v qemu-aarch64-static)}
if [ -z "${QEMU_AARCH64:-}" ] && [ "$("$qemu" --version | sed -n 's/.*version \([0-9]*\).*/\1/p;q')" -lt 8 ]; then
    qemu=$WORK/qemu/qemu-aarch64
    if [ ! -x "$qemu" ]; then
        log "$(qemu-aarch64-static --version | head -1) cannot run ONNX Runtime: qemu-user from bookworm-backports"
        apt=$WORK/qemu/apt
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
        echo "deb ${DEBIAN_MIRROR} bookworm-backports main" > "$apt/sources.list"
        opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
        apt-get "${opts[@]}" update -q >/dev/null
        (cd "$apt/deb" && apt-get "${opts[@]}" download qemu-user/bookworm-backports 2>/dev/null)
        dpkg-deb --fsys-tarfile "$apt"/deb/qemu-user_*.deb | tar -xO ./usr/bin/qemu-aarch64 > "$qemu.new"
        chmod 755 "$qemu.new" && mv "$qemu.new" "$qemu"
    fi
fi
# the binfmt-P name: Debian's qemu then keeps the program's argv[0] (flag P), as the packaged registration does
if [ "$qemu" = "$(command -v qemu-aarch64-static)" ]; then
    interp=/usr/libexec/qemu-binfmt/aarch64-binfmt-P  # the package's own
else
    interp=$(dirname "$qemu")/aarch64-binfmt-P
    [ -e "$interp" ] || ln -s "$(basename "$qemu")" "$interp"
fi
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
if [ -e "$binfmt/qemu-aarch64" ] && ! grep -qx "interpreter $interp" "$binfmt/qemu-aarch64"; then
    echo -1 > "$binfmt/qemu-aarch64"  # registered with another interpreter
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    log "registering $interp ($("$qemu" --version | head -1)) for aarch64 with binfmt_misc"
    sed "s|:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:|:$interp:|" "$conf" > "$binfmt/register"
fi
grep -q '^flags: .*F' "$binfmt/qemu-aarch64" \
    || { log "qemu-aarch64 is registered without the F flag: it will not run inside a chroot"; exit 1; }

# --- 2. arm64 base -----------------------------------------------------------------------------------------
if step base && [ "$BASE_IMAGE" = localhost/splitinfer-base:bookworm-slim-arm64 ]; then
    make_base "$BASE_IMAGE" arm64
fi

# --- 3. the build context ----------------------------------------------------------------------------------
if step context; then
t0=$(date +%s)
log "build context -> $CTX"
rm -rf "$CTX"
mkdir -p "$CTX/docker" "$CTX/prebuilt/app" "$CTX/prebuilt/edge" "$CTX/prebuilt/wheels"
SRC=$ROOT
if [ -n "${SOURCE_REV:-}" ]; then
    SRC=$WORK/edge-arm64-src
    log "  source: git archive $SOURCE_REV ($(git -C "$ROOT" rev-parse --short "$SOURCE_REV")) -> $SRC"
    rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$ROOT" archive "$SOURCE_REV" proto shared edge_client cloud_server splitinfer | tar -C "$SRC" -xf -
    (cd "$SRC" && PYTHONPATH=$SRC "$PYTHON" -m shared.proto_build >/dev/null)
    # this machine's build of the coder, for the x86_64 side of the check (as `pip install -e .` makes it)
    cc -O3 -std=c99 -shared -fPIC -o "$SRC/shared/codec/_ranscoder$("$PYTHON" -c \
        'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" "$SRC"/shared/codec/*.c
fi
echo "$SRC" > "$CTX/source"  # scripts/check_arm64_edge.sh serves and encodes on x86_64 from the same source
cp "$ROOT/requirements-edge.txt" "$CTX/"
cp "$ROOT"/docker/*.sh "$ROOT/docker/healthcheck.py" "$CTX/docker/"
# the app as the export stage leaves it: the source, no rung weights, no library built for this machine
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' --exclude='_ranscoder*.so' --exclude='rung-*.safetensors' \
    -cf - proto shared edge_client splitinfer | tar -C "$CTX/prebuilt/app" -xf -
find "$CTX/prebuilt/app/shared/_proto" -type f ! -name __init__.py -delete  # regenerated from proto/ just below
(cd "$CTX/prebuilt/app" && PYTHONPATH=. "$PYTHON" -m shared.proto_build)
for b in "$SRC"/shared/assets/bundles/*/; do
    [ -f "$b/manifest.json" ] || continue
    log "  export-edge $(basename "$b")"
    (cd "$SRC" && PYTHONPATH=$SRC "$PYTHON" -m splitinfer export-edge --bundle "$b" \
        --out "$CTX/prebuilt/edge/$(basename "$b")" > /dev/null)
done
log "  aarch64 wheels of requirements-edge.txt"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 --platform any \
    -d "$CTX/prebuilt/wheels" -r "$ROOT/requirements-edge.txt" setuptools==84.2.1 wheel==0.48.0
# the name CPython's loader tries first on aarch64 (shared/codec/rans_compiled.py looks for _ranscoder<suffix>)
so=$CTX/prebuilt/app/shared/codec/_ranscoder.cpython-311-aarch64-linux-gnu.so
"$CROSS_CC" -O3 -std=c99 -Wall -shared -fPIC -o "$so" "$SRC"/shared/codec/*.c  # (the coder and the integer h_s)
log "  $(file -b "$so" | cut -d, -f1-2)"
find "$CTX" -name __pycache__ -prune -exec rm -rf {} +
chmod -R a+rX "$CTX/prebuilt"
log "context ready in $(( $(date +%s) - t0 )) s ($(du -sh "$CTX/prebuilt/edge" | cut -f1) of packages, \
$(ls "$CTX/prebuilt/wheels" | wc -l) wheels)"
fi

# --- 4. the image --------------------------------------------------------------------------------------------
if step image; then
t0=$(date +%s)
blog=$WORK/build-Dockerfile.edge-arm64.log
log "building $EDGE for linux/arm64 (log: $blog)"
if ! buildah bud --isolation chroot --layers --format docker --platform linux/arm64 \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg EDGE_EXPORT=export-prebuilt \
        -t "$EDGE" -f "$ROOT/docker/Dockerfile.edge" "$CTX" > "$blog" 2>&1; then
    tail -30 "$blog"; exit 1
fi
log "built $EDGE in $(( $(date +%s) - t0 )) s (emulated: not a measure of anything on ARM)"
log "image: $(buildah inspect --type image --format '{{.OCIv1.Architecture}}/{{.OCIv1.Variant}}' "$EDGE"), \
$(buildah images --format '{{.Size}}' "$EDGE") (buildah images)"
fi

if step check; then
    "$ROOT/scripts/check_arm64_edge.sh"
fi
