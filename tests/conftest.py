"""Shared fixtures: a tiny but real bundle trained once per session, and the team data kit.

The tiny bundle is ``cifar_resnet20`` cut after ``layer1`` (16x32x32 features of 32x32 inputs) with a
*random* backbone whose weights are saved to a safetensors file first: training, the edge and the cloud all
load that file, so head and tail are the same network everywhere (random init alone would differ per process).
It is trained through the real command line (``splitinfer train``) on a folder of synthetic PNGs, with the
fixed held-out rule deciding which of them train and which measure the rungs.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY_MODEL = "cifar_resnet20"
TINY_SPLIT = "layer1"
TINY_LAMBDAS = (4.0, 2.0, 1.0)
N_IMAGES = 24
# Enough steps that the hyperprior's tables describe the latents (the rate test compares estimated and
# real bits); the whole run, evaluation included, takes a few seconds on one core.
TINY_STEPS, TINY_STEPS_PER_RUNG = 120, 60


def pytest_configure(config):
    # These tests run many small tensor ops; on a busy 2-core machine a second intra-op thread mostly waits
    # (measured here under load: the tiny bundle trains in 8 s with one thread, in 39 s with two).
    # OMP_NUM_THREADS, when set, wins.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    # edge packages exported on demand (EdgeClient / `splitinfer edge` given a bundle) go to a fresh cache, not
    # the user's ~/.cache: every run exports (and so tests) them anew
    if "SPLITINFER_CACHE" not in os.environ:
        import tempfile

        os.environ["SPLITINFER_CACHE"] = tempfile.mkdtemp(prefix="splitinfer-test-cache-")


def _write_images(folder: Path, n: int = N_IMAGES, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth-ish random images (a coarse grid upsampled plus noise): less like white noise, still tiny
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((32, 32), Image.BILINEAR), dtype=np.int16)
        img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """24 deterministic 32x32 PNGs; about half are held out by the file-name CRC rule."""
    from shared.data import is_heldout

    folder = _write_images(tmp_path_factory.mktemp("tiny_images"))
    held = [p for p in folder.iterdir() if is_heldout(p)]
    assert 4 <= len(held) <= N_IMAGES - 4, "the synthetic folder must have both training and held-out images"
    assert all(zlib.crc32(p.name.encode()) % 2 == 1 for p in held)
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A seeded random cifar_resnet20 state dict in a safetensors file (the backbone every side loads)."""
    from safetensors.torch import save_file

    from shared.models import get_backbone

    torch.manual_seed(1234)
    model = get_backbone(TINY_MODEL).build("random")
    path = tmp_path_factory.mktemp("tiny_weights") / "cifar_resnet20_random.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_train_argv(tiny_images, tiny_weights) -> Callable[..., List[str]]:
    """``argv(out, *extra)``: the tiny ``splitinfer train`` command line (without the leading "train")."""

    def argv(out: Path, *extra: str, steps: int = TINY_STEPS, steps_per_rung: int = TINY_STEPS_PER_RUNG) -> List[str]:
        return [
            "--model", TINY_MODEL, "--split", TINY_SPLIT, "--weights", str(tiny_weights),
            "--data", str(tiny_images), "--eval-data", str(tiny_images),
            "--views", "2", "--steps", str(steps), "--steps-per-rung", str(steps_per_rung),
            "--batch-size", "4", "--lambdas", ",".join(f"{v:g}" for v in TINY_LAMBDAS),
            "--side-refit-steps", "50", "--device", "cpu", "--out", str(out), *extra,
        ]

    return argv


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_train_argv):
    """A real 3-rung hyperprior bundle, trained and measured by ``splitinfer train`` (a few seconds)."""
    from shared.bundle import load_bundle
    from splitinfer.cli import main

    out = tmp_path_factory.mktemp("tiny_bundle")
    assert main(["train", *tiny_train_argv(out)]) == 0
    bundle = load_bundle(out)
    assert len(bundle.rungs) == len(TINY_LAMBDAS)
    return bundle


VR_LEVELS = (0, 16)


@pytest.fixture(scope="session")
def vr_bundle(tmp_path_factory, tiny_train_argv):
    """A real variable-rate bundle (one network, quality levels 0..16) trained and measured by
    ``splitinfer train --levels`` (a few seconds)."""
    from shared.bundle import load_bundle
    from splitinfer.cli import main

    out = tmp_path_factory.mktemp("tiny_vr_bundle")
    assert main(["train", *tiny_train_argv(out, "--levels", f"{VR_LEVELS[0]}:{VR_LEVELS[1]}", "--lambdas", "0.5,16")]) == 0
    return load_bundle(out)


@pytest.fixture(scope="session")
def tiny_model(tiny_weights):
    """The frozen split backbone of the tiny bundle (shared: tests must not modify it)."""
    from shared.models import load_split_model

    return load_split_model(TINY_MODEL, TINY_SPLIT, weights=str(tiny_weights))


@pytest.fixture(scope="session")
def heldout_items(tiny_images):
    from shared.data import scan_images, split_items

    return split_items(scan_images(tiny_images), "heldout")


@pytest.fixture(scope="session")
def heldout_batch(tiny_model, heldout_items) -> torch.Tensor:
    """The held-out synthetic images, preprocessed as the edge does (N, 3, 32, 32)."""
    from shared.data import eval_transform, load_image

    t = eval_transform(tiny_model.spec.preprocess)
    return torch.stack([t(load_image(p)) for p, _ in heldout_items])


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the team data kit), or skip: a fresh clone does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (team data kit), absent here ({SHARED_DATA})")
    return SHARED_DATA


# ------------------------------------------------------------------------------------------ segmentation
SEG_MODEL = "efficientnet_lite0_seg"
SEG_SPLIT = "block15"  # the deep split: its tail (ASPP head) is cheap to train through at 360x480
SEG_LAMBDAS = (4.0, 1.0)
N_SEG_IMAGES = 8


def write_seg_images(folder: Path, n: int = N_SEG_IMAGES, seed: int = 0, hw=(360, 480)) -> Path:
    """``folder/`` and ``folder + "annot"/`` in CamVid's layout: blocky class maps (11 classes and void = 11)
    and images coloured by class (CamVid's palette) plus noise, so that masks and images agree."""
    from PIL import Image

    from shared.labels import palette

    colours = np.array(palette(SEG_MODEL, 11) + [(0, 0, 0)], dtype=np.int16)
    masks = folder.parent / (folder.name + "annot")
    folder.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 12, (6, 8), dtype=np.uint8)
        mask = np.asarray(Image.fromarray(coarse).resize(hw[::-1], Image.NEAREST))
        img = np.clip(colours[mask] + rng.integers(-25, 26, (*hw, 3)), 0, 255).astype(np.uint8)
        name = f"seg_{3 * i:03d}.png"  # (seg_000..seg_007 would all fall on one side of the held-out rule)
        Image.fromarray(img).save(folder / name)
        Image.fromarray(mask).save(masks / name)
    return folder


@pytest.fixture(scope="session")
def seg_images(tmp_path_factory) -> Path:
    """8 synthetic 480x360 frames with masks (``frames/`` + ``framesannot/``), both parts of the held-out rule."""
    from shared.data import is_heldout

    folder = write_seg_images(tmp_path_factory.mktemp("seg") / "frames")
    held = [p for p in folder.iterdir() if is_heldout(p)]
    assert 2 <= len(held) <= N_SEG_IMAGES - 2
    return folder


@pytest.fixture(scope="session")
def seg_weights(tmp_path_factory, seg_images) -> Path:
    """A segmentation teacher made by ``splitinfer train-teacher`` (ImageNet backbone, 16 steps on small crops of
    the synthetic frames, a few seconds): train, edge and cloud load this file. A random network would answer
    one class everywhere; this one already tells a few apart. Its report is ``<file>.json``."""
    from splitinfer.cli import main

    path = tmp_path_factory.mktemp("seg_weights") / "teacher.safetensors"
    argv = ["train-teacher", "--data", str(seg_images), "--test-data", str(seg_images), "--test-limit", "2",
            "--epochs", "8", "--batch-size", "4", "--crop", "96x128", "--scale", "0.5,1.0", "--lr", "5e-3",
            "--device", "cpu", "--out", str(path)]
    assert main(argv) == 0
    return path


@pytest.fixture(scope="session")
def seg_bundle(tmp_path_factory, seg_images, seg_weights):
    """A 2-rung segmentation bundle at the deep split, trained label-free and measured (mIoU against the
    synthetic masks) by ``splitinfer train``."""
    from shared.bundle import load_bundle
    from splitinfer.cli import main

    out = tmp_path_factory.mktemp("seg_bundle")
    argv = ["train", "--model", SEG_MODEL, "--split", SEG_SPLIT, "--weights", str(seg_weights),
            "--data", str(seg_images), "--eval-data", str(seg_images), "--views", "1", "--steps", "12",
            "--steps-per-rung", "6", "--batch-size", "2", "--lambdas", ",".join(f"{v:g}" for v in SEG_LAMBDAS),
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    return load_bundle(out)
