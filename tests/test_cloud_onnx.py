"""The torch-free cloud (issue 25, item 2): a cloud package (``splitinfer export-cloud``) decoded with numpy and run
in ONNX Runtime gives the symbols and the answers of the PyTorch cloud, and serves without torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import VR_LEVELS

ROOT = Path(__file__).resolve().parents[1]
# logits of the two runtimes: float32 graphs that ONNX Runtime fuses and reorders. Measured on the tiny bundles (every
# held-out image, rung and level): at most 2.4e-7 of the logits' range; the tolerance leaves 40x of room
LOGIT_TOL = 1e-5


@pytest.fixture(scope="module")
def cloud_packages(tiny_bundle, vr_bundle, tiny_weights, tmp_path_factory):
    from shared.cloud_export import export_cloud

    root = tmp_path_factory.mktemp("cloud")
    return {b.bundle_id: export_cloud(b, root / b.bundle_id, weights=str(tiny_weights))
            for b in (tiny_bundle, vr_bundle)}


def _messages(bundle, tiny_model, heldout_batch):
    """(rung, level, message) for every held-out image at every rung (a ladder) or at levels across the range."""
    from shared.pipeline import LadderCodec

    codec = LadderCodec(bundle)
    with torch.no_grad():
        feat = tiny_model.head(heldout_batch)
    hw = tuple(heldout_batch.shape[-2:])
    if bundle.config.variable_rate:
        lo, hi = VR_LEVELS
        return [(0, q, m) for q in (lo, (lo + hi) // 2, hi) for m in codec.encode(feat, hw, rung=0, level=q)]
    return [(r.index, None, m) for r in bundle.rungs for m in codec.encode(feat, hw, rung=r.index)]


@pytest.mark.parametrize("which", ["ladder", "variable-rate"])
def test_onnx_cloud_gives_the_symbols_and_answers_of_the_pytorch_cloud(which, tiny_bundle, vr_bundle, tiny_model,
                                                                      heldout_batch, cloud_packages, tiny_weights):
    from cloud_server.decoder import CloudDecoder
    from cloud_server.onnx_runtime import OnnxCloudDecoder

    bundle = tiny_bundle if which == "ladder" else vr_bundle
    ref = CloudDecoder(bundle, weights=str(tiny_weights), model=tiny_model)
    onnx = OnnxCloudDecoder(cloud_packages[bundle.bundle_id])
    msgs = _messages(bundle, tiny_model, heldout_batch)
    worst, seen = 0.0, set()
    for rung, level, data in msgs:
        # symbols: the numpy decoder's y_hat is the one torch's rate model reconstructs, and its symbols' checksum
        # is the encoder's (decode_symbols raises otherwise)
        hdr, y_hat, y_sym, z_sym = onnx.codec.decode_symbols(data)
        assert (hdr.rung, hdr.level) == (rung, level)
        _, payloads = ref.codec.parse(data)
        kw = {} if level is None else {"level": level}
        y_ref, crc_ref = ref.codec.rung(rung).rate.decompress(payloads, hdr.y_hw, **kw)
        assert crc_ref == hdr.symbols_crc
        np.testing.assert_array_equal(y_hat, y_ref.numpy())
        # answers: the same top-1 on every message, logits within LOGIT_TOL of the logits' range
        out_ref, _, _ = ref.decode_output(data)
        out, _, _ = onnx.decode_output(data)
        a_ref, a = ref.decode(data, topk=3), onnx.decode(data, topk=3)
        assert a.label == a_ref.label == int(out_ref.argmax()), (rung, level)
        assert [i for i, _, _ in a.topk] == [i for i, _, _ in a_ref.topk]
        scale = float(out_ref.max() - out_ref.min())
        worst = max(worst, float(np.abs(out - out_ref.numpy()).max()) / scale)
        seen.add((rung, level))
    print(f"{which}: {len(msgs)} messages, largest logit difference {worst:.2e} of the logits' range")
    assert worst <= LOGIT_TOL, worst
    assert len(seen) == (3 if which == "variable-rate" else len(bundle.rungs))


def test_cloud_package_is_tied_to_its_bundle_and_checked(cloud_packages, tiny_bundle, tmp_path):
    import shutil

    from cloud_server.onnx_runtime import CloudPackage, OnnxCloudDecoder
    from shared.bundle import BundleError

    src = cloud_packages[tiny_bundle.bundle_id]
    m = json.loads((src / "cloud.json").read_text())
    assert m["bundle_id"] == tiny_bundle.bundle_id and m["format"] == "splitinfer-cloud/1"
    assert {"tail.onnx", "manifest.json"} <= set(m["files"]) and len(m["rungs"]) == len(tiny_bundle.rungs)
    assert CloudPackage(src).package_id == m["package_id"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    with open(bad / "rung-01.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="SHA-256"):
        OnnxCloudDecoder(bad)
    with pytest.raises(BundleError, match="not a cloud package"):
        CloudPackage(tiny_bundle.root)


def test_export_cloud_command(tiny_bundle, tiny_weights, tmp_path, capsys):
    from splitinfer.cli import main

    out = tmp_path / "cloud"
    assert main(["export-cloud", "--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights),
                 "--out", str(out)]) == 0
    assert f"bundle {tiny_bundle.bundle_id}" in capsys.readouterr().out and (out / "cloud.json").is_file()


BLOCK = ("import sys\nclass _Block:\n    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in ('torch', 'torchvision', 'compressai'):\n"
         "            raise ImportError(f'{name} is blocked in this test')\n"
         "sys.meta_path.insert(0, _Block())\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_without_torch_answers_an_edge_request(cloud_packages, tiny_bundle, tiny_model, heldout_items,
                                                    tiny_weights, tmp_path):
    """``splitinfer serve --bundle CLOUD_PACKAGE`` in a process where torch, torchvision and compressai cannot be
    imported (a meta-path blocker in ``sitecustomize`` on PYTHONPATH) answers a real edge request over gRPC and REST
    with the PyTorch cloud's answer."""
    from cloud_server.decoder import CloudDecoder
    from edge_client import EdgeClient
    from shared.encoder import EdgeEncoder

    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    env.pop("SPLITINFER_CLOUD_RUNTIME", None)  # auto: a cloud package is served by ONNX Runtime
    grpc_port, http_port = _free_port(), _free_port()
    pkg = cloud_packages[tiny_bundle.bundle_id]
    cmd = [sys.executable, "-m", "splitinfer", "serve", "--bundle", f"tiny={pkg}", "--host", "127.0.0.1",
           "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    encoder = EdgeEncoder(tiny_bundle, model=tiny_model)
    ref = CloudDecoder(tiny_bundle, weights=str(tiny_weights), model=tiny_model)
    try:
        deadline, err = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", grpc_port), timeout=1):
                    break
            except OSError as e:
                err = e
                time.sleep(0.5)
        assert proc.poll() is None, f"the torch-free server stopped ({err}):\n{proc.communicate()[0]}"
        for rest in (False, True):
            addr = f"127.0.0.1:{http_port if rest else grpc_port}"
            with EdgeClient(addr, encoder=encoder, model="tiny", top_k=3, rest=rest, timeout_s=30) as client:
                for path, _ in heldout_items[:3]:
                    frame = encoder.encode(path, rung=1)
                    got = client.send(frame)
                    want = ref.decode(frame.data, topk=3)
                    assert [i for i, _, _ in got.topk] == [i for i, _, _ in want.topk], (rest, path)
                    assert got.rung == 1
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "onnx runtime" in out, out  # the repository says which runtime serves each model


def test_cloud_runtime_benchmark_on_the_tiny_bundle(tiny_bundle, tiny_weights, tiny_images, cloud_packages, tmp_path,
                                                    monkeypatch, capsys):
    """``benchmarks/cloud_runtime.py`` end to end (tiny settings): both runtimes answer every frame alike, both
    servers take load, and the summary has a ratio per client count."""
    from tests.test_benchmarks import _benchmark

    monkeypatch.setenv("SPLITINFER_CLOUD_THREADS", "1")  # the script sets it for its run; restored after the test
    out = tmp_path / "bench.json"
    rc = _benchmark("cloud_runtime").main([
        "--bundle", str(tiny_bundle.root), "--package", str(cloud_packages[tiny_bundle.bundle_id]),
        "--weights", str(tiny_weights), "--images", str(tiny_images), "--max-images", "2", "--clients", "1",
        "--duration", "0.5", "--rounds", "1", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["answers"]["top1_equal"] == r["answers"]["frames"] == 2 * len(tiny_bundle.rungs)
    assert {x["runtime"] for x in r["load"]} == {"torch", "onnx"} and all(x["ok"] > 0 for x in r["load"])
    assert r["errors"] == 0 and r["summary"]["1"]["ratio_median"] > 0
    assert "ONNX Runtime / PyTorch throughput" in capsys.readouterr().out
