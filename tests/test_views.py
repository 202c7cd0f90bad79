"""The view store (consistent views, built once, extended, selected) and the tail-feature loss, on a random
``efficientnet_lite0`` (the family whose spec declares feature taps) and a few synthetic photos."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from shared.codec import BottleneckConfig
from shared.models import load_split_model
from shared.training.ladder import LadderConfig, train_ladder
from shared.training.recipe import ladder_warnings
from shared.training.views import build_view_store, open_view_store, tail_taps


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((96, 72), Image.BILINEAR).save(folder / f"p{i}.png")
    return [(p, i if i % 2 else None) for i, p in enumerate(sorted(folder.iterdir()))]


_NET = {}


@pytest.fixture(scope="module")
def effnet():
    from shared.models import get_backbone

    torch.manual_seed(0)
    _NET["net"] = get_backbone("efficientnet_lite0").build("random")
    return load_split_model("efficientnet_lite0", "block14", model=_NET["net"])


@pytest.fixture(scope="module")
def store(effnet, photos, tmp_path_factory):
    return build_view_store(effnet, photos, tmp_path_factory.mktemp("views"), plain=2, mix=1, batch_size=4,
                            progress=False)


def test_tail_taps_are_the_stages_after_the_split(effnet):
    assert tail_taps(effnet) == ["_blocks.15", "_avg_pooling"]
    shallow = load_split_model("efficientnet_lite0", "block1", weights="random")
    assert tail_taps(shallow) == ["_blocks.10", "_blocks.14", "_blocks.15", "_avg_pooling"]


def test_store_keeps_consistent_views(store, effnet, photos):
    """The stored logits are the teacher's answer to the very view whose split feature is stored."""
    assert store.rounds("plain") == [0, 1] and store.rounds("mix") == [2]
    c = store.select("_blocks.14", ["_blocks.15", "_avg_pooling"], [str(p) for p, _ in photos], plain=2, mix=1)
    assert len(c) == 3 * len(photos)
    assert tuple(c.features.shape[1:]) == (192, 7, 7) and tuple(c.teacher.shape[1:]) == (1000,)
    assert tuple(c.targets["_blocks.15"].shape[1:]) == (320, 7, 7)
    with torch.no_grad():
        again = effnet.run_tail(c.features.float(), (len(c), 3, 224, 224))
    assert torch.allclose(again, c.teacher.float(), atol=0.05, rtol=0.01)
    # views differ from round to round (fresh augmentations), and labels ride along (-1 when unknown)
    assert not torch.equal(c.features[: len(photos)], c.features[len(photos): 2 * len(photos)])
    assert c.labels[: len(photos)].tolist() == [-1, 1, -1, 3, -1]


def test_store_extends_resumes_and_serves_subsets(store, effnet, photos):
    first = store._round_path(0).stat().st_mtime_ns
    bigger = build_view_store(effnet, photos, store.root.parent, plain=3, mix=1, progress=False)
    assert bigger.root == store.root and bigger.rounds("plain") == [0, 1, 3]
    assert store._round_path(0).stat().st_mtime_ns == first, "built rounds are never recomputed"
    subset = [str(p) for p, _ in photos[:2]]
    assert open_view_store(store.root.parent, effnet, subset).root == store.root
    # one store serves every split of the same backbone: the shallow split finds the deep split's views
    shallow = load_split_model("efficientnet_lite0", "block1", model=_NET["net"])
    assert open_view_store(store.root.parent, shallow, subset).root == store.root
    other = load_split_model("efficientnet_lite0", "block14", weights="random")  # other random weights
    assert open_view_store(store.root.parent, other, subset) is None
    c = bigger.select("_blocks.14", [], subset, plain=3)
    assert len(c) == 6 and not c.targets
    assert len(bigger.select("_blocks.14", [], [str(p) for p, _ in photos], plain=1, labelled_only=True)) == 2
    with pytest.raises(ValueError, match="not in this view store"):
        bigger.select("_blocks.14", [], ["/nowhere.png"], plain=1)
    with pytest.raises(ValueError, match="rounds built"):
        bigger.select("_blocks.14", [], subset, plain=9)


def test_deadline_stops_between_rounds(effnet, photos, tmp_path):
    s = build_view_store(effnet, photos, tmp_path, plain=3, progress=False, deadline=0.0)
    assert s.rounds("plain") == []


def test_tail_feature_loss_is_trained_and_logged(store, effnet, photos, tmp_path):
    c = store.select("_blocks.14", tail_taps(effnet), [str(p) for p, _ in photos], plain=2)
    bcfg = BottleneckConfig(in_channels=192, latent=8, hidden=16, dec_hidden=16, stride=1, hyper=8, hyper_stride=2)
    cfg = LadderConfig(lambdas=[1.0], steps=3, steps_per_rung=1, batch_size=2, log_every=1, feature_warmup=0.0,
                       tail_feature_weight=1.0)
    train_ladder(effnet, c, bcfg, cfg, tmp_path, progress=False)
    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["tail_mse"]) > 0 for r in rows)
    # without the weight the column stays empty: the loss is opt-in
    cfg.tail_feature_weight = 0.0
    train_ladder(effnet, c, bcfg, cfg, tmp_path / "off", progress=False)
    with open(tmp_path / "off" / "train_log.csv", newline="") as f:
        assert all(r["tail_mse"] == "" for r in csv.DictReader(f))


def test_ladder_warnings():
    ref = {"evaluation": {"reference": {"top1": 0.78}}}
    good = {"rungs": [{"metrics": {"bpp": 0.5, "top1": 0.77}}, {"metrics": {"bpp": 0.2, "top1": 0.7}}], **ref}
    assert ladder_warnings(good) == []
    unordered = {"rungs": [{"metrics": {"bpp": 0.2, "top1": 0.77}}, {"metrics": {"bpp": 0.3, "top1": 0.76}}], **ref}
    assert "not ordered by rate" in ladder_warnings(unordered)[0]
    broken = {"rungs": [{"metrics": {"bpp": 0.2, "top1": 0.0}}], **ref}
    (w,) = ladder_warnings(broken)
    assert "78.0 points below" in w
    assert ladder_warnings({"rungs": [{"metrics": {}}]}) == []


@pytest.mark.timing
def test_train_cli_reports_the_heldout_rule_and_bounds_its_budget(tiny_weights, tiny_images, tmp_path, capsys):
    from splitinfer.cli import main

    rc = main(["train", "--model", "cifar_resnet20", "--split", "layer1", "--weights", str(tiny_weights),
               "--data", str(tiny_images), "--lambdas", "2", "--steps", "100000", "--steps-per-rung", "1",
               "--batch-size", "4", "--views", "1", "--time-budget", "40", "--side-refit-steps", "5",
               "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "held out by the rule (never train)" in out
    took = float(out.rsplit("train took ", 1)[1].split()[0])
    assert took <= 40, "the budget bounds the whole command"
