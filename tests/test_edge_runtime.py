"""The torch-free edge: integer hyper-decoder in numpy, edge packages, ONNX runtime, robust CLI (its rANS coder:
``tests/test_rans.py``).

The judge throughout is the cloud (PyTorch, CompressAI's decoder): streams from the ONNX edge must decode
with no checksum failure and give the answers the PyTorch edge's streams give.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "shared" / "assets" / "samples"
BLOCK = "import sys\nfor m in ('torch', 'torchvision', 'compressai'):\n    sys.modules[m] = None  # import -> ImportError\n"


# ---------------------------------------------------------------------------------- integer hyper-decoder
def _ladders(tiny_bundle):
    from shared.bundle import embedded_bundle_paths, load_bundle

    return [tiny_bundle] + [load_bundle(p) for p in embedded_bundle_paths()]


def test_integer_hyper_decoder_numpy_equals_torch_on_every_rung(tiny_bundle):
    """Exact equality of table indexes and means, numpy (edge) against torch (cloud), on every rung: z symbols
    over the whole clipped range, beyond it, and all zeros."""
    from shared.codec.integer_numpy import IntLayer, int_hyper_synthesis

    rng = np.random.default_rng(0)
    checked = 0
    for bundle in _ladders(tiny_bundle):
        for r in bundle.rungs:
            rate = bundle.load_rung(r.index).rate
            hs = rate.h_s
            layers = [IntLayer(c.w_int.numpy(), c.mult.numpy(), c.bias_int.numpy(), c.lo, c.hi, u)
                      for c, u in zip(hs.convs, hs.ups)]
            for z_hw, scale in (((3, 4), 3), ((7, 7), 40), ((2, 2), 300), ((5, 3), 0)):
                z = np.rint(rng.normal(0, 1, (1, rate.hyper, *z_hw)) * scale).astype(np.int64)
                y_hw = (z_hw[0] * rate.hyper_stride - 1, z_hw[1] * rate.hyper_stride)  # a crop, as odd inputs give
                idx_t, means_t = rate.coding_params(torch.from_numpy(z).int(), y_hw)
                idx_n, means_n = int_hyper_synthesis(layers, z, hs.levels, hs.means, y_hw)
                assert np.array_equal(idx_t.numpy(), idx_n), (bundle.bundle_id, r.index, z_hw)
                assert np.array_equal(means_t.numpy(), means_n), (bundle.bundle_id, r.index, z_hw)
                checked += 1
    assert checked >= 4 * (3 + 7 + 4)


# ------------------------------------------------------------------------------------------ edge packages
@pytest.fixture(scope="module")
def tiny_package(tiny_bundle, tiny_weights, tmp_path_factory):
    from shared.edge_export import export_edge

    return export_edge(tiny_bundle, tmp_path_factory.mktemp("edge") / "tiny", weights=str(tiny_weights))


def test_edge_package_is_tied_to_its_bundle_and_checked(tiny_package, tiny_bundle, tiny_model, tmp_path):
    import shutil

    from edge_client import EdgePackage, find_package
    from shared.bundle import BundleError
    from shared.edge_export import package_id

    pkg = EdgePackage(tiny_package)
    m = pkg.manifest
    assert pkg.bundle_id == tiny_bundle.bundle_id == m["bundle_id"]
    assert m["head_weights"] == tiny_model.fingerprints()["head"]
    assert m["package_id"] == package_id(m["files"], m["bundle_id"])
    assert {"head.onnx", "manifest.json"} <= set(m["files"]) and len(m["rungs"]) == len(tiny_bundle.rungs)
    assert find_package(tiny_package).package_id == pkg.package_id  # a package folder is used as it is
    bad = tmp_path / "bad"
    shutil.copytree(tiny_package, bad)
    (bad / "rung-01.safetensors").write_bytes(b"\0" + (bad / "rung-01.safetensors").read_bytes()[1:])
    with pytest.raises(BundleError, match="does not match the hash"):
        EdgePackage(bad)
    with pytest.raises(BundleError, match="not an edge package"):
        EdgePackage(tiny_bundle.root)


def test_export_edge_command(tiny_bundle, tiny_weights, tmp_path, capsys):
    from splitinfer.cli import main

    out = tmp_path / "pkg"
    assert main(["export-edge", "--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights), "--out", str(out)]) == 0
    assert f"bundle {tiny_bundle.bundle_id}" in capsys.readouterr().out and (out / "edge.json").is_file()


# ------------------------------------------------------------------------------ ONNX edge against PyTorch
def test_onnx_edge_matches_the_pytorch_edge_on_every_sample_and_rung():
    """Both embedded ladders and the variable-rate network, every sample image x every rung (x 13 levels): 0
    checksum failures on the cloud, top-1 of the cloud's answers >= 99.5% equal to the PyTorch edge's, mean bpp
    within 0.5% per rung or level."""
    from cloud_server.decoder import CloudDecoder
    from edge_client import EdgeEncoder, OnnxEdgeEncoder
    from shared.bundle import embedded_bundle_paths, load_bundle
    from shared.data import scan_images
    from shared.edge_agreement import compare_edges
    from shared.evaluation import default_levels

    images = [p for p, _ in scan_images(SAMPLES, labels=False)]
    assert len(images) >= 6
    pairs = 0
    for path in embedded_bundle_paths():
        bundle = load_bundle(path)
        ag = compare_edges(bundle, images, OnnxEdgeEncoder(bundle), EdgeEncoder(bundle), CloudDecoder(bundle))
        points = len(bundle.rungs) if bundle.config.levels is None else len(default_levels(bundle.config.levels))
        assert ag["pairs"] == len(images) * points
        assert ag["crc_failures"] == 0 and ag["top1_agree"] >= 0.995 and ag["bpp_rel_diff_max"] <= 0.005, ag
        pairs += ag["pairs"]
    assert pairs == len(images) * (7 + 4 + 13)  # the two ladders' rungs, the variable-rate network's 13 measured levels (-8..40 by 4)


@pytest.mark.data
@pytest.mark.skipif(not (SHARED_DATA / "imagenet_val").is_dir(), reason="needs ../shared/data/imagenet_val")
def test_onnx_edge_matches_the_pytorch_edge_on_imagenet():
    """>= 1,000 image x rung pairs of held-out ImageNet images (both embedded ladders, every rung; the variable-rate
    network at 13 levels)."""
    from cloud_server.decoder import CloudDecoder
    from edge_client import EdgeEncoder, OnnxEdgeEncoder
    from shared.bundle import embedded_bundle_paths, load_bundle
    from shared.data import scan_images, split_items, spread
    from shared.edge_agreement import compare_edges

    images = [p for p, _ in spread(split_items(scan_images(SHARED_DATA / "imagenet_val"), "heldout"), 92)]
    total = 0
    for path in embedded_bundle_paths():
        bundle = load_bundle(path)
        ag = compare_edges(bundle, images, OnnxEdgeEncoder(bundle), EdgeEncoder(bundle), CloudDecoder(bundle))
        assert ag["crc_failures"] == 0 and ag["top1_agree"] >= 0.995 and ag["bpp_rel_diff_max"] <= 0.005, ag
        total += ag["pairs"]
    assert total >= 1000


def test_both_encoders_follow_the_encoder_interface(tiny_bundle, tiny_weights, tiny_package, heldout_items):
    """:class:`shared.frame.Encoder` is what the client asks of an encoder: the PyTorch and the ONNX encoder both
    have each of its members, their methods take the same parameters, and both encode a frame through it."""
    import inspect

    from edge_client import EdgeEncoder, Encoder, OnnxEdgeEncoder
    from shared.frame import EncodedFrame

    members = [n for n in vars(Encoder) if not n.startswith("_")] + list(Encoder.__annotations__)
    assert {"bundle", "num_classes", "scheme", "levels", "select", "preprocess", "encode"} <= set(members)
    methods = [n for n, v in vars(Encoder).items() if inspect.isfunction(v) and not n.startswith("_")]
    for enc in (OnnxEdgeEncoder(tiny_package), EdgeEncoder(tiny_bundle, weights=str(tiny_weights))):
        assert isinstance(enc, Encoder) and all(hasattr(enc, n) for n in members), type(enc)
        for name in methods:
            want = list(inspect.signature(getattr(Encoder, name)).parameters)[1:]
            assert list(inspect.signature(getattr(enc, name)).parameters) == want, (type(enc), name)
        frame = enc.encode(heldout_items[0][0], point=enc.scheme.point(rung=1))
        assert isinstance(frame, EncodedFrame) and frame.rung == 1 and frame.n_bytes > 0
    assert not isinstance(object(), Encoder)


def test_onnx_edge_of_every_rate_model(tiny_model, tmp_path):
    """Factorized and static ladders (untrained, updated) code through the ONNX edge too and decode exactly."""
    from edge_client import OnnxEdgeEncoder
    from shared.bundle import save_bundle
    from shared.codec import Bottleneck, BottleneckConfig
    from shared.data import scan_images
    from shared.edge_export import export_edge
    from shared.pipeline import LadderCodec

    c = tiny_model.feature_shape()[0]
    for kind in ("factorized", "static"):
        cfg = BottleneckConfig(in_channels=c, latent=8, hidden=16, dec_hidden=16, rate_model=kind, qp=0.5)
        torch.manual_seed(0)
        b = save_bundle(tmp_path / kind, tiny_model.spec.name, tiny_model.split.name, cfg, [Bottleneck(cfg)], [1.0],
                        extra={"feature_stride": 1, "preprocess": {"input_size": [32, 32]}})
        enc = OnnxEdgeEncoder(export_edge(b, tmp_path / f"{kind}-edge", model=tiny_model))
        codec = LadderCodec(b)
        for p, _ in scan_images(SAMPLES, labels=False)[:2]:
            data = enc.encode(p, rung=0).data
            feat, hdr = codec.decode(data)  # raises on a checksum failure
            assert hdr.rung == 0 and feat.shape[1] == c


# --------------------------------------------------------------------------------- no torch on the edge
@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights):
    from _service import running_server

    with running_server(tiny_bundle, tiny_weights) as s:
        yield s


def _run_blocked(code: str, timeout: int = 120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_edge_path_never_imports_torch_or_compressai(server, tiny_package, heldout_items):
    """A fresh interpreter where importing torch, torchvision or compressai fails: the help texts, the client over
    gRPC (unary and stream) and REST, and ``splitinfer edge`` all work."""
    img = str(heldout_items[0][0])
    code = f"""
import json
from splitinfer.cli import main
for argv in (["--help"], ["edge", "--help"], ["export-edge", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
from edge_client import EdgeClient
with EdgeClient("127.0.0.1:{server.grpc_port}", bundle={str(tiny_package)!r}) as c:
    r1 = c.infer({img!r}, rung=1)
    r2 = list(c.stream([{img!r}], rung=0))[0]
with EdgeClient("127.0.0.1:{server.http_port}", bundle={str(tiny_package)!r}, rest=True) as c:
    r3 = c.infer({img!r}, rung=2)
rc = main(["edge", "--server", "127.0.0.1:{server.grpc_port}", "--bundle", {str(tiny_package)!r}, "--json", {img!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "compressai") and sys.modules[m])
print(json.dumps({{"rungs": [r1.rung, r2.rung, r3.rung], "rc": rc, "loaded": loaded}}))
"""
    out = _run_blocked(code)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"rungs": [1, 0, 2], "rc": 0, "loaded": []}


def test_a_torch_free_edge_given_a_bundle_says_how_to_get_a_package(tiny_bundle):
    out = _run_blocked(f"from edge_client import OnnxEdgeEncoder\nOnnxEdgeEncoder({str(tiny_bundle.root)!r})")
    assert out.returncode != 0 and "splitinfer export-edge" in out.stderr and "no PyTorch" in out.stderr


# ----------------------------------------------------------------------------------------- robust CLI
@pytest.mark.parametrize("mode", ["grpc", "stream", "rest", "rest-stream"])
def test_edge_command_reports_bad_images_and_goes_on(server, tiny_package, heldout_items, tmp_path, mode, capsys):
    """A folder with unreadable files and a missing path: each bad one on its own line, every good one answered,
    exit code 1."""
    import shutil

    from splitinfer.cli import main

    folder = tmp_path / "frames"
    folder.mkdir()
    good = [p for p, _ in heldout_items[:3]]
    for i, p in enumerate(good):
        shutil.copy(p, folder / f"{i}_{p.name}")
    (folder / "1a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "2a_empty.jpg").write_bytes(b"")
    port = server.http_port if mode.startswith("rest") else server.grpc_port
    base = ["edge", "--server", f"127.0.0.1:{port}", "--bundle", str(tiny_package)]
    base += {"grpc": [], "stream": ["--stream"], "rest": ["--rest"], "rest-stream": ["--rest", "--stream"]}[mode]
    assert main(base + ["--json", str(folder), str(tmp_path / "missing.png")]) == 1
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    names = [Path(r["image"]).name for r in rows]
    assert names == sorted(p.name for p in folder.iterdir()) + ["missing.png"]  # every image, in order
    bad = {Path(r["image"]).name: r for r in rows if not r["ok"]}
    assert set(bad) == {"1a_broken.png", "2a_empty.jpg", "missing.png"}
    assert all("cannot encode" in r["error"] for r in bad.values())
    assert sum(r["ok"] for r in rows) == 3

    assert main(base + [str(folder)]) == 1  # the table form: failures on their own lines, a count at the end
    cap = capsys.readouterr()
    assert cap.out.count("failed: BAD_IMAGE") == 2 and "2 of 5 images failed" in cap.err


def test_the_base_install_is_the_torch_free_edge():
    """``pip install splitinfer`` is the edge: its dependencies are all in requirements-edge.txt, so ``pip check``
    after the edge install is clean (grpcio-tools, which generates the stubs at build time, is a build requirement
    and in ``[cloud]``, not a run-time dependency); torch is in ``[cloud]``. A cloud command on an edge install says
    what is missing instead of a traceback."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: re.split(r"[<>=\[; ]", req)[0].lower().replace("_", "-")  # noqa: E731
    base = {name(d) for d in project["dependencies"]}
    edge = {name(ln) for ln in (ROOT / "requirements-edge.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}
    assert base <= edge and not base & {"torch", "torchvision", "compressai", "grpcio-tools"}
    assert "grpcio-tools" in {name(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
                              ["requires"]}
    assert {"torch", "torchvision", "compressai", "onnx"} <= {name(d) for d in project["optional-dependencies"]["cloud"]}
    out = _run_blocked("from splitinfer.cli import main\nsys.exit(main(['models']))")
    assert out.returncode == 2 and "pip install 'splitinfer[cloud]'" in out.stderr
