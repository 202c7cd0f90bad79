"""The ``splitinfer`` command (``splitinfer.cli.main``) and the edge/cloud halves it drives.

The edge and the cloud each build the backbone themselves: they load the same weights *file* (a random init
saved once by the ``tiny_weights`` fixture), which is what makes the head of one and the tail of the other
the same network.
"""

from __future__ import annotations

import json

import pytest
import torch

from shared import __version__
from shared.bitstream import BitstreamError, unpack
from splitinfer.cli import COMMANDS, main

HELP_MENTIONS = {
    "models": ["--json"],
    "train": ["--model", "--split", "--weights", "--data", "--extra-data", "--eval-data", "--out", "--lambdas",
              "--steps", "--steps-per-rung", "--batch-size", "--views", "--rate-model", "--device", "--no-resume",
              "held out", "--part", "--supervised", "--mix-views", "--tail-features", "--finetune", "--no-eval",
              "--time-budget"],
    "encode": ["image", "--output", "--bundle", "--bitrate", "--rung", "--weights"],
    "decode": ["bitstream", "--bundle", "--topk", "--weights", "--json"],
    "eval": ["--bundle", "--data", "--part", "--limit", "--out", "--weights", "--batch-size", "--update-manifest",
             "--pictures", "--baselines-from"],
    "train-teacher": ["--data", "--test-data", "--out", "--epochs", "--crop", "--time-budget", "--class-weight-power"],
    "edge": ["--server", "--masks", "--masks-dir"],
    "info": ["bundle"],
}


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "splitinfer" in out
    for name in COMMANDS:
        assert name in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"splitinfer {__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sub_command_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: splitinfer {command}" in out
    for option in HELP_MENTIONS.get(command, []):
        assert option in out, f"`splitinfer {command} --help` does not mention {option}"


def test_no_command_and_bad_arguments_exit_2(capsys):
    for argv in ([], ["frobnicate"], ["encode"], ["train", "--out", "x"], ["encode", "a.png", "-o", "b", "--rung", "1",
                                                                          "--bitrate", "0.5"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
    assert "error" in capsys.readouterr().err


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_key = {(r["model"], r["split"]): r for r in rows}
    row = by_key[("efficientnet_lite0", "block1")]
    assert row["default"] is True
    assert row["feature_shape"] == [24, 56, 56]
    assert row["depth"] == "shallow" and row["edge_flop_share"] <= 0.15
    assert ("cifar_resnet20", "layer1") in by_key


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "block1" in out and "24x56x56" in out


# ------------------------------------------------------------------------------------ edge and cloud
@pytest.fixture(scope="module")
def edge(tiny_bundle, tiny_weights):
    from edge_client import EdgeEncoder

    return EdgeEncoder(tiny_bundle.root, weights=str(tiny_weights))


@pytest.fixture(scope="module")
def cloud(tiny_bundle, tiny_weights):
    from cloud_server import CloudDecoder

    return CloudDecoder(tiny_bundle.root, weights=str(tiny_weights))


@pytest.fixture(scope="module")
def image(heldout_items):
    return heldout_items[0][0]


@torch.no_grad()
def test_python_api_round_trip(edge, cloud, tiny_bundle, tiny_model, image):
    from shared.data import eval_transform, load_image

    x = eval_transform(tiny_model.spec.preprocess)(load_image(image)).unsqueeze(0)
    for rung in range(len(tiny_bundle.rungs)):
        frame = edge.encode(image, rung=rung)
        assert frame.rung == rung and frame.input_hw == (32, 32)
        assert frame.bpp == 8 * len(frame.data) / 1024
        hdr, _ = unpack(frame.data)
        assert hdr.rung == rung

        pred = cloud.decode(frame.data, topk=3)
        assert pred.rung == rung and pred.n_bytes == len(frame.data) and pred.input_hw == (32, 32)
        assert len(pred.topk) == 3
        # what the split pipeline computes without any bytes: head -> bottleneck (eval) -> tail
        net = tiny_bundle.load_rung(rung)
        logits = tiny_model.tail(net(tiny_model.head(x))["feat_hat"], x)
        p, idx = logits.softmax(1)[0].topk(3)
        assert [i for i, _, _ in pred.topk] == idx.tolist()
        torch.testing.assert_close(torch.tensor([q for _, _, q in pred.topk]), p, atol=1e-5, rtol=0)
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        assert all(name == names[i] for i, name, _ in pred.topk)
        assert set(pred.timings_ms) == {"decode", "tail"}
    # the bitrate hint picks the rung with the bundle's rule
    bpps = [r.bpp for r in tiny_bundle.rungs]
    assert edge.encode(image, bitrate=bpps[1]).rung == 1
    assert edge.encode(image).rung == 0
    assert edge.encode(image, bitrate=1e-6).rung == len(bpps) - 1


def test_cloud_refuses_bad_messages(edge, cloud, image):
    data = edge.encode(image, rung=0).data
    for bad in (data[:-1], data[:10], b"", b"not a bitstream at all", data[:20] + bytes([data[20] ^ 4]) + data[21:]):
        with pytest.raises(BitstreamError):
            cloud.decode(bad)


def test_cli_encode_decode_files(tiny_bundle, tiny_weights, edge, cloud, image, tmp_path, capsys):
    bundle, weights = str(tiny_bundle.root), str(tiny_weights)
    f = tmp_path / "img.si"
    assert main(["encode", str(image), "-o", str(f), "--bundle", bundle, "--rung", "1", "--weights", weights]) == 0
    out = capsys.readouterr().out
    assert f"{f.stat().st_size} bytes" in out and "rung 1" in out and tiny_bundle.bundle_id in out
    assert f.read_bytes() == edge.encode(image, rung=1).data  # encoding is deterministic

    assert main(["decode", str(f), "--bundle", bundle, "--weights", weights, "--json", "--topk", "2"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = cloud.decode(f.read_bytes(), topk=2)
    assert got["rung"] == 1 and got["bytes"] == f.stat().st_size
    assert got["bpp"] == pytest.approx(8 * f.stat().st_size / 1024)
    assert [t[0] for t in got["topk"]] == [t[0] for t in want.topk]
    assert [t[1] for t in got["topk"]] == [t[1] for t in want.topk]

    assert main(["decode", str(f), "--bundle", bundle, "--weights", weights]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"rung 1, {f.stat().st_size} bytes") and want.topk[0][1] in out

    # a bitrate hint instead of a rung
    g = tmp_path / "hint.si"
    hint = tiny_bundle.rungs[2].bpp
    argv = ["encode", str(image), "-o", str(g), "--bundle", bundle, "--bitrate", str(hint), "--weights", weights]
    assert main(argv) == 0
    assert unpack(g.read_bytes())[0].rung == 2


def test_cli_decode_of_a_corrupted_file_exits_2(tiny_bundle, tiny_weights, edge, image, tmp_path, capsys):
    bundle, weights = str(tiny_bundle.root), str(tiny_weights)
    data = edge.encode(image, rung=0).data
    cases = {
        "flipped.si": data[:30] + bytes([data[30] ^ 0x10]) + data[31:],
        "truncated.si": data[: len(data) // 2],
        "empty.si": b"",
        "image.si": image.read_bytes(),
    }
    for name, content in cases.items():
        f = tmp_path / name
        f.write_bytes(content)
        assert main(["decode", str(f), "--bundle", bundle, "--weights", weights]) == 2, name
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {f}: "), captured.err
        assert captured.out == ""


def test_cli_info(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle.root)]) == 0
    out = capsys.readouterr().out
    assert f"bundle {tiny_bundle.bundle_id}: cifar_resnet20 split layer1, rate model hyperprior" in out
    for r in tiny_bundle.rungs:
        assert f"{r.bpp:.4f}" in out


def test_cli_eval_matches_the_measurements_of_train(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys):
    """``splitinfer eval`` on the held-out images of the training folder measures what ``train`` recorded."""
    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(tiny_bundle.root), "--data", str(tiny_images), "--weights", str(tiny_weights),
            "--out", str(out)]
    assert main(argv) == 0
    assert f"bundle {tiny_bundle.bundle_id}" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    (res,) = report["ladders"]
    assert report["baselines"] == []
    assert (out / "results.md").is_file() and (out / "rd.png").is_file()
    assert res["bundle_id"] == tiny_bundle.bundle_id
    for row, rung in zip(res["rungs"], tiny_bundle.rungs):
        assert row["n_images"] == rung.metrics["n_images"]
        assert row["bpp"] == pytest.approx(rung.bpp)  # the same bytes, whatever the batch size
    assert [m["kind"] for m in report["summary"]["methods"]] == ["ladder"]  # added by issue 3
    assert "### Summary" in (out / "results.md").read_text()


def test_cli_eval_with_every_codec(tiny_bundle, tiny_weights, tiny_images, tmp_path, capsys, monkeypatch):
    """``--codecs jpeg,webp,avif,hevc``: one baseline curve per codec (two qualities each to stay quick) and a
    summary row and BD-rate entry for each, with reasons where the unlabelled tiny images give no top-1."""
    from shared import baselines

    for name, (fmt, sweep) in list(baselines.CODECS.items()):
        monkeypatch.setitem(baselines.CODECS, name, (fmt, (sweep[0], sweep[-1])))
    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(tiny_bundle.root), "--data", str(tiny_images), "--weights", str(tiny_weights),
            "--out", str(out), "--codecs", "jpeg,webp,avif,hevc", "--limit", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    codecs = ["jpeg", "webp", "avif", "hevc"]
    assert sorted({p["method"] for p in report["baselines"]}) == sorted(codecs)
    for c in codecs:
        pts = [p for p in report["baselines"] if p["method"] == c]
        assert len(pts) == 2 and 0 < pts[0]["bpp"] < pts[1]["bpp"] and pts[0]["n_images"] == 4
        assert f"BD-rate vs {c.upper()}" in printed
    summary = report["summary"]
    assert [m["method"] for m in summary["methods"]][1:] == [c.upper() for c in codecs]
    assert [r["codec"] for r in summary["bd_rate"]] == codecs
    assert all(r["bd_rate"] is None and r["reason"] for r in summary["bd_rate"])


def test_cli_eval_reuses_codec_points_of_the_same_images_only(tiny_bundle, tiny_weights, tiny_images, tmp_path,
                                                              capsys, monkeypatch):
    """``--baselines-from``: the codec points of an earlier results.json on the same images come back unchanged;
    a results.json of other images (another count) is refused with a message."""
    from shared import baselines

    monkeypatch.setitem(baselines.CODECS, "jpeg", (baselines.CODECS["jpeg"][0], (10, 90)))
    base = ["eval", "--bundle", str(tiny_bundle.root), "--data", str(tiny_images), "--weights", str(tiny_weights)]
    assert main([*base, "--out", str(tmp_path / "a"), "--codecs", "jpeg", "--limit", "4"]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())["baselines"]
    assert main([*base, "--out", str(tmp_path / "b"), "--baselines-from", str(tmp_path / "a" / "results.json"),
                 "--limit", "4"]) == 0
    assert "codec points reused" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "results.json").read_text())["baselines"] == first
    assert main([*base, "--baselines-from", str(tmp_path / "a" / "results.json"), "--limit", "3"]) == 2
    assert "other images" in capsys.readouterr().err
