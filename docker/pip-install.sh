#!/bin/sh
# Install a fully pinned requirements file into /opt/venv during an image build (both Dockerfiles).
#   pip-install.sh REQUIREMENTS [PIP_INSTALL_OPTION...]     (e.g. --no-compile)
# - pip's CA bundle, when the build machine needs one (a TLS-intercepting proxy), comes in as the build
#   secret `pipcert` (`--secret id=pipcert,src=$PIP_CERT`) and is never written into a layer.
# - --no-deps + `pip check`: exactly the pinned set, and a missing pin fails the build.
# - TORCH_INDEX_URL (build arg), e.g. https://download.pytorch.org/whl/cpu: torch/torchvision come from that
#   index (its `2.14.1+cpu` build satisfies the `torch==2.14.1` pin) and the CUDA wheels (nvidia-*, cuda-*,
#   triton) are dropped. On a machine that is not x86_64 they are dropped too (PyPI's aarch64 torch has no
#   such dependencies).
# - PIP_WHEELS, a folder: when it holds wheels, pip installs from it alone (--no-index), e.g. the target platform's
#   wheels downloaded on the build machine for an emulated build (scripts/build_edge_arm64.sh); empty or unset:
#   from the index.
set -eu
req=$1
shift
pip=${PIP:-/opt/venv/bin/pip}  # (a test points PIP elsewhere)
if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi
if [ -n "${TORCH_INDEX_URL:-}" ] || [ "$(uname -m)" != x86_64 ]; then
    grep -v -E '^(nvidia-|cuda-|triton==)' "$req" > /tmp/requirements.filtered.txt
    req=/tmp/requirements.filtered.txt
fi
if [ -n "${PIP_WHEELS:-}" ] && ls "$PIP_WHEELS"/*.whl >/dev/null 2>&1; then
    set -- "$@" --no-index --find-links "$PIP_WHEELS"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    set -- "$@" --extra-index-url "$TORCH_INDEX_URL"
fi
# setuptools/wheel: the venv's own copies are too old for torch's, compressai's and grpcio-tools' metadata
# (they are not in requirements.txt); pinned here to the versions the project's .venv runs with.
"$pip" install --no-deps --disable-pip-version-check "$@" setuptools==84.2.1 wheel==0.48.0
"$pip" install --no-deps --disable-pip-version-check "$@" -r "$req"
"$pip" check
rm -f /tmp/requirements.filtered.txt
