"""``splitinfer models``: every supported model with its split points."""

from __future__ import annotations

import argparse
import json


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from ..models.split import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'model':<22} {'task':<14} {'split':<8} {'depth':<8} {'feature (CxHxW)':<16} {'edge FLOPs':>10}  description"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(str(v) for v in r["feature_shape"])
        print(f"{r['model']:<22} {r['task']:<14} {r['split']:<8} {r['depth']:<8} {shape:<16} "
              f"{100 * r['edge_flop_share']:>9.1f}%  {r.get('description', '')}")
    print("\nedge FLOPs: share of the unsplit model's FLOPs that the edge (head) runs, at the model's input size.")
    return 0
