"""Write test vectors for the compiled rANS coder on another machine (tests/c/rans_vectors.c reads them).

    python scripts/rans_vectors.py OUT_FILE [--cases 400] [--seed 0]

The tables are CompressAI's Gaussian ones over our scale table; the payloads of valid cases are CompressAI's
encoder's bytes (our Python coder's below 4 symbols, which CompressAI cannot write); forged cases (cut, extended,
changed bytes) carry the return code that the pure-Python decoder, an independent implementation, gives.
Needs the full install (torch, compressai): run it on the build machine, check the target with the C driver.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.bitstream import BitstreamError  # noqa: E402
from shared.codec import rans  # noqa: E402


def _code(exc: Exception) -> int:
    return next(c for c, (_, msg) in rans.ERRORS.items() if msg == str(exc))


def cases(tables: rans.RansTables, n_cases: int, seed: int):
    from compressai.ans import RansEncoder

    rng = np.random.default_rng(seed)
    cdf, lengths, offsets = tables.cdf.tolist(), tables.lengths.tolist(), tables.offsets.tolist()
    py = rans.IMPLEMENTATIONS["python"]
    for k in range(n_cases):
        n = int(rng.integers(0, 4)) if k % 10 == 0 else int(rng.integers(4, 600))
        idx = rng.integers(0, len(cdf), n)
        kind = rng.random(n)
        sym = np.where(kind < 0.8, rng.integers(-8, 9, n),
                       np.where(kind < 0.95, rng.integers(-(2**20), 2**20, n), rng.integers(-(2**26), 2**26, n)))
        if n >= 4:  # (CompressAI loops forever on escapes of 8+ chunks: |values| from about 2**27)
            payload = RansEncoder().encode_with_indexes(sym.tolist(), idx.tolist(), cdf, lengths, offsets)
        else:
            payload = py.encode_with_indexes(sym, idx, tables)
        yield n, 1, sym, idx, payload, 0
        if k % 2 and n:  # a forged variant of every other case
            b = bytearray(payload)
            how = k % 6
            if how == 1:
                b = b[: int(rng.integers(0, len(b)))]
            elif how == 3:
                b += rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
            else:
                for _ in range(int(rng.integers(1, 4))):
                    b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            try:
                got = py.decode_with_indexes(bytes(b), idx, tables)
                yield n, 0, got.astype(np.int64), idx, bytes(b), 0
            except BitstreamError as e:
                yield n, 0, sym, idx, bytes(b), _code(e)


def write(path: Path, tables: rans.RansTables, n_cases: int, seed: int) -> int:
    cdf, lengths, offsets = tables.c_arrays()
    rows = list(cases(tables, n_cases, seed))
    with open(path, "wb") as f:
        f.write(b"SIRV" + struct.pack("<III", 1, *cdf.shape))
        for a in (cdf, lengths, offsets):
            f.write(a.astype("<i4").tobytes())
        f.write(struct.pack("<I", len(rows)))
        for n, encode, sym, idx, payload, rc in rows:
            f.write(struct.pack("<II", n, encode))
            f.write(np.asarray(sym, "<i8").tobytes() + np.asarray(idx, "<i8").tobytes())
            f.write(struct.pack("<I", len(payload)) + payload + struct.pack("<i", rc))
    return len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from shared.codec.compressai_adapter import GaussianConditional, cdf_tables
    from shared.codec.rate_models import scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(scale_table(), force=True)
    tables = rans.RansTables(*(t.numpy() for t in cdf_tables(gc)))
    n = write(Path(args.out), tables, args.cases, args.seed)
    print(f"{n} cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
