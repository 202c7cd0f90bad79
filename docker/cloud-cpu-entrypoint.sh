#!/bin/sh
# docker/Dockerfile.cloud-cpu's entry point: `splitinfer serve` with ONNX Runtime, on every cloud package in
# /opt/splitinfer/cloud (baked in, or mounted over it), unless the arguments name their own with --bundle.
#   (no arguments)           serve every package
#   --bundle DIR ...         serve these instead (plus any other `serve` option)
#   --help | COMMAND ...     another splitinfer command (`--help`, `export-cloud` needs torch: not here)
set -eu
case "${1:-}" in
    ""|-*) ;;
    *) exec python -m splitinfer "$@" ;;
esac
case " $* " in
    *" --bundle"*) exec python -m splitinfer serve "$@" ;;
esac
set -- serve "$@"
n=0
for d in /opt/splitinfer/cloud/*/; do
    [ -f "$d/cloud.json" ] || continue
    set -- "$@" --bundle "$d"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "no cloud package in /opt/splitinfer/cloud (mount one, or pass --bundle DIR)" >&2; exit 2; }
exec python -m splitinfer "$@"
