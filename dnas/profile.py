"""Parameter and MAC counting, the conventions of the paper's size table.

Params count every learnable tensor (BN affine included, buffers excluded). MACs count the
multiply-accumulates of Conv2d, ConvTranspose2d and Linear layers at batch 1 (half of what
``torch.utils.flop_counter`` reports); BN, ReLU, additions and biases are not counted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
    total = 0

    def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += _macs(mod, args, out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    was_training = module.training
    module.eval()
    try:
        module(*inputs)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total
