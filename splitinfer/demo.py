"""The demo: a real round trip on loopback, edge -> gRPC -> cloud, at three bitrate hints (``splitinfer demo``).

Starts the cloud server (REST and gRPC) on 127.0.0.1 with the embedded ladders, runs the edge client (the
torch-free runtime: ONNX Runtime + numpy, on each ladder's edge package, exported once into the cache) on
the embedded sample images at three bitrate hints, prints every answer with its bytes, bpp and
latency next to the true class and the unsplit model's answer, and stops the server cleanly.
Needs no network and no data: the ladder, the pretrained backbone (from its PyPI package) and the
samples all ship with splitinfer.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence

from shared.errors import UserError
from shared.options import WEIGHTS_HELP, option, positive

__all__ = ["DemoOptions", "run_demo", "samples_dir"]


def _bpp_list(s: str) -> List[float]:
    return [positive("positive bpp values")(v) for v in s.split(",")]


@dataclass
class DemoOptions:
    """``splitinfer demo``: the arguments of :func:`run_demo`."""

    bundle: Optional[str] = option(None, "bundle folder (default: the embedded ladders)")
    weights: Optional[str] = option(None, WEIGHTS_HELP)
    images: Optional[str] = option(None, "folder with labels.csv (default: the embedded samples)")
    bitrates: Optional[List[float]] = option(None, "comma-separated bpp hints (default: the measured bpp of the top, "
                                                   "a middle and the bottom rung)", type=_bpp_list)
    rest: bool = option(False, "send over REST instead of gRPC")


def samples_dir() -> Path:
    return Path(str(resources.files("shared").joinpath("assets", "samples")))


def _default_hints(bundle) -> list:
    scheme = bundle.scheme
    curve = scheme.curve if scheme.variable else None
    if curve:  # one network: hints inside the rates its levels reach per image (the coarsest level's mean is not)
        lo, hi = curve[min(1, len(curve) - 1)]["bpp"], curve[-1]["bpp"]
        return [round(lo, 3), round((lo * hi) ** 0.5, 3), round(hi * 0.8, 3)]
    n = len(bundle.rungs)
    picks = sorted({0, n // 2, n - 1})
    return [bundle.rungs[i].bpp if bundle.rungs[i].bpp else None for i in picks]


LEGEND = ("'<' after the bpp: the message is within its hint. A ladder picks the rung whose *mean* bpp fits the hint, "
          "so one image may take more; a variable-rate network fits each message, down to its coarsest level.")


def _heading(bundle) -> str:
    return f"{bundle.split[-9:]} vr" if bundle.scheme.variable else bundle.split[-12:]


def run_demo(bundle: Optional[str] = None, weights: Optional[str] = None, images: Optional[str] = None,
             bitrates: Optional[Sequence[float]] = None, rest: bool = False, say=print) -> int:
    """The round trip; ``bitrates``: bpp hints for one ``bundle`` (default: three measured rungs of each ladder)."""
    import torch

    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, Settings
    from edge_client.client import EdgeClient
    from shared.bundle import embedded_bundle_paths, load_bundle, resolve_bundle
    from shared.labels import class_names
    from shared.models.split import split_info

    folder = Path(images) if images else samples_dir()
    if not (folder / "labels.csv").is_file():
        raise UserError(f"{folder} has no labels.csv (a `filename,class_index` line per image)")
    with (folder / "labels.csv").open() as f:
        samples = [(folder / r["filename"], int(r["class_index"])) for r in csv.DictReader(f)]
    bundles = [resolve_bundle(bundle)] if bundle else [load_bundle(p) for p in embedded_bundle_paths()]
    if bitrates and len(bundles) > 1:
        raise UserError("--bitrates needs one --bundle (the embedded ladders have different rates)")
    hints = {b.bundle_id: (list(bitrates) if bitrates else _default_hints(b)) for b in bundles}
    settings = Settings(http_port=0, grpc_port=0, weights=weights,
                        bundles=[BundleSpec(path=b.root, weights=weights) for b in bundles])
    say("starting the cloud server on 127.0.0.1 with " + "; ".join(
        f"bundle {b.bundle_id} ({b.model}, split {b.split}, the edge runs "
        f"{split_info(b.model, b.split)['edge_flop_share']:.0%} of the FLOPs, {b.scheme.describe()})" for b in bundles))
    with SplitInferServer(settings) as server:
        target = f"127.0.0.1:{server.http_port if rest else server.grpc_port}"
        say(f"  gRPC on 127.0.0.1:{server.grpc_port}, REST on http://127.0.0.1:{server.http_port}")
        served = {m.bundle.bundle_id: m for m in server.repository.models()}
        reference = served[bundles[0].bundle_id].decoder.model  # the unsplit network, for the comparison column
        names = class_names(bundles[0].model, reference.spec.num_classes)
        clients = [EdgeClient(target, bundle=b, weights=weights, rest=rest, model=served[b.bundle_id].name)
                   for b in bundles]
        try:
            say(f"  edge clients connected over {'REST' if rest else 'gRPC'} to "
                  f"{', '.join(repr(c.model) for c in clients)}; the edge runs on ONNX Runtime (no PyTorch): "
                  + ", ".join(f"edge package {c.encoder.package.package_id}" for c in clients) + "\n")
            # a column per bundle, headed by its split; the variable-rate network's as such (it may share the split)
            col = lambda b: f"{_heading(b):>12}: {'rung':>4} {'bytes':>5} {'bpp':>5}  {'ms':>5}  answer"  # noqa: E731
            head = f"{'image':<24} {'true class':<14} {'unsplit':<14} " + " | ".join(col(b) for b in bundles)
            say(head)
            say("-" * len(head))
            hits = {(c.model, j): 0 for c in clients for j in range(3)}
            sizes = {c.model: [] for c in clients}
            fits, misses = {}, {}
            ref_hits = 0
            for path, label in samples:
                with torch.no_grad():
                    ref = int(reference(torch.from_numpy(clients[0].encoder.preprocess(path))).argmax(1))
                ref_hits += ref == label
                for j in range(max(len(h) for h in hints.values())):
                    cells = []
                    for c, b in zip(clients, bundles):
                        h = hints[b.bundle_id][min(j, len(hints[b.bundle_id]) - 1)]
                        r = c.infer(path, bitrate=h)
                        top = r.label
                        hits[(c.model, j)] = hits.get((c.model, j), 0) + (top[0] == label)
                        sizes[c.model].append(r.n_bytes)
                        # a variable-rate bundle: the level its rate control chose; '<' marks a message within the hint
                        where = r.rung if r.level is None else f"q{r.level}"
                        within = bool(r.hint_outcome.met)
                        fits[c.model] = fits.get(c.model, 0) + within
                        if r.hint_outcome.met is False:  # why not, by kind (below the coarsest point, a ladder's mean)
                            why = r.hint_outcome.reason.split(":")[0]
                            misses.setdefault(c.model, {})[why] = misses.get(c.model, {}).get(why, 0) + 1
                        cells.append(f"{'':>12}  {where:>4} {r.n_bytes:>5} {r.bpp:>5.3f} {'<' if within else ' '}"
                                     f"{r.encode_ms:>5.1f}  {'ok' if top[0] == label else '--'} {top[1][:14]:<14}")
                    first = j == 0
                    say(f"{path.name[:24] if first else '':<24} {names[label][:14] if first else '':<14} "
                          f"{names[ref][:14] if first else '':<14} " + " | ".join(cells))
        finally:
            for c in clients:
                c.close()
    say(f"\n{LEGEND}")
    say("\nserver stopped cleanly")
    say(f"unsplit model: {ref_hits}/{len(samples)} correct")
    for c, b in zip(clients, bundles):
        hs = hints[b.bundle_id]
        say(f"{c.model}: " + ", ".join(f"hint {h:.3f} bpp: {hits[(c.model, j)]}/{len(samples)}" for j, h in enumerate(hs))
              + f"; {sum(sizes[c.model]) / len(sizes[c.model]):.0f} bytes per image on average; "
              f"{fits.get(c.model, 0)}/{len(sizes[c.model])} messages within their hint"
              + (" (one variable-rate network: each image's level chosen to fit)" if b.scheme.variable else "")
              + "".join(f"; {n} over: {why}" for why, n in sorted(misses.get(c.model, {}).items())))
    return 0
