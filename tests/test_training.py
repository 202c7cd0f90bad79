"""Ladder training: the backbone is never touched, parameter groups are sound, training resumes, and the
same command runs under ``torchrun`` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.codec import Bottleneck, BottleneckConfig
from shared.models import load_split_model
from shared.training import ladder
from shared.training.cache import FeatureCache, build_cache
from shared.training.ladder import LadderConfig, train_ladder

REPO = Path(__file__).resolve().parents[1]
BCFG = BottleneckConfig(in_channels=16, latent=8, hidden=16, dec_hidden=16, stride=2, hyper=8, hyper_stride=2)


@pytest.fixture
def model(tiny_weights):
    """A fresh copy of the tiny backbone (these tests watch it, so they do not share it)."""
    return load_split_model("cifar_resnet20", "layer1", weights=str(tiny_weights))


@pytest.fixture(scope="module")
def cache(tiny_weights, tiny_images) -> FeatureCache:
    from shared.data import scan_images, split_items

    m = load_split_model("cifar_resnet20", "layer1", weights=str(tiny_weights))
    items = split_items(scan_images(tiny_images), "train")
    return build_cache(m, items, views=1, batch_size=8)


def config(**kw) -> LadderConfig:
    base = dict(lambdas=[4.0, 1.0], steps=4, steps_per_rung=2, batch_size=4, log_every=1)
    base.update(kw)
    return LadderConfig(**base)


def log_rows(out: Path):
    with open(out / "train_log.csv", newline="") as f:
        return list(csv.reader(f))[1:]


def test_training_leaves_the_backbone_bit_identical(model, cache, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k for k in before), "BatchNorm statistics are part of the snapshot"
    tail_calls = []
    model.tail.register_forward_hook(lambda *a: tail_calls.append(1))

    nets = train_ladder(model, cache, BCFG, config(), tmp_path, progress=False)

    assert len(nets) == 2
    assert tail_calls, "the distillation loss never ran the tail: this test would prove nothing"
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"backbone tensor {k} changed during bottleneck training"
    assert not model.training and not any(m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # ... while the bottleneck did train
    fresh = Bottleneck(BCFG).state_dict()
    changed = [k for k, v in nets[0].state_dict().items() if k in fresh and not torch.equal(v, fresh[k])]
    assert any(k.startswith("g_a.") for k in changed)


@pytest.mark.parametrize("kind", ["hyperprior", "factorized", "static"])
def test_net_and_aux_parameters_are_disjoint_and_complete(kind):
    net = Bottleneck(BottleneckConfig(in_channels=16, latent=8, hidden=16, dec_hidden=16, rate_model=kind))
    main, aux = net.net_parameters(), net.aux_parameters()
    ids_main, ids_aux, ids_all = set(map(id, main)), set(map(id, aux)), set(map(id, net.parameters()))
    assert len(ids_main) == len(main) and len(ids_aux) == len(aux)
    assert not ids_main & ids_aux
    assert ids_main | ids_aux == ids_all
    assert aux and all(name.endswith(".quantiles") for name, p in net.named_parameters() if id(p) in ids_aux)
    n_bottlenecks = sum(1 for m in net.modules() if type(m).__name__ == "EntropyBottleneck")
    assert len(aux) == n_bottlenecks


def _states(nets):
    return [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]


def test_training_resumes_from_its_checkpoint(model, cache, tmp_path, monkeypatch):
    first = _states(train_ladder(model, cache, BCFG, config(), tmp_path, progress=False))
    rows = log_rows(tmp_path)
    assert {r[0] for r in rows} == {"0", "1"}  # both rungs logged
    assert (tmp_path / "checkpoint.pt").is_file()

    def no_training(*a, **k):
        raise AssertionError("a resumed run with every rung in its checkpoint must not train")

    monkeypatch.setattr(torch.optim.Adam, "step", no_training)
    second = _states(train_ladder(model, cache, BCFG, config(), tmp_path, progress=False))
    assert log_rows(tmp_path) == rows
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_ladder_trains_only_the_missing_rungs(model, cache, tmp_path, monkeypatch):
    save = ladder._save_checkpoint
    saves = []

    def save_then_stop(out, state):
        save(out, state)
        saves.append(len(state["trained"]))
        if len(saves) == 1:
            raise KeyboardInterrupt  # killed right after the first rung's checkpoint

    monkeypatch.setattr(ladder, "_save_checkpoint", save_then_stop)
    cfg = config(lambdas=[4.0, 2.0, 1.0])
    with pytest.raises(KeyboardInterrupt):
        train_ladder(model, cache, BCFG, cfg, tmp_path, progress=False)
    assert [r[0] for r in log_rows(tmp_path)] and {r[0] for r in log_rows(tmp_path)} == {"0"}
    first_rung = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trained"][0]

    nets = train_ladder(model, cache, BCFG, cfg, tmp_path, progress=False)
    assert saves == [1, 2, 3]
    assert {r[0] for r in log_rows(tmp_path)} == {"0", "1", "2"}
    assert sum(r[0] == "0" for r in log_rows(tmp_path)) == cfg.steps  # rung 0 was not trained again
    sd = nets[0].state_dict()  # lambda 4 is rung 0
    assert all(torch.equal(sd[k], v) for k, v in first_rung.items() if not k.startswith("__"))


def test_a_rung_interrupted_mid_way_resumes_where_it_stopped(model, cache, tmp_path, monkeypatch):
    """A long rung checkpoints as it goes (weights, both optimizers, the batch stream, its step): killed after
    step 3 of 6 and resumed, it ends bit-identical to the same rung trained without a stop."""
    cfg = config(lambdas=[1.0], steps=6, checkpoint_every=1e-9, feature_warmup=0)
    whole = _states(train_ladder(model, cache, BCFG, cfg, tmp_path / "whole", progress=False))

    save = ladder._save_checkpoint

    def save_then_stop(out, state):
        save(out, state)
        if state.get("partial", {}).get("step") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ladder, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_ladder(model, cache, BCFG, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(ladder, "_save_checkpoint", save)
    steps_taken = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, _s=torch.optim.Adam.step, **k:
                        (steps_taken.append(1), _s(self, *a, **k))[1])
    resumed = _states(train_ladder(model, cache, BCFG, cfg, tmp_path / "cut", progress=False))
    assert len(steps_taken) == 2 * 3  # three steps left, each with its main and aux update
    for a, b in zip(whole, resumed):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_no_resume_starts_over(model, cache, tmp_path):
    train_ladder(model, cache, BCFG, config(), tmp_path, progress=False)
    n = len(log_rows(tmp_path))
    train_ladder(model, cache, BCFG, config(), tmp_path, resume=False, progress=False)
    assert len(log_rows(tmp_path)) == 2 * n


# ------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_ddp_training_on_cpu(tiny_train_argv, tmp_path):
    """``torchrun --nproc_per_node 2 -m splitinfer train ... --device cpu``: gloo; rank 0 builds the view store,
    each rank trains on its shard of the images."""
    out = tmp_path / "bundle"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "splitinfer", "train", *tiny_train_argv(out, steps=3, steps_per_rung=2),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "2 process(es)" in proc.stdout

    from shared.bundle import load_bundle

    bundle = load_bundle(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2
    assert len(bundle.rungs) == 3 and all("bpp" in r.metrics for r in bundle.rungs)
    from shared.training.views import ViewStore

    (store,) = [ViewStore(p) for p in (out / "cache").iterdir()]
    assert store.rounds("plain") == [0, 1] and manifest["training"]["n_views"] == 2 * len(range(0, manifest["training"]["n_images"], 2))  # rank 0: its shard
    for r in bundle.rungs:
        bundle.load_rung(r.index)  # sha256 checked, tables present


def test_python_dash_m_splitinfer():
    proc = subprocess.run([sys.executable, "-m", "splitinfer", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(cmd in proc.stdout for cmd in ("models", "train", "encode", "decode", "info"))


def test_side_density_refit_changes_only_the_bits_of_z(model, cache, tiny_bundle, tmp_path):
    """Refitting the z density keeps every symbol and decoded feature bit-identical, lowers the model's
    bits per z value and, through the rebuilt tables, the real z payload; `splitinfer train` records it."""
    from shared.bitstream import unpack
    from shared.bundle import save_bundle
    from shared.pipeline import LadderCodec
    from shared.training.side_density import refit_side_density

    (net,) = train_ladder(model, cache, BCFG, config(lambdas=[1.0], steps=30), tmp_path / "run", progress=False)
    extra = {k: v for k, v in tiny_bundle.manifest.items() if k in ("task", "feature_shape", "feature_stride", "preprocess")}
    before = save_bundle(tmp_path / "before", "cifar_resnet20", "layer1", BCFG, [net], [1.0], extra=extra)
    rec = refit_side_density(net, cache.features, steps=200, tail_steps=300)
    after = save_bundle(tmp_path / "after", "cifar_resnet20", "layer1", BCFG, [net], [1.0], extra=extra)
    assert rec["bits_per_z_after"] < rec["bits_per_z_before"]

    feats = cache.features[:6].float()
    z_bytes = {}
    for name, b in (("before", before), ("after", after)):
        codec = LadderCodec(b, "cpu")
        msgs = codec.encode(feats, (32, 32), 0)
        z_bytes[name] = sum(unpack(m)[0].payload_lengths[1] for m in msgs)
        decoded = [codec.decode(m)[0] for m in msgs]
        if name == "before":
            ref, y_bytes = decoded, [unpack(m)[0].payload_lengths[0] for m in msgs]
        else:
            assert all(torch.equal(a, r) for a, r in zip(decoded, ref)), "a decoded feature changed"
            assert [unpack(m)[0].payload_lengths[0] for m in msgs] == y_bytes, "the y payload changed"
    assert z_bytes["after"] <= z_bytes["before"]


def test_cli_train_refits_and_records_the_side_density(tiny_bundle):
    refits = tiny_bundle.manifest["training"]["side_refit"]
    assert [r["lambda"] for r in refits] == sorted((r.lam for r in tiny_bundle.rungs), reverse=True)
    assert all(r["bits_per_z_after"] <= r["bits_per_z_before"] for r in refits)


def test_log_rows_show_the_logit_loss_with_tail_every(model, cache, tmp_path):
    """With --tail-every 2 a row due on a feature-only step waits for the next tail step (it used to log NaN)."""
    train_ladder(model, cache, BCFG, config(lambdas=[1.0], steps=9, tail_every=2, log_every=2, feature_warmup=0),
                 tmp_path, progress=False)
    rows = log_rows(tmp_path)
    assert len(rows) >= 4 and all(r[7] != "nan" for r in rows)


@pytest.mark.slow
def test_a_compiled_step_trains_and_keeps_the_parameter_names(model, cache, tmp_path):
    """--compile compiles g_a, g_s and the tail in place: the trained state loads into a plain Bottleneck."""
    (net,) = train_ladder(model, cache, BCFG, config(lambdas=[1.0], steps=3, compile=True, feature_warmup=0),
                          tmp_path, progress=False)
    fresh = Bottleneck(BCFG)
    assert net.state_dict().keys() == fresh.state_dict().keys()
    fresh.load_state_dict(net.state_dict())
    assert [r[2] for r in log_rows(tmp_path)] == ["1", "2", "3"]  # every step ran (and logged its loss)
    assert all(math.isfinite(float(r[3])) for r in log_rows(tmp_path))
