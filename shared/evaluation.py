"""Measure a ladder on held-out images: real bytes on the wire and the accuracy of the decoded result.

Accuracy is task-specific and lives in the task's metric accumulator (``shared.tasks.get_task(spec).scores``,
used by the ladder, the codec baselines and the segmentation teacher alike): top-1/top-5 against class labels,
or, for segmentation, mean IoU and pixel accuracy from one confusion matrix over the whole data set (void
pixels ignored).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .baselines import codec_roundtrip, equal_rate_quality
from .bitstream import unpack
from .bundle import Bundle
from .data import Item, input_crop, load_image, load_mask, mask_crop, to_model_input
from .models.split import SplitModel
from .pipeline import LadderCodec, bits_per_pixel
from .rate.scheme import default_levels  # noqa: F401 - where callers have always found it
from .tasks import all_metrics, get_task
from .training.objectives import bpp_from_likelihoods

__all__ = ["METRICS", "Scores", "evaluate_ladder", "segmentation_examples"]

# per task: the accuracy figures a point carries (fractions), the first being the one summaries compare
# (each task declares its own: shared.tasks; their names in tables: shared.summary.METRIC_LABELS)
METRICS = all_metrics()


def Scores(task: str, num_classes: int):
    """A fresh metric accumulator of ``task`` (``shared.tasks.get_task(task).scores(num_classes)``)."""
    return get_task(task).scores(num_classes)


@torch.no_grad()
def evaluate_ladder(
    model: SplitModel,
    bundle: Bundle,
    items: Sequence[Item],
    rungs: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
    levels: Optional[Sequence[int]] = None,
    per_image: bool = False,
) -> Dict:
    """Per rung: mean real bpp (all bytes of each message), estimated bpp, accuracy against labels (when
    known; see the task's ``scores``) and agreement with the unsplit model; plus the unsplit model's own accuracy.
    ``metric`` names the figure summaries compare (``top1`` or ``miou``). A variable-rate bundle has one
    network and is measured at quality ``levels`` (default :func:`default_levels`): one entry per level.

    ``per_image``: each point and the reference also carry ``per_image``, their figures image by image in the
    order of ``items`` (``bytes`` of each message, and the task's per-image figures: ``Scores.per_image``), from
    which :mod:`shared.intervals` draws intervals over images; compact lists for results.json, never manifests."""
    codec = LadderCodec(bundle, device)
    points = bundle.scheme.measure_points(rungs, levels)
    return _evaluate_points(model, bundle, codec, items, points, batch_size, device, progress, per_image)


def level_lambda(bundle, q: int) -> float:
    """The lambda a variable-rate bundle trained level ``q`` with (log-linear over its levels and lambdas)."""
    from .codec.variable_rate import lambda_at

    lams = (bundle.variable_rate or {}).get("lambdas")
    return lambda_at(q, bundle.scheme.levels, lams) if lams else bundle.rungs[0].lam


def _evaluate_points(model, bundle, codec, items, points, batch_size, device, progress, per_image=False) -> Dict:
    rungs = points
    spec = model.spec
    task = get_task(spec)
    pre = spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    ds = task.make_dataset(items, pre)
    acc = {r: {"bytes": 0, "side_bytes": 0, "est_bits": 0.0, "scores": task.scores(spec.num_classes), "sizes": []}
           for r in rungs}
    ref = task.scores(spec.num_classes)
    n = 0
    loader = DataLoader(ds, batch_size=batch_size)
    for x, y in tqdm(loader, desc="evaluating ladder", disable=not progress, unit="batch"):
        x = x.to(device)
        feat = model.head(x)
        teacher = model.tail(feat, x)
        n += len(x)
        ref.add(teacher, y)
        for r in rungs:
            rung, level = r
            kw = {} if level is None else {"level": level}
            msgs = codec.encode(feat, tuple(x.shape[-2:]), rung, **kw)
            feats = torch.cat([codec.decode(m)[0] for m in msgs])
            a = acc[r]
            a["sizes"] += [len(m) for m in msgs]
            a["bytes"] += sum(len(m) for m in msgs)
            a["side_bytes"] += sum(sum(unpack(m)[0].payload_lengths[1:]) for m in msgs)  # z after y
            a["est_bits"] += float(bpp_from_likelihoods(codec.rung(rung).likelihoods(feat, **kw), n_pix)) * n_pix * len(x)
            a["scores"].add(model.tail(feats, x), y, reference=teacher)
    results: List[Dict] = []
    for r in rungs:
        a = acc[r]
        results.append({
            "rung": r[0],
            **({} if r[1] is None else {"level": r[1]}),
            "lambda": bundle.rungs[r[0]].lam if r[1] is None else level_lambda(bundle, r[1]),
            "bpp": bits_per_pixel(a["bytes"], pre.input_size) / n,
            "bpp_estimated": a["est_bits"] / n_pix / n,
            "bytes_per_image": a["bytes"] / n,
            "side_share": a["side_bytes"] / max(a["bytes"], 1),  # the hyperprior's z payload / all bytes
            "n_images": n,
            **a["scores"].result(),
            **({"per_image": {"bytes": a["sizes"], **a["scores"].per_image()}} if per_image else {}),
        })
    # n_labelled: the images the accuracy figures score (unlabelled ones count in rate and agreement only)
    reference = {"n_images": n, "n_labelled": ref.n_labelled, **ref.result(),
                 **({"per_image": ref.per_image()} if per_image else {})}
    return {"rungs": results, "reference": reference, "metric": task.metrics[0]}


@torch.no_grad()
def segmentation_examples(
    model: SplitModel,
    bundle: Bundle,
    items: Sequence[Item],
    points: Sequence[Tuple[int, Optional[int]]],
    codec: str = "webp",
) -> List[Dict]:
    """For each item: the input crop, its mask, the unsplit model's mask, the mask decoded at each point (a rung
    and, for a variable-rate bundle, a level: ``bundle.scheme.measure_points``), with its real bpp and a label, and
    the mask of the unsplit model on the ``codec``-compressed input at the quality whose file is the largest not
    above the last point's message (the codec at equal rate, per image)."""
    pre = model.spec.preprocess
    lc = LadderCodec(bundle)
    out = []
    for path, mask in items:
        img = input_crop(load_image(path), pre)
        x = to_model_input(img, pre)[None]
        feat = model.head(x)
        ex = {"name": path.name, "input": img, "truth": mask_crop(load_mask(mask) if mask else None, pre),
              "unsplit": model.tail(feat, x).argmax(1)[0], "rungs": []}
        for r, level in points:
            (msg,) = lc.encode(feat, tuple(x.shape[-2:]), r, level=level)
            pred = model.tail(lc.decode(msg)[0], x).argmax(1)[0]
            ex["rungs"].append({"rung": r, "level": level, "label": f"rung {r}" if level is None else f"q{level}",
                                "bpp": bits_per_pixel(len(msg), pre.input_size), "mask": pred})
        budget = len(msg)  # the last point's bytes
        q = equal_rate_quality(img, codec, budget)
        dec, n_bytes = codec_roundtrip(img, codec, q)
        ex["codec"] = {"codec": codec, "quality": q, "bpp": bits_per_pixel(n_bytes, pre.input_size),
                       "mask": model(to_model_input(dec, pre)[None]).argmax(1)[0]}
        out.append(ex)
    return out
