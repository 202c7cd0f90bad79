"""A bundle's rate scheme (shared/rate/scheme.py): hint -> operating point, and each message's outcome against its
hint, on stand-in bundles (no torch, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shared.rate import (BitrateHint, HintError, LadderScheme, VariableRateScheme, default_levels, scheme_of,
                         select_rung)

HW = (32, 32)  # 1,024 pixels: 128 bytes is 1 bpp


def _bundle(levels=None, bpps=(1.0, 0.5, 0.25), curve=None):
    rungs = [SimpleNamespace(index=i, bpp=b, lam=float(i + 1), metrics={"bpp": b}) for i, b in enumerate(bpps)]
    return SimpleNamespace(bundle_id="b" * 16, config=SimpleNamespace(levels=levels), rungs=rungs, input_size=HW,
                           variable_rate={"curve": curve or []})


def test_the_scheme_is_made_from_the_bundles_config():
    assert isinstance(scheme_of(_bundle()), LadderScheme) and not scheme_of(_bundle()).variable
    vr = scheme_of(_bundle(levels=(0, 16), bpps=(0.5,)))
    assert isinstance(vr, VariableRateScheme) and vr.variable and vr.levels == (0, 16)
    assert vr.measure_points() == [(0, q) for q in default_levels((0, 16))]
    assert scheme_of(_bundle()).measure_points() == [(0, None), (1, None), (2, None)]


def test_a_ladder_point_is_the_rung_select_rung_picks():
    s = scheme_of(_bundle())
    for bpp in (2.0, 0.6, 0.3, 0.01):
        p = s.point(BitrateHint(target_bpp=bpp))
        assert p.rung == select_rung(s.rungs, bpp) and p.hint_bpp == bpp and not p.variable
    link = s.point(BitrateHint(kbit_per_s=0.3 * 1024 * 10 / 1000, fps=10))  # 0.3 bpp per frame
    assert link.rung == 2 and link.hint_bpp == pytest.approx(0.3)
    assert s.point(rung=1).rung == 1 and s.point(rung=1).hint_bpp is None  # forced: nothing to meet
    for bad in ({"rung": 3}, {"level": 2}, {"controller": object()}):
        with pytest.raises(HintError):
            s.point(BitrateHint(), **bad)


def test_a_variable_rate_point_is_a_byte_budget_a_level_or_a_controller():
    s = scheme_of(_bundle(levels=(0, 16), bpps=(0.5,)))
    p = s.point(BitrateHint(target_bpp=0.5))
    assert p.variable and p.max_bytes == 64 and p.hint_bpp == 0.5 and p.how()["max_bytes"] == 64
    assert s.point(level=3).how() == {"level": 3, "max_bytes": None, "controller": None}
    assert s.point().how() == {"level": None, "max_bytes": None, "controller": None}  # the finest level
    ctl = s.stream_controller(BitrateHint(kbit_per_s=10, fps=10))
    assert ctl is not None and s.point(BitrateHint(kbit_per_s=10, fps=10), controller=ctl).controller is ctl
    assert s.stream_controller(BitrateHint(target_bpp=0.2)) is None
    for bad in ({"rung": 1}, {"level": 17}, {"level": 2, "hint": BitrateHint(target_bpp=0.1)}):
        hint = bad.pop("hint", None)
        with pytest.raises(HintError):
            s.point(hint, **bad)


def test_each_message_says_whether_it_met_its_hint_and_why_not():
    ladder = scheme_of(_bundle())
    p = ladder.point(BitrateHint(target_bpp=0.6))  # rung 1: 0.5 bpp on average
    assert ladder.outcome(p, 64, HW).met is True
    over = ladder.outcome(p, 80, HW)  # 0.625 bpp: over, though the rung's mean fits
    assert over.met is False and over.reason.startswith("a ladder's hint is a mean: rung 1 averages 0.5000 bpp")
    low = ladder.outcome(ladder.point(BitrateHint(target_bpp=0.0001)), 30, HW)
    assert low.met is False and low.reason.startswith("below the coarsest rung: rung 2")
    assert ladder.outcome(ladder.point(rung=0), 10_000, HW).met is None  # a forced rung has no hint

    vr = scheme_of(_bundle(levels=(0, 16), bpps=(0.5,)))
    p = vr.point(BitrateHint(target_bpp=0.03))
    assert vr.outcome(p, 3, HW, level=5).met is True
    low = vr.outcome(p, 20, HW, level=0)
    assert low.met is False and low.reason.startswith("below the coarsest level: q0")
    ctl = vr.stream_controller(BitrateHint(kbit_per_s=10, fps=10))
    assert vr.outcome(vr.point(controller=ctl), 10_000, HW, level=0).met is None  # judged over the stream


def test_a_stream_says_whether_it_held_its_link_rate():
    hint = BitrateHint(kbit_per_s=8, fps=10)  # 100 bytes per frame
    ladder, vr = scheme_of(_bundle()), scheme_of(_bundle(levels=(0, 16), bpps=(0.5,)))
    assert ladder.stream_outcome(hint, [100, 104, 96]).met is True
    held = ladder.stream_outcome(hint, [150] * 10)
    assert held.met is False and "sent 12.00 kbit/s, 50% over 8" in held.reason
    assert "a ladder's rungs hold a mean bpp" in held.reason
    slow = ladder.stream_outcome(BitrateHint(kbit_per_s=0.8, fps=10), [30] * 10)  # below the coarsest rung's mean
    assert slow.met is False and "less than the coarsest rung" in slow.reason
    low = vr.stream_outcome(hint, [0, 300, 0, 300], skipped=2)
    assert low.met is False and "coarsest level" in low.reason and "2 frames skipped" in low.reason
    assert ladder.stream_outcome(BitrateHint(target_bpp=0.1), [1000]).met is None  # no link rate to hold


def test_following_the_link_needs_a_variable_rate_bundle():
    link = BitrateHint(kbit_per_s=8, fps=10)
    with pytest.raises(HintError, match="variable-rate bundle"):
        scheme_of(_bundle()).check_stream(link, track_link=True)
    scheme_of(_bundle()).check_stream(link, track_link=False)
    scheme_of(_bundle(levels=(0, 16), bpps=(0.5,))).check_stream(link, track_link=True)
    with pytest.raises(HintError):
        scheme_of(_bundle(levels=(0, 16), bpps=(0.5,))).check_stream(BitrateHint(target_bpp=0.1), track_link=True)


def test_the_decoders_level_checks():
    ladder, vr = scheme_of(_bundle()), scheme_of(_bundle(levels=(0, 16), bpps=(0.5,)))
    assert ladder.header_problem(None) is None and "ladder" in ladder.header_problem(3)
    assert vr.header_problem(4) is None and "no quality level" in vr.header_problem(None)
    assert "outside" in vr.header_problem(17)
    assert ladder.level_kw(None) == {} and vr.level_kw(4) == {"level": 4}
    with pytest.raises(HintError):
        ladder.level_kw(2)
    with pytest.raises(HintError):
        vr.level_kw(None)


def test_the_measured_points():
    curve = [{"level": 0, "bpp": 0.1, "top1": 0.5}, {"level": 8, "bpp": 0.3, "top1": 0.7, "lambda": 0.02}]
    vr = scheme_of(_bundle(levels=(0, 16), bpps=(0.5,), curve=curve))
    assert [(w, lam) for w, lam, _ in vr.points()] == [("q0", 1.0), ("q8", 0.02)]
    assert [w for w, _, _ in scheme_of(_bundle(levels=(0, 16), bpps=(0.5,))).points()] == [0]  # not measured yet
    assert [w for w, _, _ in scheme_of(_bundle()).points()] == [0, 1, 2]
    assert vr.describe() == "one variable-rate network, levels 0..16"
    assert scheme_of(_bundle()).describe() == "a ladder of 3 rungs"


def test_the_training_plan_of_each_scheme():
    """What training makes, asked of the plan (shared/rate/plan.py) instead of the bottleneck's levels: a ladder
    trains a network per lambda from the largest down (the first gets --steps, the rest --steps-per-rung); one
    variable-rate network gets the whole budget, draws each step's level, and records the top lambda and the range."""
    from shared.rate import training_plan

    ladder = training_plan([2.0, 64.0, 8.0], None)
    assert ladder.networks() == [1, 2, 0]
    assert [ladder.steps(p, 2000, 800) for p in range(3)] == [2000, 800, 800]
    assert [ladder.steps_left(p, 2000, 800) for p in range(3)] == [3600, 1600, 800]
    assert ladder.step_point(8.0, lambda *a: pytest.fail("a ladder draws no level")) == (None, 8.0)
    assert ladder.probe_level is None and ladder.eval_points() == 3 and ladder.level_range is None
    assert ladder.manifest() == ([2.0, 64.0, 8.0], {})

    vr = training_plan([64.0, 0.03], (-8, 40))
    assert vr.networks() == [0] and vr.steps(0, 2000, 800) == vr.steps_left(0, 2000, 800) == 2800
    assert vr.step_point(64.0, lambda levels, lambdas: (levels[0], min(lambdas))) == (-8, 0.03)
    assert vr.probe_level == 40 and vr.eval_points() == 13 and vr.level_range == [-8, 40]
    assert vr.manifest() == ([64.0], {"variable_rate": {"levels": [-8, 40], "lambdas": [0.03, 64.0]}})
