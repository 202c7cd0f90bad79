"""Summary figures (bpp within N points, BD-rate) on synthetic curves with known answers, the codecs'
availability checks, and ``splitinfer report`` on a results.json."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from shared.baselines import CODECS, CodecUnavailable, codec_roundtrip, parse_codecs, require_codec
from shared.summary import bd_rate, bpp_to_reach, envelope, summarize, summary_markdown
from splitinfer.cli import main


def curve(accs, log_rate, method=None):
    """Points with top1 = acc (fraction) and bpp = exp(log_rate(acc in points))."""
    pts = [{"bpp": math.exp(log_rate(100 * a)), "top1": a} for a in accs]
    if method:
        for p in pts:
            p["method"] = method
    return pts


def lin(x):
    return 0.12 * x - 9.0  # log(bpp) rising linearly with accuracy (in points)


ACCS = [0.55, 0.60, 0.65, 0.70, 0.75, 0.80]


# --- envelope and bpp within N points ---------------------------------------------------------------


def test_envelope_keeps_only_points_more_accurate_than_every_cheaper_one():
    pts = [{"bpp": 0.4, "top1": 0.70}, {"bpp": 0.1, "top1": 0.60}, {"bpp": 0.2, "top1": 0.58},
           {"bpp": 0.4, "top1": 0.65}, {"bpp": 0.8, "top1": 0.70}, {"bpp": 1.0}, {"bpp": 0.0, "top1": 0.9}]
    assert envelope(pts) == [(0.1, 0.60), (0.4, 0.70)]


def test_bpp_to_reach_interpolates_in_log_bpp():
    pts = [{"bpp": 0.1, "top1": 0.70}, {"bpp": 1.0, "top1": 0.80}, {"bpp": 2.0, "top1": 0.79}]
    r = bpp_to_reach(pts, 0.75)
    assert r["reached"] and not r["upper_bound"]
    assert r["bpp"] == pytest.approx(math.sqrt(0.1 * 1.0))  # halfway in accuracy = geometric mean of the rates
    assert bpp_to_reach(pts, 0.80)["bpp"] == pytest.approx(1.0)


def test_bpp_to_reach_not_reached_and_upper_bound():
    pts = [{"bpp": 0.2, "top1": 0.70}, {"bpp": 0.5, "top1": 0.76}]
    miss = bpp_to_reach(pts, 0.77)
    assert miss["bpp"] is None and not miss["reached"] and "not reached" in miss["reason"]
    low = bpp_to_reach(pts, 0.65)
    assert low["bpp"] == 0.2 and low["upper_bound"]
    assert bpp_to_reach([{"bpp": 0.2}], 0.5)["bpp"] is None


# --- BD-rate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pchip", "cubic", "linear"])
def test_half_the_rate_everywhere_is_minus_50_percent(variant):
    anchor = curve(ACCS, lin)
    test = curve(ACCS, lambda x: lin(x) + math.log(0.5))
    r = bd_rate(test, anchor, variant=variant)
    assert r["bd_rate"] == pytest.approx(-50.0, abs=1e-9) and r["variant"] == variant
    assert r["overlap"] == pytest.approx([0.55, 0.80])
    assert bd_rate(anchor, test, variant=variant)["bd_rate"] == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("variant", ["pchip", "cubic", "linear"])
def test_half_the_rate_on_other_accuracy_samples_and_a_wider_range(variant):
    """Different accuracy samples, the test curve covering more: only the overlap counts (log-linear: exact)."""
    anchor = curve([0.60, 0.64, 0.71, 0.75, 0.80], lin)
    test = curve([0.50, 0.57, 0.66, 0.69, 0.78, 0.85, 0.90], lambda x: lin(x) + math.log(0.5))
    r = bd_rate(test, anchor, variant=variant)
    assert r["bd_rate"] == pytest.approx(-50.0, abs=1e-9)
    assert r["overlap"] == pytest.approx([0.60, 0.80])


def test_cubic_variant_is_exact_on_a_cubic_log_rate():
    def cub(x):
        return 1e-4 * (x - 50) ** 3 - 0.002 * (x - 50) ** 2 + 0.05 * x - 6

    anchor = curve([0.50, 0.58, 0.66, 0.73, 0.81], cub)
    test = curve([0.52, 0.55, 0.63, 0.70, 0.77, 0.84], lambda x: cub(x) + math.log(0.25))
    assert bd_rate(test, anchor, variant="cubic")["bd_rate"] == pytest.approx(-75.0, abs=1e-6)


@pytest.mark.parametrize("variant", ["pchip", "cubic"])
def test_a_rate_ratio_that_changes_with_accuracy(variant):
    """log(test/anchor) = c * (x - 60) over the overlap [60, 80] points: mean 10c, BD = exp(10c) - 1."""
    c = 0.05
    anchor = curve([0.60, 0.65, 0.70, 0.75, 0.80], lin)
    test = curve([0.60, 0.67, 0.72, 0.80], lambda x: lin(x) + c * (x - 60))
    assert bd_rate(test, anchor, variant=variant)["bd_rate"] == pytest.approx(100 * (math.exp(10 * c) - 1), rel=1e-9)


def test_fewer_than_4_points_fall_back_to_linear_and_say_so():
    anchor = curve(ACCS, lin)
    test = curve([0.56, 0.68, 0.79], lambda x: lin(x) + math.log(0.5))
    r = bd_rate(test, anchor)
    assert r["variant"] == "linear" and "linear" in r["note"] and "fewer than 4" in r["note"]
    assert r["bd_rate"] == pytest.approx(-50.0, abs=1e-9)


def test_no_overlap_or_too_few_points_gives_none_with_a_reason():
    low, high = curve([0.40, 0.45, 0.50, 0.55], lin), curve([0.60, 0.65, 0.70, 0.75], lin)
    r = bd_rate(low, high)
    assert r["bd_rate"] is None and "no overlapping" in r["reason"]
    r = bd_rate(curve([0.6], lin), high)
    assert r["bd_rate"] is None and "fewer than 2" in r["reason"]
    with pytest.raises(ValueError):
        bd_rate(low, high, variant="spline")


def test_dominated_points_do_not_bend_the_curve():
    """A noisy point that costs more for less accuracy is dropped before fitting."""
    anchor = curve(ACCS, lin)
    test = curve(ACCS, lambda x: lin(x) + math.log(0.5)) + [{"bpp": 5.0, "top1": 0.57}]
    assert bd_rate(test, anchor)["bd_rate"] == pytest.approx(-50.0, abs=1e-9)


# --- the summary section and its table -----------------------------------------------------------------


def synthetic_results():
    rungs = curve([0.60, 0.70, 0.75, 0.77, 0.78], lambda x: lin(x) + math.log(0.1))
    ladder = {"bundle": "b", "bundle_id": "0123456789abcdef", "model": "efficientnet_lite0",
              "reference": {"n_images": 10, "top1": 0.79, "top5": 0.95},
              "rungs": [{"rung": i, "lambda": 2.0 ** -i, "bpp_estimated": p["bpp"], "bytes_per_image": 100.0,
                         "agreement": 0.9, "n_images": 10, "top5": 0.9, **p} for i, p in enumerate(rungs)]}
    baselines = []
    for codec, factor in (("webp", 0.5), ("jpeg", 1.0)):
        pts = curve([0.40, 0.55, 0.65, 0.72, 0.76], lambda x: lin(x) + math.log(factor), codec)
        baselines += [{**p, "setting": f"q={q}", "quality": q, "n_images": 10, "top5": 0.9}
                      for q, p in zip((5, 20, 40, 60, 90), pts)]
    return {"ladders": [ladder], "baselines": baselines}


def test_summarize_and_markdown():
    res = synthetic_results()
    s = summarize(res["ladders"], res["baselines"])
    assert [m["method"] for m in s["methods"]] == ["splitinfer b (01234567)", "JPEG", "WEBP"]
    lad = s["methods"][0]["within"]
    assert lad["1"]["bpp"] == pytest.approx(math.exp(lin(78) + math.log(0.1)))
    assert lad["3"]["bpp"] == pytest.approx(math.exp(lin(76) + math.log(0.1)))
    assert s["methods"][1]["within"]["1"]["bpp"] is None  # JPEG tops out at 76%
    bd = {r["codec"]: r["bd_rate"] for r in s["bd_rate"]}
    assert bd == pytest.approx({"jpeg": -90.0, "webp": -80.0})
    md = "\n".join(summary_markdown(s))
    assert "| method | bpp within 1 point | bpp within 3 points | BD-rate vs JPEG | BD-rate vs WEBP |" in md
    assert "-90.0%" in md and "-80.0%" in md and "not reached" in md
    json.dumps(s)  # goes into results.json as is


def test_summarize_without_labels_or_codecs():
    ladder = {"bundle_id": "ffff0000", "model": "m", "reference": {"n_images": 3},
              "rungs": [{"bpp": 0.1}, {"bpp": 0.2}]}
    s = summarize([ladder], [])
    assert s["bd_rate"] == [] and s["methods"][0]["within"]["1"]["bpp"] is None
    assert "n/a" in "\n".join(summary_markdown(s))


# --- codecs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_round_trips_and_its_sweep_rises(codec):
    require_codec(codec)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).resize((64, 48))
    lo, hi = CODECS[codec][1][0], CODECS[codec][1][-1]
    (dec_lo, n_lo), (dec_hi, n_hi) = codec_roundtrip(img, codec, lo), codec_roundtrip(img, codec, hi)
    assert dec_lo.size == img.size and dec_lo.mode == "RGB"
    assert 0 < n_lo < n_hi


def test_missing_encoders_give_a_clear_error(monkeypatch):
    with pytest.raises(CodecUnavailable, match="unknown codec 'bpg'"):
        parse_codecs("jpeg,bpg")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(CodecUnavailable, match="pillow-heif"):
        require_codec("hevc")
    from PIL import features

    monkeypatch.setattr(features, "check", lambda name: False)
    with pytest.raises(CodecUnavailable, match="libavif"):
        require_codec("avif")


def test_cli_eval_refuses_a_missing_codec_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    argv = ["eval", "--bundle", str(tmp_path / "no-bundle"), "--data", str(tmp_path), "--codecs", "jpeg,hevc"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pillow-heif" in err and "Traceback" not in err


# --- splitinfer report ---------------------------------------------------------------------------------


def test_cli_report_rebuilds_everything_from_results_json(tmp_path, capsys):
    res = synthetic_results()
    src = tmp_path / "in" / "results.json"
    src.parent.mkdir()
    src.write_text(json.dumps(res))
    out = tmp_path / "out"
    assert main(["report", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BD-rate vs JPEG" in printed and "-90.0%" in printed
    rebuilt = json.loads((out / "results.json").read_text())
    assert rebuilt["ladders"] == res["ladders"] and rebuilt["baselines"] == res["baselines"]
    assert rebuilt["summary"]["bd_rate"][0]["bd_rate"] == pytest.approx(-90.0)
    assert "### Summary" in (out / "results.md").read_text() and (out / "rd.png").stat().st_size > 0
    # a rebuilt results.json rebuilds again; the variant is selectable
    assert main(["report", str(out / "results.json"), "--out", str(out), "--bd-variant", "cubic"]) == 0
    assert json.loads((out / "results.json").read_text())["summary"]["bd_rate"][0]["variant"] == "cubic"


def test_cli_report_rejects_other_json(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rungs": []}))
    assert main(["report", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a results.json" in capsys.readouterr().err


def test_bd_rate_against_the_first_ladder():
    from shared.summary import summarize, summary_markdown

    first = {"bundle": "a/ladder", "bundle_id": "aaaaaaaa1", "model": "m", "reference": {"top1": 0.8},
             "rungs": [{"bpp": b, "top1": t} for b, t in ((0.1, 0.70), (0.2, 0.74), (0.4, 0.76))]}
    # the same curve at 10% fewer bits
    second = {**first, "bundle": "b/vr", "bundle_id": "bbbbbbbb1",
              "rungs": [{"bpp": 0.9 * r["bpp"], "top1": r["top1"]} for r in first["rungs"]]}
    s = summarize([first, second], [])
    (r,) = s["bd_rate_vs_first"]
    assert r["bd_rate"] == pytest.approx(-10.0, abs=1e-6) and r["anchor"].startswith("splitinfer ladder")
    table = "\n".join(summary_markdown(s))
    assert "BD-rate vs the first ladder" in table and "-10.0%" in table
    assert summarize([first], [])["bd_rate_vs_first"] == []
