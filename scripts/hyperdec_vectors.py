"""Write test vectors for the compiled integer h_s on another machine (tests/c/hyperdec_vectors.c reads them).

    python scripts/hyperdec_vectors.py OUT_FILE [--random 60] [--seed 0]

Every rung of every embedded bundle (its exported layers, z symbols over and beyond the clipped range) and random
small networks (weights, multipliers and clips at the limits of the compiled fast path and of the exact range);
the expected indexes and means are the numpy implementation's, the expected refusals its errors' codes. Needs the
full install (torch, to read the bundles): run it on the build machine, check the target with the C driver.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.codec import integer_numpy as hs  # noqa: E402
from shared.codec.integer_numpy import EXACT_LIMIT, IN_MAX, SHIFT, IntLayer  # noqa: E402

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _bundle_cases(rng):
    from shared.bundle import embedded_bundle_paths, load_bundle

    for path in embedded_bundle_paths():
        bundle = load_bundle(path)
        for r in bundle.rungs:
            rate = bundle.load_rung(r.index).rate
            h = rate.h_s
            layers = [IntLayer(c.w_int.numpy(), c.mult.numpy(), c.bias_int.numpy(), c.lo, c.hi, u)
                      for c, u in zip(h.convs, h.ups)]
            for z_hw, scale in (((3, 4), 3), ((4, 4), 300)):
                z = np.rint(rng.normal(0, 1, (1, rate.hyper, *z_hw)) * scale).astype(np.int64)
                yield layers, z, h.levels, h.means, (z_hw[0] * rate.hyper_stride - 1, z_hw[1] * rate.hyper_stride)


def _random_cases(rng, n):
    for k in range(n):
        c = int(rng.integers(1, 5))
        layers, c_in, bound = [], c, IN_MAX
        for _ in range(int(rng.integers(1, 4))):
            ks, up = int(rng.choice([1, 3, 5])), int(rng.choice([1, 1, 2]))
            o = up * up * int(rng.integers(1, 4))
            w = rng.integers(-128, 128, (o, c_in, ks, ks)).astype(np.int8)
            bias = rng.integers(-(2**40), 2**40, o)
            if k % 3 == 0:  # at the exact range's limit (or one past it: refused)
                l1 = np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3))
                mult = np.array([(EXACT_LIMIT - 1 - (1 << (SHIFT - 1)) - abs(int(b))) // max(1, int(a) * bound)
                                 + int(rng.random() < 0.1) for a, b in zip(l1, bias)], dtype=np.int64)
            else:
                mult = rng.integers(-(2**24), 2**24, o)
            lo, hi = [(0, 255), (-(2**20), 2**20), (-32768, 32767), (None, None)][int(rng.integers(0, 4))]
            layers.append(IntLayer(w, mult, bias, lo, hi, up))
            c_in, bound = o // (up * up), layers[-1].bound
        means = c_in % 2 == 0 and bool(rng.integers(0, 2))
        zh, zw = (int(v) for v in rng.integers(1, 5, 2))
        z = rng.integers(-300, 301, (1, c, zh, zw))
        scale = int(np.prod([layer.up for layer in layers]))
        yield layers, z, int(rng.choice([1, 64, 2**40])), means, (zh * scale - int(rng.integers(0, 2)), zw * scale)


def _code(exc: Exception) -> int:
    return next(c for c, (_, msg) in hs.ERRORS.items() if str(exc).startswith(msg))


def write(out: Path, n_random: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    cases = list(_bundle_cases(rng)) + list(_random_cases(rng, n_random))
    i64 = lambda *v: struct.pack(f"<{len(v)}q", *v)  # noqa: E731
    with open(out, "wb") as f:
        f.write(b"SIHV" + struct.pack("<II", 1, len(cases)))
        for layers, z, levels, means, y_hw in cases:
            f.write(struct.pack("<I", len(layers)))
            for layer in layers:
                o, c, k, _ = layer.w.shape
                f.write(i64(o, c, k, _I64_MIN if layer.lo is None else layer.lo,
                            _I64_MAX if layer.hi is None else layer.hi, layer.up))
                f.write(layer.w.tobytes() + layer.mult.astype("<i8").tobytes() + layer.bias.astype("<i8").tobytes())
            f.write(i64(*z.shape) + z.astype("<i8").tobytes() + i64(IN_MAX, levels, int(means), *y_hw))
            try:
                idx, m = hs.numpy_hyper_synthesis(layers, z, levels, means, y_hw)
            except ValueError as e:
                f.write(i64(_code(e)))
                continue
            f.write(i64(0) + idx.astype("<i8").tobytes() + (m.astype("<f4").tobytes() if m is not None else b""))
    return len(cases)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--random", type=int, default=60, help="random networks besides the bundles' rungs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = write(Path(args.out), args.random, args.seed)
    print(f"{n} integer h_s cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
