"""Candidate operations, named by compact strings decoded by one builder (as timm does).

Grammar (``parse_op``):

- ``kKeE``  MBConv / inverted residual: 1x1 expand to in*E (omitted when E == 1), KxK depthwise
  (stride s), 1x1 project; BN after each conv, ReLU after the first two; residual add when the
  stride is 1 and in == out channels. ``k3e1`` is MobileNetV2's first (depthwise-separable) block.
- ``convK`` plain KxK convolution + BN + ReLU (the stem of MobileNetV2).
- ``skip``  identity; only valid where input and output shapes are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor, nn

_MBCONV = re.compile(r"^k(\d+)e(\d+)$")
_CONV = re.compile(r"^conv(\d+)$")
MAX_KERNEL = 15
MAX_EXPANSION = 16


@dataclass(frozen=True)
class OpSpec:
    """A decoded op string: kind is 'mbconv', 'conv' or 'skip'."""

    name: str
    kind: str
    kernel: int = 0
    expansion: int = 0


def parse_op(name: str) -> OpSpec:
    """Decode an op string; raises ValueError with the grammar when it is not one."""
    if not isinstance(name, str):
        raise ValueError(f"expected an op string, got {name!r}")
    if name == "skip":
        return OpSpec(name, "skip")
    if m := _MBCONV.match(name):
        kernel, expansion = int(m.group(1)), int(m.group(2))
        _check_kernel(name, kernel)
        if not 1 <= expansion <= MAX_EXPANSION:
            raise ValueError(f"op {name!r}: expansion must be 1..{MAX_EXPANSION}")
        return OpSpec(name, "mbconv", kernel, expansion)
    if m := _CONV.match(name):
        kernel = int(m.group(1))
        _check_kernel(name, kernel)
        return OpSpec(name, "conv", kernel)
    raise ValueError(
        f"unknown op {name!r} (expected 'kKeE' e.g. k3e6, 'convK' e.g. conv3, or 'skip')"
    )


def _check_kernel(name: str, kernel: int) -> None:
    if kernel % 2 == 0 or not 1 <= kernel <= MAX_KERNEL:
        raise ValueError(f"op {name!r}: kernel must be odd and 1..{MAX_KERNEL}")


def op_keeps_shape(spec: OpSpec) -> bool:
    """True for ops that can only map a tensor to one of the same shape (identity)."""
    return spec.kind == "skip"


def out_spatial(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a KxK conv with padding K//2 (what every op here uses)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU): the unit every op is made of."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block of MobileNetV2 with a configurable kernel and expansion."""

    def __init__(self, cin: int, cout: int, kernel: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(conv_bn(hidden, cout, 1, relu=False))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def build_op(spec: OpSpec, cin: int, cout: int, stride: int) -> nn.Module:
    """The module for an op at a layer with the given channels and stride."""
    if spec.kind == "skip":
        if cin != cout or stride != 1:
            raise ValueError(
                f"'skip' needs equal shapes, got {cin}->{cout} channels, stride {stride}"
            )
        return nn.Identity()
    if spec.kind == "mbconv":
        return MBConv(cin, cout, spec.kernel, spec.expansion, stride)
    return conv_bn(cin, cout, spec.kernel, stride)
