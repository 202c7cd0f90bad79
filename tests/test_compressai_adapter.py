"""CompressAI used as a library: the rate models are CompressionModels, private attributes are read only in
shared/codec/compressai_adapter.py, and an untested CompressAI version is flagged."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from shared.codec import compressai_adapter as ca
from shared.codec.bottleneck import Bottleneck
from shared.codec.config import BottleneckConfig
from shared.codec.rate_models import RATE_MODELS, build_rate_model

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(r"\._(quantized_cdf|offset|cdf_length|get_medians|likelihood|logits_cumulative|pmf_to_cdf|"
                     r"build_indexes|update_quantiles)\b|update_registered_buffers")


def test_private_compressai_attributes_only_in_the_adapter():
    hits = []
    for d in ("shared", "cloud_server", "edge_client", "benchmarks", "scripts"):
        for p in sorted((ROOT / d).rglob("*.py")):
            if p.name == "compressai_adapter.py":
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_version_check(monkeypatch):
    assert ca.check_version(ca.TESTED_VERSIONS[0]) is True
    with pytest.warns(ca.CompressAIVersionWarning, match="compressai 9.9.9"):
        assert ca.check_version("9.9.9", strict=False) is False
    with pytest.raises(RuntimeError, match="review shared/codec/compressai_adapter.py"):
        ca.check_version("9.9.9", strict=True)
    monkeypatch.setenv(ca.STRICT_ENV, "1")
    with pytest.raises(RuntimeError):
        ca.check_version("9.9.9")
    import compressai

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ca.check_version() is (compressai.__version__ in ca.TESTED_VERSIONS)


def _cfg(rate_model: str, **kw) -> BottleneckConfig:
    return BottleneckConfig(in_channels=8, latent=6, hidden=8, dec_hidden=8, stride=2, rate_model=rate_model,
                            hyper=4, hyper_stride=2, **kw)


@pytest.mark.parametrize("kind", sorted(RATE_MODELS))
def test_models_are_compression_models_and_round_trip(kind):
    torch.manual_seed(0)
    net = Bottleneck(_cfg(kind)).eval()
    assert isinstance(net, ca.CompressionModel) and isinstance(net.rate, ca.CompressionModel)
    assert torch.equal(net.aux_loss(), net.rate.aux_loss())
    with pytest.raises(ValueError, match="uninitialised CDF tables"):
        net.compress(torch.randn(1, 8, 12, 10))
    assert net.update(force=True) is True
    feat = torch.randn(2, 8, 12, 10)
    coded = net.compress(feat)
    # a fresh model (empty CDF buffers) loads the tables through CompressionModel.load_state_dict and
    # decodes the same symbols (same CRC) and features
    fresh = Bottleneck(_cfg(kind)).eval()
    fresh.load_state_dict(net.state_dict())
    assert list(fresh.state_dict()) == list(net.state_dict())
    for payloads, crc in coded:
        a, ca_ = net.decompress(payloads, (12, 10))
        b, cb = fresh.decompress(payloads, (12, 10))
        assert ca_ == cb == crc and torch.equal(a, b)
    tables = {k for k in net.state_dict() if ca.is_table_key(k)}
    assert tables and all(any(b in k for b in ca.CDF_BUFFERS) or k.endswith("scale_table") for k in tables)
    for em in net.rate.entropy_models():
        cdf, lengths, offsets = ca.cdf_tables(em)
        assert cdf.dtype == lengths.dtype == offsets.dtype == torch.int32
        assert cdf.shape[0] == lengths.shape[0] == offsets.shape[0] and int(lengths.max()) <= cdf.shape[1]


def test_hyperprior_update_uses_our_scale_table():
    net = Bottleneck(_cfg("hyperprior"))
    net.update()
    assert torch.equal(net.rate.gaussian_conditional.scale_table, net.rate.scale_table)
    assert net.rate.h_s.exported()


def test_channel_indexes():
    idx = ca.channel_indexes((1, 3, 2, 2))
    assert idx.dtype == torch.int32 and idx[0, :, 1, 1].tolist() == [0, 1, 2]


def test_build_rate_model_passes_only_what_each_model_takes():
    every = dict(hyper=4, hyper_stride=2, means=True, qp=2.0, hyper_decoder="integer")
    assert build_rate_model("static", 6, **every).qp == 2.0
    assert build_rate_model("factorized", 6, **every).latent == 6
    assert build_rate_model("hyperprior", 6, **every).hyper == 4
    with pytest.raises(TypeError, match="nonsense"):
        build_rate_model("hyperprior", 6, nonsense=1)
    for cls in RATE_MODELS.values():  # no constructor swallows unknown keywords any more
        with pytest.raises(TypeError):
            cls(6, nonsense=1)


def test_train_state_loads_strictly():
    from shared.training.ladder import _load_train_state, _trainable

    src = Bottleneck(_cfg("hyperprior"))
    src.update()
    state = src.state_dict()
    net = Bottleneck(_cfg("hyperprior"))
    _load_train_state(net, {**_trainable(state), "__steps__": torch.tensor(3)})  # tables left out: allowed
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items() if not ca.is_table_key(k))
    _load_train_state(Bottleneck(_cfg("hyperprior")), {k: v for k, v in Bottleneck(_cfg("hyperprior")).state_dict().items()})
    bad = dict(_trainable(state))
    bad.pop("g_a.0.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        _load_train_state(net, bad)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        _load_train_state(net, {**_trainable(state), "rate.h_x.weight": torch.zeros(1)})


def test_importing_the_codec_prints_no_torch_jit_warning():
    """compressai applies torch.jit.script at import, which torch deprecates; the adapter (the one place compressai
    is imported) keeps that FutureWarning off every command's output, while other warnings still show."""
    import subprocess
    import sys

    code = "import shared.codec.compressai_adapter, shared.edge_export; import warnings; warnings.warn('still shown')"
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torch.jit.script" not in r.stderr
    assert "still shown" in r.stderr
