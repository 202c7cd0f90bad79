"""Segmentation (issue 6): CamVid-style data, the ``efficientnet_lite0_seg`` teacher and its splits, the per-pixel
losses, ladders trained and measured with mIoU, the bitstream, ``splitinfer eval``'s tables, plot and pictures,
and a served segmentation request (mask PNG and pixels per class over gRPC, REST and ``splitinfer edge``).

The shared fixtures (``conftest.py``): synthetic 480x360 frames with masks, a teacher made by
``splitinfer train-teacher`` in a few seconds, and a 2-rung ladder at the deep split made by ``splitinfer train``.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _service import running_server
from conftest import SEG_MODEL, SEG_SPLIT, write_seg_images
from shared.data import (VOID, SegmentationDataset, mask_folder, scan_images, seg_eval_transform, seg_train_transform,
                         split_items)
from shared.evaluation import Scores
from shared.labels import CAMVID_CLASSES, palette
from shared.models import Preprocess
from shared.training.objectives import Objective, segmentation_ce
from splitinfer.cli import main

INPUT_HW = (360, 480)


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ------------------------------------------------------------------------------------------ data
def test_scan_pairs_images_with_masks_in_segnet_layout(tmp_path):
    write_seg_images(tmp_path / "train", n=3, hw=(12, 16))
    items = scan_images(tmp_path / "train")
    assert [m for _, m in items] == [tmp_path / "trainannot" / p.name for p, _ in items]
    assert all(m is None for _, m in scan_images(tmp_path / "train", labels=False))
    assert mask_folder(tmp_path / "train") == tmp_path / "trainannot" and mask_folder(tmp_path / "trainannot") is None
    (tmp_path / "trainannot" / items[1][0].name).unlink()
    with pytest.raises(ValueError, match="1 images .* have no mask"):
        scan_images(tmp_path / "train")


def _coloured(mask: np.ndarray) -> Image.Image:
    colours = np.array(palette(SEG_MODEL, 11) + [(0, 0, 0)], dtype=np.uint8)
    return Image.fromarray(colours[mask])


def _colour_of(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Normalised input (3, H, W) -> RGB 0..255 (H, W, 3)."""
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    return ((x * std + mean) * 255).permute(1, 2, 0)


def test_train_transform_moves_image_and_mask_together():
    pre = Preprocess(input_size=(24, 32), resize=None)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 12, (24, 32)).astype(np.uint8)
    img, m_img = _coloured(mask), Image.fromarray(mask)
    colours = torch.tensor(palette(SEG_MODEL, 11) + [(0, 0, 0)], dtype=torch.float32)
    torch.manual_seed(0)
    for _ in range(8):  # no rescaling: crops and flips must keep every pixel's colour with its class
        x, m = seg_train_transform(pre, scale=(1.0, 1.0), crop=(20, 28))(img, m_img)
        assert x.shape == (3, 20, 28) and m.shape == (20, 28) and m.dtype == torch.uint8
        assert torch.allclose(_colour_of(x, pre), colours[m.long()], atol=1e-3)
    # shrunk below the crop: padded with the mean colour (zeros once normalised) and VOID
    x, m = seg_train_transform(pre, scale=(0.5, 0.5))(img, m_img)
    assert x.shape == (3, 24, 32) and (m == VOID).sum() == 24 * 32 - 12 * 16
    assert (x[:, m == VOID] == 0).all()
    # evaluation: another size is resized to the input size, the mask by nearest neighbour (no new values)
    big = np.kron(mask, np.ones((2, 2), dtype=np.uint8))
    x, m = seg_eval_transform(pre)(_coloured(big), Image.fromarray(big))
    assert x.shape == (3, 24, 32) and set(m.unique().tolist()) <= set(np.unique(mask).tolist())
    assert seg_eval_transform(pre)(img, None)[1].eq(VOID).all()  # unlabelled


# ------------------------------------------------------------------------------------------ model
def test_split_points_shapes_and_strides():
    from shared.training.recipe import feature_stride
    from shared.models import get_backbone, split_info

    spec = get_backbone(SEG_MODEL)
    assert spec.task == "segmentation" and spec.num_classes == 11 and spec.preprocess.input_size == INPUT_HW
    shallow, deep = split_info(SEG_MODEL, "block1"), split_info(SEG_MODEL, "block15")
    assert shallow["feature_shape"] == (24, 90, 120) and shallow["edge_flop_share"] <= 0.15
    assert deep["feature_shape"] == (320, 23, 30) and deep["depth"] == "deep"
    # TF "same" padding at 360x480: ceil(360 / 16) = 23 rows, the shape the bitstream's checks assume
    assert feature_stride(INPUT_HW, (23, 30)) == 16 and feature_stride(INPUT_HW, (90, 120)) == 4
    assert feature_stride((224, 224), (56, 56)) == 4 and feature_stride((520, 520), (65, 65)) == 8


def test_missing_teacher_weights_name_the_command(monkeypatch, tmp_path):
    from shared.models import get_backbone
    from shared.models.families import SEG_TEACHER_ENV

    monkeypatch.setenv(SEG_TEACHER_ENV, str(tmp_path / "absent.safetensors"))
    with pytest.raises(RuntimeError, match="splitinfer train-teacher"):
        get_backbone(SEG_MODEL).build(None)


def test_train_teacher_starts_from_the_imagenet_backbone(seg_images, tmp_path):
    """``--epochs 0``: the written network is EfficientNet-Lite0's ImageNet backbone (every tensor, by name) and
    a fresh head."""
    from safetensors.torch import load_file

    from shared.models.families import efficientnet_lite0_imagenet

    out = tmp_path / "t.safetensors"
    assert main(["train-teacher", "--data", str(seg_images), "--epochs", "0", "--out", str(out)]) == 0
    sd, (imagenet, _) = load_file(str(out)), efficientnet_lite0_imagenet()
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, imagenet[k]) for k, v in backbone.items())
    assert set(imagenet) - set(backbone) == {k for k in imagenet if k.split(".")[0] in ("_conv_head", "_bn1", "_fc")}
    assert {k.split(".")[0] for k in sd} == {"backbone", "aspp", "classifier"}


def test_train_teacher_report_and_weights(seg_weights):
    from safetensors import safe_open

    from shared.models import load_split_model

    report = json.loads(seg_weights.with_suffix(".json").read_text())
    assert report["epochs_completed"] == 8 and report["steps"] == 16 and report["train_images_per_second"] > 0
    test = report["test"]
    assert test["n_images"] == 2 and 0 <= test["miou"] <= 1 and 0 <= test["pixel_acc"] <= 1
    assert len(test["class_iou"]) == 11
    assert not seg_weights.with_name(seg_weights.name + ".ckpt").exists()  # a finished run leaves no checkpoint
    with safe_open(str(seg_weights), "pt") as f:
        assert f.metadata()["model"] == SEG_MODEL
    model = load_split_model(SEG_MODEL, "block1", weights=str(seg_weights))
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_train_teacher_resumes_an_interrupted_run(seg_images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.safetensors"
    argv = ["train-teacher", "--data", str(seg_images), "--epochs", "2", "--batch-size", "4", "--crop", "64x96",
            "--out", str(out)]
    save = torch.save

    def save_then_stop(obj, path):
        save(obj, path)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(torch, "save", save_then_stop)
    assert main(argv) == 130
    assert out.with_name(out.name + ".ckpt").is_file() and not out.exists()
    monkeypatch.setattr(torch, "save", save)
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["epochs_completed"] == 2 and report["steps"] == 4


# ------------------------------------------------------------------------------------------ losses and scores
def test_segmentation_ce_ignores_void_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 11, 4, 6, generator=g, requires_grad=True)
    masks = torch.randint(0, 11, (2, 4, 6), generator=g, dtype=torch.uint8)
    masks[0, 0], masks[1, :, :2] = 11, VOID
    valid = masks < 11
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid], masks[valid].long())
    loss = segmentation_ce(logits, masks)
    assert torch.allclose(loss, expected)
    changed = torch.where(valid[:, None], logits.detach(), logits.detach() + 100)  # only void pixels change
    assert torch.allclose(segmentation_ce(changed, masks), loss)
    only_void = torch.full_like(masks, 11)
    empty = segmentation_ce(logits, only_void)
    assert empty.item() == 0.0
    empty.backward()  # a batch of unlabelled pixels is a zero loss with a gradient, not NaN
    assert torch.isfinite(logits.grad).all()


def test_label_free_loss_is_a_per_pixel_kl_on_pooled_logits():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 11, 3, 4, generator=g)
    feat = torch.randn(2, 8, 3, 4, generator=g)
    var = torch.ones(1, 8, 1, 1)
    obj = Objective("distill", feature_weight=0.0, task="segmentation")
    # a student whose 2x2 average pools are the teacher's logits: the cached (pooled) teacher is matched exactly
    student = teacher.repeat_interleave(2, 2).repeat_interleave(2, 3).requires_grad_(True)
    assert obj.distortion(student, teacher, None, feat, feat, var)["kl"].item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 11, 6, 8, generator=g, requires_grad=True)
    kl = obj.distortion(other, teacher, None, feat, feat, var)["kl"]
    assert kl.item() > 0
    kl.backward()
    assert other.grad.abs().sum() > 0
    masks = torch.randint(0, 12, (2, 6, 8), generator=g, dtype=torch.uint8)
    sup = Objective("supervised", feature_weight=0.0, task="segmentation").distortion(other, teacher, masks, feat, feat, var)
    assert torch.allclose(sup["ce"], segmentation_ce(other, masks))
    with pytest.raises(ValueError, match="mask"):
        Objective("supervised", task="segmentation").distortion(other, teacher, torch.full((2,), -1), feat, feat, var)


def test_scores_miou_pixel_accuracy_and_agreement():
    labels = torch.tensor([[[0, 0, 1, 3], [2, 2, 1, 1]]], dtype=torch.uint8)  # 3 = void
    pred = torch.tensor([[[0, 1, 1, 0], [2, 0, 1, 1]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    s = Scores("segmentation", 3)
    s.add(logits, labels, reference=logits)
    r = s.result()
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    assert r["class_iou"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert r["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert r["agreement"] == 1.0  # over all 8 pixels, void included
    unlabelled = Scores("segmentation", 3)
    unlabelled.add(logits, torch.full_like(labels, VOID))
    assert "miou" not in unlabelled.result()


# ------------------------------------------------------------------------------------------ cache and ladder
def test_cache_holds_pooled_teacher_logits_and_masks_and_trains_supervised(seg_weights, seg_images, tmp_path):
    from shared.codec import BottleneckConfig
    from shared.models import load_split_model
    from shared.training.cache import build_cache
    from shared.training.ladder import LadderConfig, train_ladder

    model = load_split_model(SEG_MODEL, SEG_SPLIT, weights=str(seg_weights))
    items = split_items(scan_images(seg_images), "train")[:2]
    cache = build_cache(model, items, views=1, batch_size=2)
    assert cache.features.shape == (2, 320, 23, 30) and cache.teacher.shape == (2, 11, 45, 60)
    assert cache.labels.shape == (2, *INPUT_HW) and cache.labels.dtype == torch.uint8
    free = build_cache(model, [(p, None) for p, _ in items], views=1, batch_size=2)
    assert free.labels.tolist() == [-1, -1]  # label-free: no masks kept

    before = {k: v.clone() for k, v in model.state_dict().items()}
    bcfg = BottleneckConfig(in_channels=320, latent=8, hidden=16, dec_hidden=32, stride=1, hyper=8, hyper_stride=2)
    cfg = LadderConfig(lambdas=[1.0], steps=2, steps_per_rung=1, batch_size=2, mode="supervised", feature_warmup=0,
                       log_every=1)
    (net,) = train_ladder(model, cache, bcfg, cfg, tmp_path, progress=False)
    rows = (tmp_path / "train_log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[7])) for r in rows)  # the per-pixel CE
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_seg_bundle_measures_miou_and_its_bitstream_round_trips(seg_bundle, seg_weights, seg_images):
    from cloud_server import CloudDecoder
    from edge_client import EdgeEncoder

    m = seg_bundle.manifest
    assert m["task"] == "segmentation" and m["feature_shape"] == [320, 23, 30] and m["feature_stride"] == 16
    assert m["evaluation"]["reference"]["n_images"] == 4
    for r in seg_bundle.rungs:
        assert {"miou", "pixel_acc", "agreement", "class_iou"} <= set(r.metrics) and "top1" not in r.metrics
    image = split_items(scan_images(seg_images), "heldout")[0][0]
    enc, dec = EdgeEncoder(seg_bundle, weights=str(seg_weights)), CloudDecoder(seg_bundle, weights=str(seg_weights))
    for rung in range(len(seg_bundle.rungs)):
        frame = enc.encode(image, rung=rung)
        assert frame.input_hw == INPUT_HW and frame.bpp == pytest.approx(8 * frame.n_bytes / (360 * 480))
        pred = dec.decode(frame.data, topk=3)
        out, _, _ = dec.decode_output(frame.data)
        mask = _png_array(pred.mask_png)
        assert mask.shape == INPUT_HW and np.array_equal(mask, out[0].argmax(0).numpy())
        assert pred.class_pixels == np.bincount(mask.ravel(), minlength=11).tolist()
        assert [(i, s) for i, _, s in pred.topk] == [(i, pytest.approx(pred.class_pixels[i] / mask.size))
                                                     for i, _, _ in pred.topk]
        assert pred.topk[0][1] == CAMVID_CLASSES[pred.topk[0][0]][0]


def test_cli_eval_segmentation_tables_plot_and_pictures(seg_bundle, seg_weights, seg_images, tmp_path, monkeypatch):
    from shared import baselines

    monkeypatch.setitem(baselines.CODECS, "webp", ("WEBP", (5, 90)))
    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(seg_bundle.root), "--data", str(seg_images), "--weights", str(seg_weights),
            "--out", str(out), "--codecs", "webp", "--pictures", "1", "--limit", "2", "--batch-size", "2"]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    (lad,) = report["ladders"]
    assert lad["metric"] == "miou" and report["summary"]["metric"] == "miou"
    for p in lad["rungs"] + report["baselines"]:
        assert 0 <= p["miou"] <= 1 and 0 <= p["pixel_acc"] <= 1 and "top1" not in p and p["n_images"] == 2
    pts = report["baselines"]
    assert [p["quality"] for p in pts] == [5, 90] and pts[0]["bpp"] < pts[1]["bpp"]
    md = (out / "results.md").read_text()
    assert "| mIoU | pixel acc. |" in md and "### IoU per class (%)" in md and "Pedestrian" in md
    for name in ("rd.png", "masks.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300
    assert main(["eval", "--bundle", str(seg_bundle.root), "--data", str(seg_images), "--pictures", "1"]) == 2



def test_eval_pictures_of_a_variable_rate_segmentation_bundle(seg_weights, seg_images, tmp_path, monkeypatch):
    """``eval --pictures`` draws a variable-rate bundle at its finest, middle and coarsest measured levels (it
    stopped with "give a quality level" after measuring, exit 2, before the rate scheme chose the points)."""
    from shared import baselines
    from shared.bundle import load_bundle

    monkeypatch.setitem(baselines.CODECS, "webp", ("WEBP", (5, 90)))
    vr = tmp_path / "vr"
    assert main(["train", "--model", SEG_MODEL, "--split", SEG_SPLIT, "--weights", str(seg_weights), "--data",
                 str(seg_images), "--views", "1", "--steps", "4", "--steps-per-rung", "2", "--batch-size", "2",
                 "--lambdas", "4,1", "--levels=-4:4", "--side-refit-steps", "0", "--no-eval", "--allow-weak",
                 "--device", "cpu", "--out", str(vr)]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--bundle", str(vr), "--data", str(seg_images), "--weights", str(seg_weights), "--out",
                 str(out), "--codecs", "webp", "--pictures", "1", "--limit", "1", "--batch-size", "1"]) == 0
    with Image.open(out / "masks.png") as im:
        assert im.size[0] > 300
    pts = sorted(load_bundle(vr).scheme.measure_points(), key=lambda p: (p[0], -(p[1] or 0)))
    assert pts[0] == (0, 4) and pts[-1] == (0, -4)  # finest first, as the pictures take them

def test_segmentation_examples_codec_at_equal_rate(seg_bundle, seg_weights, seg_images):
    from shared.evaluation import segmentation_examples
    from shared.models import load_split_model

    model = load_split_model(SEG_MODEL, SEG_SPLIT, weights=str(seg_weights))
    items = split_items(scan_images(seg_images), "heldout")[:1]
    (ex,) = segmentation_examples(model, seg_bundle, items, points=[(0, None), (1, None)], codec="webp")
    assert ex["truth"].shape == ex["unsplit"].shape == ex["rungs"][0]["mask"].shape == INPUT_HW
    budget = ex["rungs"][-1]["bpp"]
    assert ex["codec"]["bpp"] <= budget or ex["codec"]["quality"] == 1  # the best quality that fits the rung's bytes


# ------------------------------------------------------------------------------------------ serving
def test_served_segmentation_request(seg_bundle, seg_weights, seg_images, tmp_path):
    """gRPC and REST answer a segmentation bitstream with the mask and the pixels per class the in-process cloud
    decoder computes; ``splitinfer edge --masks`` writes them in the class palette."""
    from cloud_server import CloudDecoder
    from edge_client import EdgeClient, EdgeEncoder

    image = split_items(scan_images(seg_images), "heldout")[0][0]
    enc = EdgeEncoder(seg_bundle, weights=str(seg_weights))
    expected = CloudDecoder(seg_bundle, weights=str(seg_weights)).decode(enc.encode(image, rung=0).data)
    with running_server(seg_bundle, seg_weights) as server:
        for rest in (False, True):
            port = server.http_port if rest else server.grpc_port
            with EdgeClient(f"127.0.0.1:{port}", encoder=enc, rest=rest) as client:
                r = client.infer(image, rung=0)
                assert client.model == f"{SEG_MODEL}-{SEG_SPLIT}"
            assert r.ok and r.rung == 0 and r.n_bytes > 0
            assert np.array_equal(_png_array(r.mask_png), _png_array(expected.mask_png))
            assert r.class_pixels == expected.class_pixels and sum(r.class_pixels) == 360 * 480
            assert [i for i, _, _ in r.topk] == [i for i, _, _ in expected.topk]

        import httpx

        meta = httpx.get(f"http://127.0.0.1:{server.http_port}/v2/models/{SEG_MODEL}-{SEG_SPLIT}").json()
        assert [o["name"] for o in meta["outputs"]][-2:] == ["mask_png", "class_pixels"]

        from shared._proto import splitinfer_pb2 as pb
        from _service import grpc_stub

        channel, stub = grpc_stub(server.grpc_port)
        (info,) = stub.ModelMetadata(pb.ModelMetadataRequest()).models
        channel.close()
        assert info.task == "segmentation" and info.num_classes == 11
        assert all(r.HasField("miou") and r.HasField("pixel_acc") and not r.HasField("top1") for r in info.rungs)

        folder = tmp_path / "camera"
        folder.mkdir()
        shutil.copy(image, folder / "frame.png")
        edge = ["edge", "--server", f"127.0.0.1:{server.grpc_port}", "--bundle", str(seg_bundle.root),
                "--weights", str(seg_weights), "--rung", "0"]
        assert main([*edge, "--masks-dir", str(tmp_path / "masks"), str(folder)]) == 0
        assert main([*edge, "--masks", str(folder)]) == 0
        assert main([*edge, "--masks", str(folder)]) == 0  # the mask beside the frame is not sent as a frame
    assert sorted(p.name for p in folder.iterdir()) == ["frame.mask.png", "frame.png"]
    for written in (tmp_path / "masks" / "frame.mask.png", folder / "frame.mask.png"):
        with Image.open(written) as im:
            assert im.mode == "P"
            assert np.array_equal(np.asarray(im), _png_array(expected.mask_png))
            rgb = np.asarray(im.convert("RGB"))
        idx = np.asarray(Image.open(written))
        assert (rgb[idx == expected.topk[0][0]] == CAMVID_CLASSES[expected.topk[0][0]][1]).all()


# ------------------------------------------------------------------------------------------ the real data set
@pytest.mark.data
def test_camvid_layout_and_palette(shared_data):
    camvid = shared_data / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"no CamVid in the data kit ({camvid})")
    meta = json.loads((camvid / "classes.json").read_text())
    assert meta["ignore_index"] == meta["num_classes"] == len(CAMVID_CLASSES)
    assert [(c["name"], tuple(c["rgb"])) for c in meta["classes"][: len(CAMVID_CLASSES)]] == CAMVID_CLASSES
    items = scan_images(camvid / "test")
    assert len(items) == 233 and all(m.parent.name == "testannot" for _, m in items)
    from shared.models import get_backbone

    x, m = SegmentationDataset(items[:1], seg_eval_transform(get_backbone(SEG_MODEL).preprocess))[0]
    assert x.shape == (3, *INPUT_HW) and m.shape == INPUT_HW and int(m.max()) <= 11
