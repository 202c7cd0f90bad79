"""Training a user can trust (issue 23): ``--time-budget`` holds for every phase, too few images and too short a
budget are said before any training, and a network far below the unsplit model is called weak (verdict line,
non-zero exit unless --allow-weak, manifest flag, ``splitinfer info``, the server's start-up log)."""

from __future__ import annotations

import json
import logging
import math

import pytest

from shared.training import verdict as verdict_mod
from shared.training.budget import MIN_TRAIN_IMAGES, Budget
from shared.training.verdict import EXIT_WEAK, MAX_METRIC_DROP, MIN_AGREEMENT, judge
from splitinfer.cli import main

PHASES = ["start-up", "views", "probe", "rungs", "refit", "export", "measurement"]
SLACK = 5.0  # seconds a phase may run over its share: one training step or refit chunk on a loaded machine


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.timing
def test_every_phase_gets_a_share_of_the_budget_and_keeps_to_it(tiny_train_argv, tmp_path, capsys):
    """Steps, refit steps and measurement far beyond what 30 s allow: each phase is given a share, ends within it
    (plus a step's slack), and the refit stops on its clock, not its step count."""
    budget = 30
    out = tmp_path / "b"
    rc = main(["train", *tiny_train_argv(out, steps=10**6, steps_per_rung=10**6), "--side-refit-steps", "1000000",
               "--time-budget", str(budget)])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = _manifest(out)
    record = m["training"]["budget"]
    assert list(record) == PHASES, record
    for name in PHASES[1:]:
        given, used = record[name]["given"], record[name]["used"]
        assert given is not None and given >= 0, (name, record)
        assert used <= given + SLACK, (name, record)
    assert record["rungs"]["given"] > 0.3 * budget, record  # the rungs get most of it
    assert sum(r["used"] for r in record.values()) <= budget + SLACK, record
    refits = [r for r in m["training"]["side_refit"] if "skipped" not in r]
    assert refits and all(r["steps"] < 10**6 for r in refits), m["training"]["side_refit"]
    assert sum(r["seconds"] for r in refits) <= record["refit"]["given"] + SLACK
    took = float(text.rsplit("train took ", 1)[1].split()[0])
    assert took <= budget + SLACK
    # what the budget buys, said before the rungs train
    assert "s per training step" in text and "buy about" in text
    assert text.index("s per training step") < text.index("wrote bundle")


def test_the_refit_ends_on_its_seconds(tiny_bundle, tiny_model, heldout_batch):
    from shared.training.side_density import refit_side_density

    net = tiny_bundle.load_rung(0)
    feats = tiny_model.head(heldout_batch).detach()
    rec = refit_side_density(net, feats, steps=10**7, tail_steps=10**7, seconds=1.0)
    assert rec["steps"] < 10**7 and rec["tail_steps"] < 10**7
    assert rec["seconds"] <= 1.0 + SLACK


def test_a_phase_never_gets_more_than_is_left():
    b = Budget(10.0)
    with b.phase("a", seconds=100.0, keep=4.0) as p:
        assert p.given <= 6.0
    assert b.record["a"]["given"] <= 6.0
    unlimited = Budget(0)
    with unlimited.phase("x") as p:
        assert math.isinf(p.given) and p.deadline is None


def test_too_few_images_are_said_before_any_work(tiny_train_argv, tmp_path, capsys, monkeypatch):
    from shared.training import recipe

    def no_views(*a, **k):
        raise RuntimeError("views reached")

    monkeypatch.setattr(recipe, "_views", no_views)
    with pytest.raises(RuntimeError, match="views reached"):
        main(["train", *tiny_train_argv(tmp_path / "b")])
    out = capsys.readouterr().out
    assert f"too few to train a bottleneck: use at least {MIN_TRAIN_IMAGES}" in out


def test_a_budget_far_too_short_is_said_before_training(tiny_train_argv, tmp_path, capsys, monkeypatch):
    from shared.training import ladder

    def no_training(*a, **k):
        raise RuntimeError("training reached")

    monkeypatch.setattr(ladder, "train_ladder", no_training)
    with pytest.raises(RuntimeError, match="training reached"):
        main(["train", *tiny_train_argv(tmp_path / "b"), "--time-budget", "60"])
    out = capsys.readouterr().out
    assert "s per training step" in out
    assert "far below what a useful bottleneck needs" in out and "--time-budget of about" in out


def test_a_weak_network_fails_the_command_and_is_marked(tiny_train_argv, tiny_weights, tmp_path, capsys, monkeypatch):
    """The random tiny backbone answers alike for every input, so its networks agree with it; a threshold above
    100% makes the same network weak, and every consequence of the verdict is checked."""
    monkeypatch.setattr(verdict_mod, "MIN_AGREEMENT", 1.01)
    out = tmp_path / "weak"
    rc = main(["train", *tiny_train_argv(out, steps=20, steps_per_rung=10)])
    text = capsys.readouterr().out
    assert rc == EXIT_WEAK
    line = next(x for x in text.splitlines() if x.startswith("verdict: "))
    assert line.startswith("verdict: WEAK - its best rung agrees with the unsplit model on"), line
    assert "--allow-weak" in text
    v = _manifest(out)["verdict"]
    assert v["judged"] is True and v["weak"] is True and "agrees" in v["reason"]

    assert main(["info", str(out)]) == 0
    assert "verdict: WEAK" in capsys.readouterr().out

    from cloud_server.repository import ModelRepository
    from tests._service import make_settings
    from shared.bundle import load_bundle

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    logger = logging.getLogger("splitinfer.server")
    handler, level = Keep(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        repo = ModelRepository(make_settings(load_bundle(out), tiny_weights)).load()
        repo.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(r.levelno == logging.WARNING and "WEAK" in r.getMessage() for r in seen), [r.getMessage() for r in seen]

    allowed = tmp_path / "allowed"
    assert main(["train", *tiny_train_argv(allowed, steps=20, steps_per_rung=10), "--allow-weak"]) == 0
    assert "verdict: WEAK" in capsys.readouterr().out
    assert _manifest(allowed)["verdict"]["weak"] is True  # accepted, still marked


def test_a_usable_network_passes_and_the_server_says_nothing(tiny_bundle, tiny_weights):
    assert tiny_bundle.verdict["judged"] and tiny_bundle.verdict["weak"] is False


def test_no_heldout_images_leave_the_network_unjudged(tiny_train_argv, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["train", *tiny_train_argv(out, steps=10, steps_per_rung=5), "--no-eval"]) == 0
    text = capsys.readouterr().out
    assert "verdict: unjudged" in text
    v = _manifest(out)["verdict"]
    assert v["judged"] is False and v["weak"] is None
    assert main(["info", str(out)]) == 0
    assert "verdict: unjudged" in capsys.readouterr().out


def test_info_of_an_unlabelled_measurement_shows_agreement_not_nan(tiny_bundle, capsys):
    assert "top1" not in tiny_bundle.reference  # the synthetic images have no labels
    assert main(["info", str(tiny_bundle.root)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert "no labels" in out and "agree" in out
    assert f"{tiny_bundle.rungs[0].metrics['agreement']:.2%}" in out


def _measured(agreements, top1=None, ref_top1=None):
    rungs = [{"metrics": {"agreement": a, **({"top1": t} if t is not None else {})}}
             for a, t in zip(agreements, top1 or [None] * len(agreements))]
    ref = {"n_images": 20, **({"top1": ref_top1} if ref_top1 is not None else {})}
    return {"rungs": rungs, "evaluation": {"reference": ref}}


def test_judge_by_agreement_and_by_top1():
    assert judge(_measured([0.0, 0.0]))["weak"] is True  # the reported case: 0.0% agreement, no labels
    assert judge(_measured([MIN_AGREEMENT - 0.01]))["weak"] is True
    ok = judge(_measured([0.3, MIN_AGREEMENT + 0.01]))  # the best rung is judged
    assert ok["weak"] is False and ok["judged"] is True and "no labels" in ok["reason"]
    drop = judge(_measured([0.9], top1=[0.78 - MAX_METRIC_DROP - 0.01], ref_top1=0.78))
    assert drop["weak"] is True and "points below the unsplit model" in drop["reason"]
    assert judge(_measured([0.9], top1=[0.78 - MAX_METRIC_DROP + 0.01], ref_top1=0.78))["weak"] is False
    assert judge({"rungs": [{"metrics": {}}]})["judged"] is False
    few = _measured([0.9])
    few["evaluation"]["reference"]["n_images"] = 4
    assert "rough verdict" in judge(few)["reason"] and "rough" not in ok["reason"]
