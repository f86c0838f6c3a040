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

Each kind is one :class:`OpKind` record in ``OP_KINDS`` (grammar, module, parameter count, shape
rule and how diagrams draw it): a new kind is one registered record (docs/adding_an_op.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from dnas.registry import OP_KINDS

MAX_KERNEL = 15
MAX_EXPANSION = 16
# One op may hold at most this many parameters (256 MiB in fp32): far above any real layer, low
# enough that an absurd width is an error before anything is allocated.
MAX_OP_PARAMS = 2**26
MAX_WIDTH = 16384  # channels of any layer, backbone or head


@dataclass(frozen=True)
class OpSpec:
    """A decoded op string: its kind (an ``OP_KINDS`` name), kernel and expansion."""

    name: str
    kind: str
    kernel: int = 0
    expansion: int = 0


Builder = Callable[[OpSpec, int, int, int], nn.Module]  # (spec, cin, cout, stride)
Counter = Callable[[OpSpec, int, int, int], int]


def _any_shape(spec: OpSpec, cin: int, cout: int, stride: int) -> str | None:
    return None


@dataclass(frozen=True)
class OpKind:
    """One kind of candidate op, all of it in one place. ``pattern`` matches the whole op
    string; its groups (at most two, digits) are the kernel and the expansion, checked against
    MAX_KERNEL / MAX_EXPANSION (a group left empty reads as 0); patterns must not overlap.
    ``params`` counts what ``build`` makes, without building it. ``colour`` and ``legend``
    draw its blocks in diagrams, ``height`` their height (MBConv: the expansion); an
    ``identity`` op is drawn as a line and never dropped by drop-path."""

    name: str
    pattern: str
    syntax: str  # how the grammar error names it, e.g. "'convK'"
    build: Builder
    params: Counter
    shape_problem: Callable[[OpSpec, int, int, int], str | None] = _any_shape
    colour: Callable[[OpSpec], str] = lambda spec: OTHER_OP_COLOUR
    legend: Callable[[OpSpec], str] = lambda spec: spec.kind
    height: Callable[[OpSpec], float] = lambda spec: OTHER_OP_HEIGHT
    identity: bool = False


OTHER_OP_COLOUR = "#8172b3"
OTHER_OP_HEIGHT = 3.0  # ops without an expansion: a fixed, mid-scale block height


def register_op_kind(kind: OpKind) -> OpKind:
    """Add ``kind`` to the grammar (a plugin calls this at import time)."""
    groups = re.compile(kind.pattern).groups
    if groups > 2:
        raise ValueError(f"op kind {kind.name!r}: pattern {kind.pattern!r} has {groups} groups, "
                         "expected at most 2 (kernel, expansion)")  # fmt: skip
    return OP_KINDS.register(kind.name)(kind)


def op_kind(spec: OpSpec) -> OpKind:
    return OP_KINDS.get(spec.kind)


def parse_op(name: str) -> OpSpec:
    """Decode an op string; raises ValueError with the grammar when it is not one."""
    if not isinstance(name, str):
        raise ValueError(f"expected an op string, got {name!r}")
    kinds = [OP_KINDS.get(n) for n in OP_KINDS.names()]
    matches = [(kind, m) for kind in kinds if (m := re.fullmatch(kind.pattern, name))]
    if len(matches) > 1:  # which kind builds it would depend on the names' order
        names = " and ".join(repr(kind.name) for kind, _ in matches)
        raise ValueError(f"op {name!r} matches the patterns of op kinds {names}: a plugin's "
                         "op kind overlaps another; give it a prefix of its own")  # fmt: skip
    if matches:
        kind, m = matches[0]
        return OpSpec(name, kind.name, *_numbers(name, m.groups()))
    syntax = ", ".join(kind.syntax for kind in kinds)
    raise ValueError(f"unknown op {name!r} (expected one of {syntax})")


def _numbers(name: str, groups: tuple[str | None, ...]) -> list[int]:
    """The kernel and expansion of a matched op string, checked; an empty group reads as 0."""
    if not all(g is None or g.isdigit() for g in groups):
        raise ValueError(f"op {name!r}: expected digits in {groups}")
    if any(g and len(g) > 1 and g.startswith("0") for g in groups):  # k03e3 is k3e3 twice
        raise ValueError(f"op {name!r}: write its numbers without leading zeros")
    kernel, expansion = (*groups, None, None)[:2]
    if kernel is not None:
        _check_kernel(name, int(kernel))
    if expansion is not None and not 1 <= int(expansion) <= MAX_EXPANSION:
        raise ValueError(f"op {name!r}: expansion must be 1..{MAX_EXPANSION}")
    return [int(g or 0) for g in groups]


def _check_kernel(name: str, kernel: int) -> None:
    if kernel % 2 == 0 or not 1 <= kernel <= MAX_KERNEL:
        raise ValueError(f"op {name!r}: kernel must be odd and 1..{MAX_KERNEL}")


def shape_problem(spec: OpSpec, cin: int, cout: int, stride: int) -> str | None:
    """Why ``spec`` cannot map cin -> cout channels at this stride, or None if it can."""
    return op_kind(spec).shape_problem(spec, cin, cout, stride)


def _conv_bn_params(cin: int, cout: int, kernel: int, groups: int = 1) -> int:
    return cin // groups * cout * kernel * kernel + 2 * cout


def param_count(spec: OpSpec, cin: int, cout: int, stride: int) -> int:
    """Parameters of ``build_op(spec, cin, cout, stride)`` (BN affine included), computed
    without building it, so sizes can be checked before anything is allocated."""
    return op_kind(spec).params(spec, cin, cout, stride)


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
    return op_kind(spec).build(spec, cin, cout, stride)


# ---------------------------------------------------------------- the built-in kinds

KERNEL_COLOURS = {3: "#4c72b0", 5: "#55a868", 7: "#c44e52"}  # MBConv blocks, by kernel size


def _mbconv_params(spec: OpSpec, cin: int, cout: int, stride: int) -> int:
    hidden = cin * spec.expansion
    expand = _conv_bn_params(cin, hidden, 1) if spec.expansion != 1 else 0
    depthwise = _conv_bn_params(hidden, hidden, spec.kernel, hidden)
    return expand + depthwise + _conv_bn_params(hidden, cout, 1)


def _res_params(spec: OpSpec, cin: int, cout: int, stride: int) -> int:
    mid = cout // 4
    body = _conv_bn_params(cin, mid, 1) + _conv_bn_params(mid, mid, spec.kernel)
    body += _conv_bn_params(mid, cout, 1)
    return body + (0 if stride == 1 and cin == cout else _conv_bn_params(cin, cout, 1))


register_op_kind(OpKind(
    "mbconv", r"k(\d+)e(\d+)", "'kKeE' (e.g. k3e6)",
    build=lambda s, cin, cout, stride: MBConv(cin, cout, s.kernel, s.expansion, stride),
    params=_mbconv_params,
    colour=lambda s: KERNEL_COLOURS.get(s.kernel, OTHER_OP_COLOUR),
    legend=lambda s: f"{s.kernel}x{s.kernel}" if s.kernel in KERNEL_COLOURS
    else "MBConv, other kernel",
    height=lambda s: float(s.expansion),
))  # fmt: skip
register_op_kind(OpKind(
    "conv", r"conv(\d+)", "'convK'",
    build=lambda s, cin, cout, stride: conv_bn(cin, cout, s.kernel, stride),
    params=lambda s, cin, cout, stride: _conv_bn_params(cin, cout, s.kernel),
    colour=lambda s: "#dd8452", legend=lambda s: "conv",
))  # fmt: skip
register_op_kind(OpKind(
    "res", r"res(\d+)", "'resK'",
    build=lambda s, cin, cout, stride: Bottleneck(cin, cout, s.kernel, stride),
    params=_res_params,
    shape_problem=lambda s, cin, cout, stride: (
        "needs a width divisible by 4 (bottleneck of width/4)" if cout % 4 else None),
    colour=lambda s: "#937860", legend=lambda s: "ResNet bottleneck",
))  # fmt: skip
register_op_kind(OpKind(
    "maxpool", r"maxpool(\d+)", "'maxpoolK'",
    build=lambda s, cin, cout, stride: nn.MaxPool2d(s.kernel, stride, s.kernel // 2),
    params=lambda s, cin, cout, stride: 0,
    shape_problem=lambda s, cin, cout, stride: "keeps the channel count" if cin != cout else None,
    colour=lambda s: "#da8bc3", legend=lambda s: "max pool",
))  # fmt: skip
register_op_kind(OpKind(
    "skip", r"skip", "'skip'",
    build=lambda s, cin, cout, stride: nn.Identity(),
    params=lambda s, cin, cout, stride: 0,
    shape_problem=lambda s, cin, cout, stride: (
        "needs equal input and output shapes" if cin != cout or stride != 1 else None),
    colour=lambda s: "#333333", legend=lambda s: "skip", identity=True,
))  # fmt: skip
