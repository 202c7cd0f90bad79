#!/usr/bin/env bash
# Cross-compile the edge's C library for linux/arm64 and check it under qemu against vectors written here on x86:
# the rANS coder (shared/codec/ranscoder.c) against CompressAI's encoder (scripts/rans_vectors.py): byte-identical
# payloads, the same symbols decoded, the same refusals of forged payloads; the integer h_s (hyperdec.c) against the
# numpy one (scripts/hyperdec_vectors.py): every embedded rung and random networks, the same indexes and means bit
# for bit, the same refusals. The check itself runs no Python on the target.
#
#   scripts/check_arm64_coder.sh            # needs gcc-aarch64-linux-gnu and qemu-user-static (Debian packages)
#
# Environment: PYTHON (default .venv/bin/python: the full install, for the vectors), CASES (default 400),
# CROSS_CC (default aarch64-linux-gnu-gcc), QEMU (default qemu-aarch64-static), WORK (default: a temporary folder).
# Also builds the arm64 shared library the edge would load (ctypes), to show it links as one. -O3 as setup.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64-static}
CASES=${CASES:-400}
for tool in "$CROSS_CC" "$QEMU" cc; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install gcc-aarch64-linux-gnu qemu-user-static)" >&2; exit 3; }
done
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
SRC=("$ROOT/shared/codec/ranscoder.c" "$ROOT/tests/c/rans_vectors.c")
HS_SRC=("$ROOT/shared/codec/hyperdec.c" "$ROOT/tests/c/hyperdec_vectors.c")
LIB_SRC=("$ROOT/shared/codec/ranscoder.c" "$ROOT/shared/codec/hyperdec.c")
CFLAGS=(-O3 -std=c99 -Wall -Wextra -Werror)

"$PYTHON" "$ROOT/scripts/rans_vectors.py" "$WORK/vectors.bin" --cases "$CASES"
"$PYTHON" "$ROOT/scripts/hyperdec_vectors.py" "$WORK/hyperdec.bin" --random "$((CASES / 5))"
cc "${CFLAGS[@]}" -o "$WORK/rans_vectors-x86_64" "${SRC[@]}"
cc "${CFLAGS[@]}" -o "$WORK/hyperdec_vectors-x86_64" "${HS_SRC[@]}"
"$CROSS_CC" "${CFLAGS[@]}" -static -o "$WORK/rans_vectors-aarch64" "${SRC[@]}"
"$CROSS_CC" "${CFLAGS[@]}" -static -o "$WORK/hyperdec_vectors-aarch64" "${HS_SRC[@]}"
"$CROSS_CC" "${CFLAGS[@]}" -shared -fPIC -o "$WORK/_ranscoder-aarch64.so" "${LIB_SRC[@]}"
file "$WORK/rans_vectors-aarch64" "$WORK/_ranscoder-aarch64.so" 2>/dev/null | sed 's/^/  /' || true

echo "native ($(uname -m)):"
"$WORK/rans_vectors-x86_64" "$WORK/vectors.bin"
"$WORK/hyperdec_vectors-x86_64" "$WORK/hyperdec.bin"
echo "aarch64 under $QEMU:"
"$QEMU" "$WORK/rans_vectors-aarch64" "$WORK/vectors.bin"
"$QEMU" "$WORK/hyperdec_vectors-aarch64" "$WORK/hyperdec.bin"
echo "OK: the arm64 build of the rANS coder writes and reads CompressAI's bytes, and its integer h_s gives the x86 indexes and means"
