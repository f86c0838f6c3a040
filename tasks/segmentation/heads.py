"""``fpn_lite``: a light FPN decoder over several nodes of the space graph (segmentation head).

Select it in a space or experiment with ``head: {type: fpn_lite, inputs: [stage2, stage3,
stage4], width: 64}``; the output has the resolution of the finest input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from dnas.registry import HEADS


@dataclass
class FpnLiteOptions:
    """The ``fpn_lite`` head's YAML keys."""

    width: int = field(default=64, metadata={"min": 1, "max": 4096})
    smooth: bool = True  # 3x3 depthwise-separable conv after the top-down merge
    upsample: str = field(default="bilinear", metadata={"choices": ["bilinear", "nearest"]})


def _conv_bn_relu(cin: int, cout: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    """Conv (same padding, no bias) + BN + ReLU, as a list for an ``nn.Sequential``."""
    return [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]  # fmt: skip


@HEADS.register("fpn_lite")
class FpnLiteHead(nn.Module):
    """1x1 lateral conv + BN per input to ``width`` channels; top-down from the coarsest input,
    each level upsampled to the next finer one and added; then (``smooth``) a 3x3 depthwise +
    1x1 conv, each with BN + ReLU (``smooth: false``: a ReLU only); then a 1x1 classifier.

    Inputs may come in any order and share a resolution (e.g. stride-16 stage3 and stage4):
    they are merged from the smallest to the largest spatial size.
    """

    Options = FpnLiteOptions

    def __init__(self, in_channels: list[int], num_outputs: int, options: FpnLiteOptions) -> None:
        super().__init__()
        width = options.width
        self.mode = options.upsample
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width))
            for cin in in_channels
        )
        smooth = [*_conv_bn_relu(width, width, 3, width), *_conv_bn_relu(width, width, 1)]
        self.smooth = nn.Sequential(*smooth) if options.smooth else nn.ReLU()
        self.classifier = nn.Conv2d(width, num_outputs, 1)  # registered last: sizes the export

    def forward(self, features: list[Tensor]) -> Tensor:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        levels.sort(key=lambda t: t.shape[-2] * t.shape[-1])  # coarsest first (stable)
        out = levels[0]
        for finer in levels[1:]:
            if out.shape[-2:] != finer.shape[-2:]:
                align = False if self.mode == "bilinear" else None
                out = F.interpolate(out, size=finer.shape[-2:], mode=self.mode,
                                    align_corners=align)  # fmt: skip
            out = out + finer
        return self.classifier(self.smooth(out))
