"""Paired bootstrap intervals over images (shared.intervals) and where they show: the summary's gaps,
BD-rates, bpp within N points, the variable-rate shipping rule, and ``splitinfer eval`` end to end."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from shared.intervals import Resamples, gap_interval, mean_interval, percentile_interval
from shared.summary import level_check, level_check_line, summarize, summary_markdown


def record(correct, nbytes=None):
    """A point's per-image record: top-1 hits (1/0/None) and, when given, bytes."""
    rec = {"top1": [None if c is None else int(c) for c in correct]}
    if nbytes is not None:
        rec["bytes"] = [int(b) for b in nbytes]
    return {"per_image": rec}


def width(r):
    return r["interval"][1] - r["interval"][0]


# --- the bootstrap itself --------------------------------------------------------------------------------


def test_identical_records_give_a_zero_gap_with_a_zero_width_interval_but_the_figure_alone_is_uncertain():
    rng = np.random.default_rng(1)
    ref = record(rng.random(400) < 0.75)
    rs = Resamples(400)
    g = gap_interval(rs, ref, ref, "top1")
    assert g["gap"] == 0 and g["interval"] == [0.0, 0.0]
    # the figure alone spreads by about +-1.96 * sqrt(p (1 - p) / n): pairing is what removes that spread
    alone = mean_interval(rs, ref["per_image"], "top1")
    p = alone["value"]
    assert width(alone) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 400), rel=0.15)


def test_a_few_images_changed_both_ways_give_a_narrow_interval_around_zero():
    rng = np.random.default_rng(2)
    base = rng.random(400) < 0.75
    point = base.copy()
    ones, zeros = np.flatnonzero(base)[:6], np.flatnonzero(~base)[:6]  # 6 images lost, 6 gained
    point[ones], point[zeros] = False, True
    rs = Resamples(400)
    g = gap_interval(rs, record(point), record(base), "top1")
    assert g["gap"] == pytest.approx(0.0)
    lo, hi = g["interval"]
    # only the 12 discordant images vary the paired gap: its sd is sqrt(12) / 400 (in points: 0.87)
    assert lo < 0 < hi and hi - lo == pytest.approx(2 * 1.96 * 100 * math.sqrt(12) / 400, rel=0.2)
    assert hi - lo < 100 * width(mean_interval(rs, record(base)["per_image"], "top1")) / 2  # the figure alone: ~8.5


def test_a_constant_shift_gives_an_interval_around_the_shift():
    rng = np.random.default_rng(3)
    base = rng.random(400) < 0.6
    point = base.copy()
    point[np.flatnonzero(~base)[:20]] = True  # 20 more of 400 right: +5 points, never fewer
    g = gap_interval(Resamples(400), record(point), record(base), "top1")
    assert g["gap"] == pytest.approx(5.0)
    lo, hi = g["interval"]
    assert 0 < lo < 5.0 < hi < 10.0


def test_more_images_give_a_narrower_interval():
    def gap_width(n, seed):
        rng = np.random.default_rng(seed)
        base = rng.random(n) < 0.75
        point = np.where(rng.random(n) < 0.1, ~base, base)  # 10% of images flip either way
        return width(gap_interval(Resamples(n), record(point), record(base), "top1"))

    small, large = gap_width(200, 4), gap_width(3200, 4)
    assert large < small / 2.5  # sqrt(16) = 4 in expectation


def test_a_seeded_run_is_reproducible_and_the_seed_matters():
    rng = np.random.default_rng(5)
    ref, pt = record(rng.random(300) < 0.7), record(rng.random(300) < 0.68)
    a = gap_interval(Resamples(300, seed=7), pt, ref, "top1")
    assert a == gap_interval(Resamples(300, seed=7), pt, ref, "top1")
    assert a["interval"] != gap_interval(Resamples(300, seed=8), pt, ref, "top1")["interval"]


def test_drawing_in_chunks_gives_the_same_resamples(monkeypatch):
    from shared import intervals

    vals = np.random.default_rng(6).random(50)
    whole = Resamples(50, resamples=300).sums(vals)
    monkeypatch.setattr(intervals, "_CACHE_LIMIT", 50 * 7)  # 7 resamples per chunk, nothing cached
    assert np.allclose(Resamples(50, resamples=300).sums(vals), whole)


def test_unknown_labels_are_left_out_and_pixel_counts_weigh_images():
    rs = Resamples(4)
    r = mean_interval(rs, {"top1": [1, None, 0, None]}, "top1")
    assert r["value"] == 0.5
    seg = {"pixel_acc": [90, 0, 10], "pixel_acc_of": [100, 0, 100]}
    assert mean_interval(Resamples(3), seg, "pixel_acc")["value"] == pytest.approx(0.5)


def test_percentile_interval_keeps_unreached_bounds_and_drops_missing_samples():
    r = percentile_interval([1.0] * 90 + [math.inf] * 10 + [math.nan] * 5)
    assert r["interval"] == [1.0, math.inf] and r["valid"] == 100
    assert percentile_interval([math.nan])["interval"] is None


# --- the summary: BD-rates, bpp within N points, gaps ---------------------------------------------------


N = 300


def synthetic_curve(rng, bytes_scale=1.0, rates=(30, 60, 120, 240, 480), accs=(0.55, 0.65, 0.71, 0.75, 0.77)):
    """Points measured on the same N images: per-image bytes around ``rate`` and top-1 hits at ``acc``."""
    pts = []
    for rate, acc in zip(rates, accs):
        nbytes = np.maximum(1, rng.normal(rate * bytes_scale, 0.2 * rate * bytes_scale, N)).round()
        hits = rng.random(N) < acc
        p = record(hits, nbytes)
        p.update(bpp=8 * nbytes.mean() / 1024, bytes_per_image=nbytes.mean(), top1=hits.mean(), rung=len(pts))
        pts.append(p)
    return pts


def ladder(name, rungs, ref_hits):
    return {"bundle": name, "bundle_id": name * 8, "model": "m", "rungs": rungs,
            "reference": {"n_images": N, "top1": float(np.mean(ref_hits)), **record(ref_hits)},
            "images": {"data": "imgs", "part": "selection", "n_images": N, "fingerprint": "abc"}}


def test_bd_rate_intervals_contain_the_bd_rate_and_are_exact_for_a_pure_rate_change():
    rng = np.random.default_rng(10)
    ref = rng.random(N) < 0.79
    a = synthetic_curve(rng)
    # B: A's very images and answers at 0.9 of the bytes: -10% on every resample
    b = [{**p, "per_image": {**p["per_image"], "bytes": [0.9 * v for v in p["per_image"]["bytes"]]},
          "bpp": 0.9 * p["bpp"]} for p in a]
    c = synthetic_curve(rng, bytes_scale=0.8)  # other answers: a BD-rate near -20% with real spread
    s = summarize([ladder("a", a, ref), ladder("b", b, ref), ladder("c", c, ref)], [], resamples=400)
    rb, rc = s["bd_rate_vs_first"]
    assert rb["bd_rate"] == pytest.approx(-10.0)
    assert rb["interval"] == pytest.approx([-10.0, -10.0]) and rb["resamples_without"] == 0
    lo, hi = rc["interval"]
    assert lo < rc["bd_rate"] < hi and hi - lo > 1.0
    md = "\n".join(summary_markdown(s))
    assert f"{rc['bd_rate']:+.1f}% [{lo:+.1f}, {hi:+.1f}]" in md
    assert "measured on 300 images: the selection part of imgs" in md and "95% intervals" in md


def test_gaps_and_bpp_within_come_with_intervals_that_contain_them():
    rng = np.random.default_rng(11)
    ref = rng.random(N) < 0.79
    s = summarize([ladder("a", synthetic_curve(rng), ref)], [], resamples=400)
    (g,) = s["gaps"]
    assert g["figure"] == "top1" and len(g["points"]) == 5
    for p in g["points"]:
        lo, hi = p["interval"]
        assert lo <= p["gap"] <= hi and hi - lo > 2.0  # independent answers: several points wide
    w = s["methods"][0]["within"]["3"]
    assert w["bpp"] is not None and w["interval"][0] <= w["bpp"]
    assert w["interval"][1] is None or w["bpp"] <= w["interval"][1]
    json.dumps(s)


def test_without_records_the_summary_says_so_and_keeps_its_figures():
    rng = np.random.default_rng(12)
    ref = rng.random(N) < 0.79
    lad = ladder("a", [{k: v for k, v in p.items() if k != "per_image"} for p in synthetic_curve(rng)], ref)
    s = summarize([lad], [])
    assert s["intervals"]["reason"].startswith("no per-image records") and s["gaps"][0]["reason"]
    assert s["methods"][0]["within"]["3"]["bpp"] is not None and "interval" not in s["methods"][0]["within"]["3"]


# --- the variable-rate shipping rule ---------------------------------------------------------------------


def vr_ladder(accs, rng):
    pts = []
    for q, acc in zip((0, 4, 8, 12, 16), accs):
        hits = rng.permutation(N) < round(acc * N)  # exactly acc
        pts.append({"rung": 0, "level": q, "bpp": 0.1 * (q + 1), "top1": float(hits.mean()), **record(hits)})
    return ladder("v", pts, rng.random(N) < 0.8)


@pytest.mark.parametrize("finest_drop, ok", [(0.0, True), (0.5, True), (2.0, False)])
def test_level_check_judges_the_drop_from_the_best_level_to_the_finest(finest_drop, ok):
    rng = np.random.default_rng(13)
    lad = vr_ladder([0.6, 0.7, 0.75, 0.78, 0.78], rng)
    best = max(lad["rungs"][:-1], key=lambda p: p["top1"])
    fin = lad["rungs"][-1]
    # the finest level: the best level's answers with round(drop% of N) of its right images made wrong
    hits = np.array(best["per_image"]["top1"])
    hits[np.flatnonzero(hits)[: round(finest_drop / 100 * N)]] = 0
    fin.update(record(hits), top1=float(hits.mean()))
    c = level_check(lad, "top1", Resamples(N, resamples=400))
    assert c["best_level"] == (16 if finest_drop == 0 else best["level"]) and c["finest_level"] == 16  # ties: finer
    assert c["drop_points"] == pytest.approx(-round(finest_drop / 100 * N) / N * 100)
    assert c["ok"] is ok
    lo, hi = c["interval"]
    assert lo <= c["drop_points"] <= hi
    line = level_check_line({"ladder": "v", **c})
    assert ("OK the <=1 point rule" in line) == ok and ("FAILS the <=1 point rule" in line) == (not ok)


def test_level_check_only_for_levels():
    rng = np.random.default_rng(14)
    assert level_check(ladder("a", synthetic_curve(rng), rng.random(N) < 0.8), "top1") is None
    s = summarize([vr_ladder([0.6, 0.7, 0.75, 0.8, 0.76], rng)], [], resamples=200)
    (c,) = s["level_check"]
    assert c["ok"] is False and "FAILS" in "\n".join(summary_markdown(s))


# --- splitinfer eval end to end on the tiny fixtures -----------------------------------------------------


@pytest.fixture(scope="module")
def labelled_tiny(tiny_images, tiny_model, tmp_path_factory):
    """The tiny images with labels in a CSV: the unsplit model's answer on every other image, another class
    on the rest, so the unsplit model scores about 50% and the rungs' top-1 tells something."""
    import torch

    from shared.data import eval_transform, load_image

    t = eval_transform(tiny_model.spec.preprocess)
    paths = sorted(tiny_images.iterdir())
    with torch.no_grad():
        pred = tiny_model(torch.stack([t(load_image(p)) for p in paths])).argmax(1).tolist()
    out = tmp_path_factory.mktemp("labelled") / "labels.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "class_index"])
        for i, (p, y) in enumerate(zip(paths, pred)):
            w.writerow([str(p), y if i % 2 == 0 else (y + 1) % tiny_model.spec.num_classes])
    return out


def test_cli_eval_writes_per_image_records_and_intervals(tiny_bundle, vr_bundle, tiny_weights, labelled_tiny,
                                                         tmp_path, capsys):
    from shared.bundle import load_bundle
    from splitinfer.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, bundle)  # --update-manifest writes into it
    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(bundle), "--bundle", str(vr_bundle.root), "--data", str(labelled_tiny),
            "--weights", str(tiny_weights), "--part", "heldout", "--out", str(out), "--update-manifest"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    first, vr = report["ladders"]
    n = first["reference"]["n_images"]
    assert n >= 4 and first["images"]["n_images"] == n and first["images"]["part"] == "heldout"
    for p in first["rungs"] + vr["rungs"]:
        rec = p["per_image"]
        assert len(rec["bytes"]) == len(rec["top1"]) == len(rec["agreement"]) == n
        assert sum(rec["bytes"]) / n == pytest.approx(p["bytes_per_image"])
        assert sum(rec["top1"]) / n == pytest.approx(p["top1"])
        assert sum(rec["agreement"]) / n == pytest.approx(p["agreement"])
    assert sum(first["reference"]["per_image"]["top1"]) / n == pytest.approx(first["reference"]["top1"])
    s = report["summary"]
    assert s["images"]["data"] == str(labelled_tiny) and s["intervals"]["resamples"] == 2000
    for g in s["gaps"]:
        for p in g["points"]:
            lo, hi = p["interval"]
            assert lo <= p["gap"] <= hi
    (vs,) = s["bd_rate_vs_first"]
    assert "interval" in vs and (vs["bd_rate"] is None or vs["interval"][0] <= vs["bd_rate"] <= vs["interval"][1])
    (check,) = s["level_check"]
    assert check["finest_level"] == 16 and check["ok"] in (True, False)
    md = (out / "results.md").read_text()
    gap = s["gaps"][0]["points"][0]
    assert f"{gap['gap']:+.1f} [{gap['interval'][0]:+.1f}, {gap['interval'][1]:+.1f}]" in md
    assert f"measured on {n} images: the heldout part of {labelled_tiny}" in md
    assert "accuracy from best level" in md and "accuracy from best level" in printed
    assert "top-1 - unsplit [95%]" in printed
    # the records stay out of the manifest, and results.json keeps them one line per figure
    manifest = (bundle / "manifest.json").read_text()
    assert '"per_image"' not in manifest and load_bundle(bundle).rungs[0].metrics["n_images"] == n
    assert len((out / "results.json").read_text().splitlines()) < 60 * (len(first["rungs"]) + len(vr["rungs"]))


def test_cli_eval_segmentation_records_pixels_and_says_why_mIoU_has_no_interval(seg_bundle, seg_weights, seg_images,
                                                                                 tmp_path):
    from splitinfer.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(seg_bundle.root), "--data", str(seg_images), "--weights", str(seg_weights),
            "--out", str(out), "--limit", "2", "--batch-size", "2"]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    (lad,) = report["ladders"]
    for p in lad["rungs"]:
        rec = p["per_image"]
        assert len(rec["bytes"]) == len(rec["pixel_acc"]) == len(rec["pixel_acc_of"]) == 2
        assert sum(rec["pixel_acc"]) / sum(rec["pixel_acc_of"]) == pytest.approx(p["pixel_acc"])
        assert sum(rec["agreement"]) / sum(rec["agreement_of"]) == pytest.approx(p["agreement"])
    s = report["summary"]
    assert s["gaps"][0]["figure"] == "pixel_acc" and all("interval" in g for g in s["gaps"][0]["points"])
    assert "mIoU is not a per-image figure" in s["intervals"]["reason"]
    assert "pixel acc. − unsplit (points) [95%]" in (out / "results.md").read_text()


def test_accuracy_gap_at_a_fixed_rate_reads_both_curves_and_pairs_the_images():
    from shared.summary import accuracy_at, accuracy_gap_at

    pts = [{"bpp": 0.1, "top1": 0.70}, {"bpp": 0.4, "top1": 0.80}, {"bpp": 0.2, "top1": 0.65}]
    assert accuracy_at(pts, 0.2) == pytest.approx(0.75)  # halfway in log bpp; the dominated point is ignored
    assert accuracy_at(pts, 1.0) == 0.80 and accuracy_at(pts, 0.05) is None
    rng = np.random.default_rng(3)
    a = synthetic_curve(rng)
    same = accuracy_gap_at(a, a, 0.3, resamples=200)  # a curve against itself: zero on every resample
    assert same["gap"] == 0.0 and same["interval"] == [0.0, 0.0]
    # B: A's bytes, one image in ten turned wrong at every rung: lower at every rate, and resolved
    flip = np.arange(N) % 10 == 0
    b = []
    for p in a:
        hits = np.array(p["per_image"]["top1"], dtype=bool) & ~flip
        b.append({**p, "top1": hits.mean(), "per_image": {**p["per_image"], "top1": [int(h) for h in hits]}})
    g = accuracy_gap_at(b, a, 0.3, resamples=400)
    lo, hi = g["interval"]
    assert g["gap"] < 0 and lo <= g["gap"] <= hi < 0
    unpaired = accuracy_gap_at([{k: v for k, v in p.items() if k != "per_image"} for p in b], a, 0.3)
    assert unpaired["gap"] == pytest.approx(g["gap"]) and unpaired["interval"] is None
    assert accuracy_gap_at(b, a, 0.001)["gap"] is None  # below both curves' cheapest point
