"""The EfficientPose head: slim transposed convolutions + spatial information correction (SIC).

It lives in the core because it is task-agnostic: any dense task (heatmaps, segmentation
logits) uses it by ``type: slim_deconv`` with its own number of outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from dnas.registry import HEADS
from dnas.space.ops import MAX_OP_PARAMS, MAX_WIDTH

MAX_UPSAMPLINGS = 6  # x64: from a stride-64 backbone back to the input resolution


@dataclass
class SlimDeconvOptions:
    deconv_widths: list[int] = field(
        default_factory=lambda: [64, 32], metadata={"min": 1, "max": MAX_WIDTH}
    )
    deconv_kernel: int = field(default=4, metadata={"choices": [2, 3, 4]})
    sic: bool = True
    upsample: str = field(default="deconv", metadata={"choices": ["deconv", "separable"]})


@HEADS.register("slim_deconv")
class SlimDeconvHead(nn.Module):
    """[ConvTranspose(k, s2) + BN + ReLU] per width, then SIC (3x3 depthwise + ReLU), then 1x1.

    SIC removes the checkerboard artefacts of transposed convolutions at almost no cost
    (paper Sec. 3.3); the final 1x1 conv (with bias) maps to one heatmap per output.
    ``upsample: separable`` makes each step MobileNetV1-style (paper Table 8): a depthwise
    transposed conv + BN + ReLU, then a 1x1 conv to the width + BN + ReLU.
    """

    Options = SlimDeconvOptions

    def __init__(
        self, in_channels: list[int], num_outputs: int, options: SlimDeconvOptions
    ) -> None:
        super().__init__()
        if len(in_channels) != 1:
            raise ValueError("slim_deconv reads exactly one input node")
        _check_size(in_channels[0], num_outputs, options)
        k = options.deconv_kernel
        padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[k]
        layers: list[nn.Module] = []
        cin = in_channels[0]
        for width in options.deconv_widths:
            if options.upsample == "separable":
                layers += [
                    nn.ConvTranspose2d(cin, cin, k, 2, padding, output_padding, groups=cin,
                                       bias=False),
                    nn.BatchNorm2d(cin),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cin, width, 1, bias=False),
                ]  # fmt: skip
            else:
                layers.append(
                    nn.ConvTranspose2d(cin, width, k, 2, padding, output_padding, bias=False)
                )
            layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        if options.sic:
            layers += [nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(cin, num_outputs, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.layers(features[0])


def _check_size(cin: int, num_outputs: int, options: SlimDeconvOptions) -> None:
    """Reject absurd heads (ValueError, made a one-line config error) before allocating."""
    if len(options.deconv_widths) > MAX_UPSAMPLINGS:
        raise ValueError(f"deconv_widths: at most {MAX_UPSAMPLINGS} upsampling steps (x2 each), "
                         f"got {len(options.deconv_widths)}")  # fmt: skip
    k = options.deconv_kernel
    for i, width in enumerate([*options.deconv_widths, num_outputs]):
        params = cin * width * (k * k if i < len(options.deconv_widths) else 1)
        if params > MAX_OP_PARAMS:
            raise ValueError(f"layer {i} maps {cin} -> {width} channels: {params:,} parameters "
                             f"(at most {MAX_OP_PARAMS:,} per layer)")  # fmt: skip
        cin = width
