"""Candidate operations, named by compact strings decoded by one builder (as timm does).

Grammar (``parse_op``):

- ``kKeE``  MBConv / inverted residual: 1x1 expand to in*E (omitted when E == 1), KxK depthwise
  (stride s), 1x1 project; BN after each conv, ReLU after the first two; residual add when the
  stride is 1 and in == out channels. ``k3e1`` is MobileNetV2's first (depthwise-separable) block.
- ``convK`` plain KxK convolution + BN + ReLU (the stem of MobileNetV2).
- ``resK``  ResNet bottleneck (v1.5): 1x1 to out/4, KxK (stride s), 1x1 to out, BN after each,
  projection shortcut (1x1 conv + BN) when the shape changes, ReLU after the addition.
- ``maxpoolK`` KxK max pooling (stride s); keeps the channels.
- ``skip``  identity; only valid where input and output shapes are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor, nn

_MBCONV = re.compile(r"^k(\d+)e(\d+)$")
_CONV = re.compile(r"^conv(\d+)$")
_RES = re.compile(r"^res(\d+)$")
_POOL = re.compile(r"^maxpool(\d+)$")
MAX_KERNEL = 15
MAX_EXPANSION = 16
# One op may hold at most this many parameters (256 MiB in fp32): far above any real layer, low
# enough that an absurd width is an error before anything is allocated.
MAX_OP_PARAMS = 2**26
MAX_WIDTH = 16384  # channels of any layer, backbone or head


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
    for kind, pattern in (("conv", _CONV), ("res", _RES), ("maxpool", _POOL)):
        if m := pattern.match(name):
            kernel = int(m.group(1))
            _check_kernel(name, kernel)
            return OpSpec(name, kind, kernel)
    raise ValueError(
        f"unknown op {name!r} (expected 'kKeE' e.g. k3e6, 'convK', 'resK', 'maxpoolK' or 'skip')"
    )


def _check_kernel(name: str, kernel: int) -> None:
    if kernel % 2 == 0 or not 1 <= kernel <= MAX_KERNEL:
        raise ValueError(f"op {name!r}: kernel must be odd and 1..{MAX_KERNEL}")


def shape_problem(spec: OpSpec, cin: int, cout: int, stride: int) -> str | None:
    """Why ``spec`` cannot map cin -> cout channels at this stride, or None if it can."""
    if spec.kind == "skip" and (cin != cout or stride != 1):
        return "needs equal input and output shapes"
    if spec.kind == "maxpool" and cin != cout:
        return "keeps the channel count"
    if spec.kind == "res" and cout % 4:
        return "needs a width divisible by 4 (bottleneck of width/4)"
    return None


def _conv_bn_params(cin: int, cout: int, kernel: int, groups: int = 1) -> int:
    return cin // groups * cout * kernel * kernel + 2 * cout


def param_count(spec: OpSpec, cin: int, cout: int, stride: int) -> int:
    """Parameters of ``build_op(spec, cin, cout, stride)`` (BN affine included), computed
    without building it, so sizes can be checked before anything is allocated."""
    if spec.kind in ("skip", "maxpool"):
        return 0
    k = spec.kernel
    if spec.kind == "mbconv":
        hidden = cin * spec.expansion
        expand = _conv_bn_params(cin, hidden, 1) if spec.expansion != 1 else 0
        depthwise = _conv_bn_params(hidden, hidden, k, hidden)
        return expand + depthwise + _conv_bn_params(hidden, cout, 1)
    if spec.kind == "res":
        mid = cout // 4
        body = _conv_bn_params(cin, mid, 1) + _conv_bn_params(mid, mid, k)
        body += _conv_bn_params(mid, cout, 1)
        return body + (0 if stride == 1 and cin == cout else _conv_bn_params(cin, cout, 1))
    return _conv_bn_params(cin, cout, k)


def size_problem(spec: OpSpec, cin: int, cout: int, stride: int) -> str | None:
    """Why ``spec`` would be absurdly large at this layer, or None."""
    params = param_count(spec, cin, cout, stride)
    if params > MAX_OP_PARAMS:
        return f"would hold {params:,} parameters (at most {MAX_OP_PARAMS:,} per op)"
    return None


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


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (stride on the KxK conv, as torchvision's v1.5)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cout // 4
        self.body = nn.Sequential(
            conv_bn(cin, mid, 1),
            conv_bn(mid, mid, kernel, stride),
            conv_bn(mid, cout, 1, relu=False),
        )
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else conv_bn(cin, cout, 1, stride, relu=False)
        )  # fmt: skip
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def build_op(spec: OpSpec, cin: int, cout: int, stride: int) -> nn.Module:
    """The module for an op at a layer with the given channels and stride."""
    problem = shape_problem(spec, cin, cout, stride) or size_problem(spec, cin, cout, stride)
    if problem:
        raise ValueError(f"{spec.name!r} {problem}, got {cin}->{cout} channels, stride {stride}")
    if spec.kind == "skip":
        return nn.Identity()
    if spec.kind == "mbconv":
        return MBConv(cin, cout, spec.kernel, spec.expansion, stride)
    if spec.kind == "res":
        return Bottleneck(cin, cout, spec.kernel, stride)
    if spec.kind == "maxpool":
        return nn.MaxPool2d(spec.kernel, stride, spec.kernel // 2)
    return conv_bn(cin, cout, spec.kernel, stride)
