"""DeepLabv3 on EfficientNet-Lite0: the segmentation teacher that ``splitinfer train-teacher`` fine-tunes.

The backbone is the ``efficientnet-lite-pytorch`` EfficientNet-Lite0 (the same module tree as the
classification model, so its ImageNet weights load by name), without its 1x1 head and classifier. As in
DeepLabv3, the last stage is dilated instead of strided (output stride 16), and an ASPP head follows; the
atrous branches are depthwise-separable to keep the head light (~0.3 M parameters). There is no decoder
skip from an early block: a skip would cross every split point deeper than its source (the splitter refuses
such cuts), so the backbone's end could not be a split point. Logits are upsampled bilinearly to the input.

Padding is TensorFlow's "same", computed statically for the spec's input size (as the package does for
224x224): at 360x480 every stride-s feature is ceil(360/s) x ceil(480/s), the shape the bitstream assumes.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPPLite", "EfficientNetLiteSeg", "imagenet_backbone_keys"]

# modules of the classification network that segmentation does not use (dropped from the state dict)
_CLASSIFIER_PARTS = ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc")


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPLite(nn.Module):
    """DeepLabv3's atrous spatial pyramid pooling with depthwise-separable atrous branches.

    Branches: a 1x1 convolution, one depthwise 3x3 (dilation r) + pointwise convolution per rate, and image
    pooling; concatenated, projected to ``out_channels``. The pooling branch has no BatchNorm, so a batch of
    one trains too.
    """

    def __init__(self, in_channels: int, out_channels: int = 128, rates: Sequence[int] = (4, 8, 12),
                 dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, out_channels)])
        for r in rates:
            self.branches.append(nn.Sequential(_conv_bn_relu(in_channels, in_channels, 3, r, groups=in_channels),
                                               _conv_bn_relu(in_channels, out_channels)))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(out_channels * (len(rates) + 2), out_channels), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


def _dilate(backbone: nn.Module, output_stride: int) -> None:
    """Replace the strides that would exceed ``output_stride`` by dilation (DeepLab), in place.

    Only the depthwise convolutions are strided in EfficientNet's blocks; each keeps TF "same" padding,
    which for stride 1 is symmetric: dilation x (k - 1) / 2 on each side.
    """
    stride, dilation = 2, 1  # after the stem
    for block in backbone._blocks:
        conv = block._depthwise_conv
        s = conv.stride[0]
        if s > 1 and stride * s > output_stride:
            dilation *= s
            s = 1
        stride *= s
        if dilation > 1:
            k = conv.kernel_size[0]
            conv.stride, conv.dilation = (1, 1), (dilation, dilation)
            conv.static_padding = nn.ZeroPad2d(dilation * (k - 1) // 2)


class EfficientNetLiteSeg(nn.Module):
    """EfficientNet-Lite0 backbone (``self.backbone``, output stride 16) + ASPP-lite + 1x1 classifier."""

    def __init__(self, num_classes: int, image_size: Tuple[int, int], output_stride: int = 16,
                 aspp_channels: int = 128):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        backbone = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_size))
        for name in _CLASSIFIER_PARTS:
            delattr(backbone, name)
        _dilate(backbone, output_stride)
        self.backbone = backbone
        channels = backbone._blocks[-1]._bn2.num_features
        self.aspp = ASPPLite(channels, aspp_channels)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        y = b._swish(b._bn0(b._conv_stem(x)))
        n = len(b._blocks)
        for i, block in enumerate(b._blocks):
            # stochastic depth as in EfficientNet.extract_features (active in training mode only)
            y = block(y, drop_connect_rate=b._global_params.drop_connect_rate * i / n)
        y = self.classifier(self.aspp(y))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def imagenet_backbone_keys(model: EfficientNetLiteSeg, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The classification network's state dict ``sd`` renamed for ``model.backbone`` (its classifier dropped)."""
    own = model.state_dict()
    out = {f"backbone.{k}": v for k, v in sd.items() if k.split(".")[0] not in _CLASSIFIER_PARTS}
    unknown = sorted(set(out) - set(own))
    missing = sorted(k for k in own if k.startswith("backbone.") and k not in out)
    if unknown or missing:
        raise RuntimeError(f"ImageNet weights do not fit the segmentation backbone: unknown {unknown[:5]}, "
                           f"missing {missing[:5]}")
    return out
