#!/usr/bin/env bash
# Cross-compile the rANS coder (shared/codec/ranscoder.c) for linux/arm64 and check it under qemu against vectors
# written here on x86 from CompressAI's encoder (scripts/rans_vectors.py): byte-identical payloads, the same
# symbols decoded, the same refusals of forged payloads. The check itself runs no Python on the target.
#
#   scripts/check_arm64_coder.sh            # needs gcc-aarch64-linux-gnu and qemu-user-static (Debian packages)
#
# Environment: PYTHON (default .venv/bin/python: the full install, for the vectors), CASES (default 400),
# CROSS_CC (default aarch64-linux-gnu-gcc), QEMU (default qemu-aarch64-static), WORK (default: a temporary folder).
# Also builds the arm64 shared library the edge would load (ctypes), to show it links as one.
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
CFLAGS=(-O2 -std=c99 -Wall -Wextra -Werror)

"$PYTHON" "$ROOT/scripts/rans_vectors.py" "$WORK/vectors.bin" --cases "$CASES"
cc "${CFLAGS[@]}" -o "$WORK/rans_vectors-x86_64" "${SRC[@]}"
"$CROSS_CC" "${CFLAGS[@]}" -static -o "$WORK/rans_vectors-aarch64" "${SRC[@]}"
"$CROSS_CC" "${CFLAGS[@]}" -shared -fPIC -o "$WORK/_ranscoder-aarch64.so" "$ROOT/shared/codec/ranscoder.c"
file "$WORK/rans_vectors-aarch64" "$WORK/_ranscoder-aarch64.so" 2>/dev/null | sed 's/^/  /' || true

echo "native ($(uname -m)):"
"$WORK/rans_vectors-x86_64" "$WORK/vectors.bin"
echo "aarch64 under $QEMU:"
"$QEMU" "$WORK/rans_vectors-aarch64" "$WORK/vectors.bin"
echo "OK: the arm64 build of the rANS coder writes and reads CompressAI's bytes"
