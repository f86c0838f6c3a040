"""Parameter and MAC counting, the conventions of the paper's size table.

Params count every learnable tensor (BN affine included, buffers excluded). MACs count the
multiply-accumulates of Conv2d, ConvTranspose2d and Linear layers at batch 1 (half of what
``torch.utils.flop_counter`` reports); BN, ReLU, additions and biases are not counted.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from dnas.config import MAX_INPUT
from dnas.errors import ConfigError, DnasError, brief
from dnas.nn.heads import build_head, head_plugin
from dnas.registry import defining_module
from dnas.schema import is_integer, is_size
from dnas.space.graph import SearchSpace, load_space
from dnas.space.ops import OpKind, OpSpec, build_op, op_kind, parse_op

MAX_ACTIVATION = 2**27  # values of one intermediate tensor per image (512 MiB in fp32)
MAX_OUTPUTS = 16384


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_out = (
            module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        )
        return output.numel() // output.shape[0] * per_out
    if isinstance(module, nn.ConvTranspose2d):
        x = inputs[0]
        per_in = (
            module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        )
        return x.numel() // x.shape[0] * per_in
    if isinstance(module, nn.Linear):
        return output.numel() // output.shape[0] * module.in_features
    return 0


@torch.no_grad()
def count_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs per sample of one forward pass of ``module`` on ``inputs`` (run once, in eval mode)."""
    return _profile(module, *inputs)[0]


@torch.no_grad()
def _profile(module: nn.Module, *inputs: Tensor, what: str = "") -> tuple[int, int, Tensor]:
    """(MACs per sample, values of the largest intermediate tensor per sample, the output) of
    one pass; ``what`` names a plugin's module, whose failing forward is then one line."""
    total, largest = 0, 0

    def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total, largest
        total += _macs(mod, args, out)
        largest = max(largest, out.numel() // max(out.shape[0], 1))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    was_training = module.training
    module.eval()
    try:
        out = plugin_forward(module, inputs, what) if what else module(*inputs)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total, largest, out


def plugin_forward(module: nn.Module, inputs: tuple[Tensor, ...], what: str) -> Tensor:
    """``module(*inputs)`` of a plugin's op or head (on the ``meta`` device: shapes only); a
    forward that fails on these shapes, or returns no tensor, is one line naming ``what``."""
    shapes = ", ".join("x".join(map(str, x.shape[1:])) for x in inputs)
    try:
        out = module(*inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # shape mistakes on meta
        raise DnasError(f"{what}: its forward fails on the meta device on inputs of "
                        f"{shapes}: {brief(exc)}") from exc  # fmt: skip
    if not isinstance(out, Tensor):
        raise DnasError(f"{what}: its forward returns a {type(out).__name__}, not one tensor")
    return out


class _HeadOnInputs(nn.Module):
    """Lets the profiler call a head that takes a list of features."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *features: Tensor) -> Tensor:
        return self.head(list(features))


@functools.lru_cache(maxsize=4096)
def _op_cost(kind: OpKind, spec: OpSpec, cin: int, cout: int, stride: int, h: int,
             w: int) -> tuple[int, int, int, tuple[int, ...]]:  # fmt: skip
    """(MACs, params, values of the largest intermediate tensor, output shape) of one op at one
    input shape, on the ``meta`` device. Layers of a stage share their shapes, and a process
    costs the same space many times (a search, its sub-nets, the calibration nets), so each is
    profiled once; the op's kind is in the key, so a kind registered anew is profiled anew."""
    with torch.device("meta"):
        module = build_op(spec, cin, cout, stride)
        what = f"op kind {kind.name!r} ({defining_module(kind.build)}): {spec.name}"
        macs, largest, out = _profile(module, torch.zeros(1, cin, h, w), what=what)
    return macs, count_params(module), largest, tuple(out.shape[1:])


def op_costs(
    space: SearchSpace, input_hw: tuple[int, int], num_outputs: int
) -> tuple[dict[str, dict[str, tuple[int, int]]], tuple[int, int]]:
    """(MACs, params) of every candidate of every layer at its exact input shape, and of the head.

    Costs add up per layer, so any architecture's total is a sum of these entries. Everything
    runs on the ``meta`` device (shapes only, nothing allocated), and an input size that would
    make any intermediate tensor absurdly large is a one-line error.
    """
    check_sizes(input_hw, num_outputs)
    shapes = space.infer_shapes(*input_hw)
    per_layer: dict[str, dict[str, tuple[int, int]]] = {}
    for layer in space.layers:
        cin, h, w = shapes[layer.input]
        per_layer[layer.name] = {}
        for op in layer.candidates:
            spec = parse_op(op)
            kind = op_kind(spec)
            macs, params, largest, shape = _op_cost(kind, spec, cin, layer.width, layer.stride,
                                                    h, w)  # fmt: skip
            if shape != shapes[layer.name]:  # the graph's shapes are what every check trusts
                raise DnasError(f"op kind {kind.name!r} ({defining_module(kind.build)}): {op} "
                                f"on layer {layer.name} ({cin}x{h}x{w}, stride {layer.stride}) "
                                f"gives {'x'.join(map(str, shape))}, not the layer's "
                                f"{'x'.join(map(str, shapes[layer.name]))}")  # fmt: skip
            _check_activation(space, layer.name, op, largest, input_hw)
            per_layer[layer.name][op] = (macs, params)
    with torch.device("meta"):
        head = _HeadOnInputs(build_head(space, num_outputs))
        feats = [torch.zeros(1, *shapes[n]) for n in space.head_inputs()]
        macs, largest, _ = _profile(head, *feats, what=head_plugin(space))
    _check_activation(space, "head", space.head.type if space.head else "", largest, input_hw)
    return per_layer, (macs, count_params(head))


@torch.no_grad()
def head_output_shape(
    space: SearchSpace, input_hw: tuple[int, int], num_outputs: int
) -> tuple[int, int, int]:
    """(C, H, W) of the head's output for one input of ``input_hw``, on the ``meta`` device:
    what a task compares with its targets before a run writes anything."""
    shapes = space.infer_shapes(*input_hw)
    with torch.device("meta"):
        head = _HeadOnInputs(build_head(space, num_outputs)).eval()
        feats = tuple(torch.zeros(1, *shapes[n]) for n in space.head_inputs())
        out = plugin_forward(head, feats, head_plugin(space))
    return tuple(out.shape[1:])


def check_sizes(input_hw: tuple[int, int], num_outputs: int) -> None:
    """Bounds on the input size and the head's outputs, checked before anything is built."""
    if not all(8 <= side <= MAX_INPUT for side in input_hw):
        raise DnasError(f"input size {input_hw[0]}x{input_hw[1]}: expected both sides in "
                        f"8..{MAX_INPUT}")  # fmt: skip
    if not 1 <= num_outputs <= MAX_OUTPUTS:
        raise DnasError(f"outputs (head channels): expected 1..{MAX_OUTPUTS}, got {num_outputs}")


def _check_activation(
    space: SearchSpace, layer: str, op: str, values: int, input_hw: tuple[int, int]
) -> None:
    if values > MAX_ACTIVATION:
        raise ConfigError(space.source, layer, f"{op} at input {input_hw[0]}x{input_hw[1]} "
                          f"makes a tensor of {values:,} values per image (at most "
                          f"{MAX_ACTIVATION:,}); use a smaller input size or narrower "
                          "layers")  # fmt: skip


def cost_report(ref: str | SearchSpace, input_hw: tuple[int, int], num_outputs: int) -> dict:
    """What ``dnas cost`` prints: exact params/MACs (backbone and head apart) of an architecture,
    or the range over all architectures of a search space (a YAML path, a shipped name or a
    loaded space, such as ``dnas.task.build_space`` gives with its task's head)."""
    if not is_size(input_hw):
        raise DnasError(f"cost_report: expected input_hw (height, width), got {input_hw!r}")
    if not is_integer(num_outputs, 1):
        raise DnasError(f"cost_report: expected num_outputs, an integer >= 1, got "
                        f"{num_outputs!r}")  # fmt: skip
    space = ref if isinstance(ref, SearchSpace) else load_space(ref)
    per_layer, (head_macs, head_params) = op_costs(space, input_hw, num_outputs)
    report: dict = {"name": space.name, "input_size": f"{input_hw[0]}x{input_hw[1]}",
                    "outputs": num_outputs}  # fmt: skip
    if space.is_fixed:
        macs = sum(next(iter(ops.values()))[0] for ops in per_layer.values())
        params = sum(next(iter(ops.values()))[1] for ops in per_layer.values())
        report.update(params=params + head_params, macs=macs + head_macs,
                      backbone_params=params, backbone_macs=macs,
                      head_params=head_params, head_macs=head_macs)  # fmt: skip
        return report
    n_archs = 1
    for ops in per_layer.values():
        n_archs *= len(ops)
    for index, key in ((0, "macs"), (1, "params")):
        low = sum(min(c[index] for c in ops.values()) for ops in per_layer.values())
        high = sum(max(c[index] for c in ops.values()) for ops in per_layer.values())
        extra = head_macs if index == 0 else head_params
        report[f"min_{key}"], report[f"max_{key}"] = low + extra, high + extra
    report["searchable_layers"] = len(space.searchable_layers)
    report["architectures"] = n_archs
    return report
