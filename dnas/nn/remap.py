"""FNA parameter remapping (Fang et al., ICLR 2020): seed MobileNetV2 weights -> any MBConv net.

The seed is a torchvision ``mobilenet_v2`` state_dict (``features.N...``). Its inverted-residual
blocks are grouped into stages by output width; target stage i reads seed stage i, and
- depth: target layer j reads seed layer min(j, n_seed - 1) of that stage (the last repeats);
- width: a target dimension of c channels takes seed channels 0..c-1, cycling through them
  when the target is wider than the seed;
- kernel: a larger depthwise kernel holds the seed kernel at its centre (zeros around it), a
  smaller one takes the seed kernel's centre crop.
The stem (conv3 + the expansion-1 block) maps from ``features.0`` and ``features.1``; a super
net's candidates all read the same seed layer; skip ops, other op kinds and the head keep
their fresh initialisation. Every mapped tensor is listed in the returned report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dnas import checkpoint
from dnas.errors import DnasError
from dnas.nn.mixed_op import MixedOp
from dnas.nn.network import Network, module_key
from dnas.space.ops import MBConv

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class SeedUnit:
    """One conv of the seed with its BN: weight (out, in/groups, k, k) and BN vectors."""

    weight: Tensor
    bn: dict[str, Tensor]


@dataclass
class SeedBlock:
    expand: SeedUnit | None
    depthwise: SeedUnit
    project: SeedUnit


def _unit(sd: dict[str, Tensor], conv: str, bn: str) -> SeedUnit:
    return SeedUnit(sd[f"{conv}.weight"], {k: sd[f"{bn}.{k}"] for k in BN_KEYS})


def read_mobilenetv2(path: Path) -> tuple[SeedUnit, SeedBlock, list[list[SeedBlock]]]:
    """(stem conv, first block, stages of blocks) from a torchvision MobileNetV2 state_dict."""
    sd = checkpoint.state_dict_of(checkpoint.load(path), path)
    try:
        stem = _unit(sd, "features.0.0", "features.0.1")
        first = SeedBlock(None, _unit(sd, "features.1.conv.0.0", "features.1.conv.0.1"),
                          _unit(sd, "features.1.conv.1", "features.1.conv.2"))  # fmt: skip
        indices = sorted(
            {int(m.group(1)) for k in sd if (m := re.match(r"features\.(\d+)\.conv\.3", k))}
        )
        stages: list[list[SeedBlock]] = []
        for i in indices:
            p = f"features.{i}.conv"
            block = SeedBlock(_unit(sd, f"{p}.0.0", f"{p}.0.1"), _unit(sd, f"{p}.1.0", f"{p}.1.1"),
                              _unit(sd, f"{p}.2", f"{p}.3"))  # fmt: skip
            width = block.project.weight.shape[0]
            if not stages or stages[-1][0].project.weight.shape[0] != width:
                stages.append([])
            stages[-1].append(block)
    except KeyError as exc:
        raise DnasError(f"{path}: not a torchvision MobileNetV2 state_dict (no {exc})") from None
    return stem, first, stages


def _channels(n: int, seed_n: int) -> Tensor:
    return torch.arange(n) % seed_n


def map_conv(seed: Tensor, shape: torch.Size) -> Tensor:
    """Seed conv weight -> ``shape``: channel mapping on dims 0 and 1, then kernel mapping."""
    out = seed[_channels(shape[0], seed.shape[0])][:, _channels(shape[1], seed.shape[1])]
    k, ks = shape[-1], seed.shape[-1]
    if k == ks:
        return out.clone()
    if k < ks:
        off = (ks - k) // 2
        return out[..., off : off + k, off : off + k].clone()
    full = torch.zeros(*out.shape[:2], k, k, dtype=out.dtype)
    off = (k - ks) // 2
    full[..., off : off + ks, off : off + ks] = out
    return full


def _load_unit(conv: nn.Conv2d, bn: nn.BatchNorm2d, seed: SeedUnit, name: str,
               report: list[str]) -> None:  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(map_conv(seed.weight, conv.weight.shape))
        index = _channels(bn.num_features, seed.bn["weight"].shape[0])
        for key in BN_KEYS:
            getattr(bn, key).copy_(seed.bn[key][index])
    report.append(name)


def _load_mbconv(op: MBConv, seed: SeedBlock, name: str, report: list[str]) -> None:
    units = list(op.body)
    if len(units) == 3:
        if seed.expand is None:
            raise DnasError(f"{name}: an expanding block cannot read the seed's expansion-1 block")
        _load_unit(units[0][0], units[0][1], seed.expand, f"{name}.expand", report)
    _load_unit(units[-2][0], units[-2][1], seed.depthwise, f"{name}.depthwise", report)
    _load_unit(units[-1][0], units[-1][1], seed.project, f"{name}.project", report)


def remap_into(network: Network, path: Path) -> list[str]:
    """Initialise ``network`` (super net or fixed) from a seed MobileNetV2 file; returns the
    names of the mapped convolutions."""
    stem_seed, first_seed, stages_seed = read_mobilenetv2(path)
    report: list[str] = []
    space = network.space
    stem = [network.blocks[module_key(layer.name)] for layer in space.stem]
    if isinstance(stem[0], nn.Sequential) and isinstance(stem[0][0], nn.Conv2d):
        _load_unit(stem[0][0], stem[0][1], stem_seed, "stem.0", report)
    if len(stem) > 1 and isinstance(stem[1], MBConv):
        _load_mbconv(stem[1], first_seed, "stem.1", report)
    if len(space.stages) > len(stages_seed):
        raise DnasError(f"{path}: the seed has {len(stages_seed)} stages, the space "
                        f"{len(space.stages)}")  # fmt: skip
    for stage, seed_stage in zip(space.stages, stages_seed, strict=False):
        for j, layer in enumerate(stage.layers):
            seed = seed_stage[min(j, len(seed_stage) - 1)]
            block = network.blocks[module_key(layer.name)]
            ops = zip(block.names, block.ops, strict=True) if isinstance(block, MixedOp) else [
                (layer.candidates[0], block)]  # fmt: skip
            for op_name, op in ops:
                if isinstance(op, MBConv):
                    _load_mbconv(op, seed, f"{layer.name}/{op_name}", report)
    return report
