"""Encode on the CPU, decode on another device (a GPU with TF32 on): how many images decode wrong?

For every image (rung = image index mod the number of rungs):
- **integer path** (what splitinfer ships): the real message from ``LadderCodec.encode`` on the CPU is
  decoded by ``LadderCodec.decode`` on ``--device``; a desync shows up as the symbols-CRC error;
- **float path** (the same trained ``h_s`` run with its float weights, i.e. any float hyper-decoder):
  the table indexes computed on the CPU and on ``--device`` are compared, and the CPU's rANS
  payload is decoded with the device's indexes.

On a GPU, TF32 convolutions are switched on (PyTorch's default for cuDNN convolutions) unless
``--no-tf32``. With ``--device cpu`` both sides share the arithmetic and every count is 0 (a smoke run).

    python benchmarks/cross_device_decode.py --data ../shared/data/imagenet_val --limit 1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.bitstream import BitstreamError  # noqa: E402
from shared.bundle import default_bundle_path, load_bundle  # noqa: E402
from shared.codec.compressai_adapter import rans_decode, rans_encode  # noqa: E402
from shared.data import eval_transform, load_image, scan_images  # noqa: E402
from shared.models import load_split_model  # noqa: E402
from shared.pipeline import LadderCodec  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "shared" / "assets" / "samples"


def _float_indexes(rate, z_sym: torch.Tensor, hw) -> torch.Tensor:
    t, _ = rate.h_s.float_forward(z_sym)
    return torch.round(t).clamp(0, rate.h_s.levels - 1)[..., : hw[0], : hw[1]].int().cpu()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle (default: the embedded ladder)")
    p.add_argument("--data", default=str(SAMPLES), help="images (folder or CSV)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="decoding device")
    p.add_argument("--no-tf32", action="store_true", help="keep full float32 convolutions on the GPU")
    p.add_argument("--weights", default=None, help="backbone weights (default: pretrained)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)

    dev = args.device
    if dev.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    bundle = load_bundle(args.bundle or default_bundle_path())
    model = load_split_model(bundle.model, bundle.split, args.weights).eval()
    enc, dec = LadderCodec(bundle, "cpu"), LadderCodec(bundle, dev)
    enc.preload()
    dec.preload()
    tf = eval_transform(model.spec.preprocess)
    paths = [q for q, _ in scan_images(args.data, labels=False)][: args.limit]
    n = len(bundle.rungs)
    counts = {"integer_wrong_decodes": 0, "integer_feature_max_abs_diff": 0.0,
              "float_images_with_index_changes": 0, "float_index_changes": 0, "float_wrong_decodes": 0}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, path in enumerate(tqdm(paths, desc=f"cpu -> {dev}", unit="img")):
            r = i % n
            x = tf(load_image(path))[None]
            feat = model.head(x)
            (msg,) = enc.encode(feat, tuple(x.shape[-2:]), r)
            ref, _ = enc.decode(msg)
            try:
                got, _ = dec.decode(msg)
                counts["integer_feature_max_abs_diff"] = max(
                    counts["integer_feature_max_abs_diff"], float((got.cpu() - ref).abs().max()))
            except BitstreamError:
                counts["integer_wrong_decodes"] += 1
            # float twin: same weights, plain float arithmetic, on both devices
            net_c, net_d = enc.rung(r), dec.rung(r)
            y = net_c._analysis(feat)
            rate = net_c.rate
            z_sym = rate.side_symbols(y)
            hw = y.shape[-2:]
            idx_c = _float_indexes(rate, z_sym, hw)
            idx_d = _float_indexes(net_d.rate, z_sym.to(dev), hw)
            t, means = rate.h_s.float_forward(z_sym)
            sym = rate.gaussian_conditional.quantize(y, "symbols", means[..., : hw[0], : hw[1]])
            payload = rans_encode(rate.gaussian_conditional, rate._gc_tables, sym, idx_c)
            decoded = rans_decode(rate.gaussian_conditional, rate._gc_tables, payload, idx_d)
            k = int((idx_c != idx_d).sum())
            counts["float_index_changes"] += k
            counts["float_images_with_index_changes"] += int(k > 0)
            counts["float_wrong_decodes"] += int(not torch.equal(decoded, sym))
    res = {
        "setup": {"bundle": bundle.bundle_id, "data": args.data, "n_images": len(paths), "encode": "cpu",
                  "decode": dev, "tf32": dev.startswith("cuda") and not args.no_tf32,
                  "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None,
                  "host": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "seconds": round(time.perf_counter() - t0, 1)},
        **counts,
    }
    print(json.dumps(res, indent=2))
    print(f"integer h_s: {counts['integer_wrong_decodes']} of {len(paths)} images decoded wrong on {dev}; "
          f"float h_s: {counts['float_wrong_decodes']} of {len(paths)} "
          f"({counts['float_index_changes']} table indexes moved)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
