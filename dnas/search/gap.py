"""The discretisation gap of a super net: its task loss as the mixture it trained against the
loss of the one-hot net that is derived from it, with the same weights.

DARTS trains the weighted sum of every candidate op and then keeps the argmax; when the
mixture is far from one-hot, the derived net is not the net that was trained and scores
worse (Wang et al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021).
Both losses are measured on the architecture split with batch statistics in batch norm (the
running statistics were gathered under the mixture and would penalise the derived net for
that alone), and the running statistics are left as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnas.engine.runtime import Amp, mean_loss
from dnas.nn.network import Network


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode (no drop-path) except batch norm, which normalises by the batch's own
    statistics with momentum 0, so its running statistics (and batch count) stay unchanged;
    every module's mode is restored after."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
              for m in norms]  # fmt: skip
    model.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, counts, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
        model.train(was_training)


def one_hot_weights(network: Network, choices: dict[str, str]) -> list[Tensor]:
    """Path weights that select ``choices`` (op name per searchable layer) and nothing else."""
    layers = network.space.searchable_layers
    return [F.one_hot(torch.tensor(list(layer.candidates).index(choices[layer.name])),
                      len(alpha)).to(alpha)
            for layer, alpha in zip(layers, network.alphas, strict=True)]  # fmt: skip


def batch_statistics_loss(network: Network, batches: list[dict[str, Any]], amp: Amp,
                          loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
                          device: torch.device,
                          path_weights: list[Tensor] | None = None) -> float:  # fmt: skip
    """The task loss over ``batches`` with batch statistics in batch norm and ``path_weights``
    (None: the mixture softmax(alpha / T))."""
    with batch_statistics(network):
        return mean_loss(network, batches, amp, loss_fn, device, path_weights=path_weights)


def discretisation_gap(network: Network, batches: Iterable[dict[str, Any]], amp: Amp,
                       loss_fn: Callable[[Tensor, dict[str, Any]], Tensor],
                       device: torch.device,
                       choices: dict[str, str]) -> dict[str, float]:  # fmt: skip
    """``mixture_loss`` and ``derived_loss`` (the one-hot net ``choices``) on ``batches``, and
    ``gap``, their ratio minus 1: how much worse the derived net does with the weights the
    search trained (0: no gap)."""
    batches = list(batches)
    mixture = batch_statistics_loss(network, batches, amp, loss_fn, device)
    derived = batch_statistics_loss(network, batches, amp, loss_fn, device,
                                    one_hot_weights(network, choices))  # fmt: skip
    return {"mixture_loss": mixture, "derived_loss": derived,
            "gap": derived / max(mixture, 1e-12) - 1.0}  # fmt: skip
