"""The network built from a search space: a super net when layers are searchable, else a plain net.

Layers run in the graph's topological order; each searchable layer is a MixedOp whose path
weights come from the architecture parameters ``alphas`` (kept in their own parameter group),
or from a strategy that passes sampled weights to ``forward``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dnas.errors import DnasError
from dnas.nn.heads import build_head
from dnas.nn.mixed_op import MixedOp
from dnas.space.graph import SearchSpace
from dnas.space.ops import build_op, parse_op


def module_key(layer_name: str) -> str:
    """ModuleDict keys cannot hold dots: ``stage1.0`` -> ``stage1_0``."""
    return layer_name.replace(".", "_")


class Network(nn.Module):
    """The super net of ``space`` (a ``MixedOp`` per searchable layer, every candidate's
    weights) or, for a fixed architecture, the plain net; its head has ``num_outputs``
    channels."""

    def __init__(self, space: SearchSpace, num_outputs: int) -> None:
        if not isinstance(space, SearchSpace):
            raise DnasError(f"Network: expected a SearchSpace (dnas.load_space), got "
                            f"{type(space).__name__}")  # fmt: skip
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise DnasError(f"Network: expected num_outputs >= 1, got {num_outputs!r}")
        super().__init__()
        self.space = space
        self.order = [layer.name for layer in space.layers]
        self.inputs = {layer.name: layer.input for layer in space.layers}
        self.searchable = [layer.name for layer in space.searchable_layers]
        self.blocks = nn.ModuleDict()
        for layer in space.layers:
            cin = space.channels(layer.input)
            specs = [parse_op(op) for op in layer.candidates]
            if layer.searchable:
                block: nn.Module = MixedOp(specs, cin, layer.width, layer.stride)
            else:
                block = build_op(specs[0], cin, layer.width, layer.stride)
            self.blocks[module_key(layer.name)] = block
        # Small random init breaks ties between identical candidates, as DARTS does (1e-3 scale).
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(layer.candidates)))
            for layer in space.searchable_layers
        )
        # T of p = softmax(alpha / T); 1 is Eq. 2. A strategy may anneal it (``search.darts``).
        self.temperature = 1.0
        self.head_inputs = list(space.head_inputs())
        self.head = build_head(space, num_outputs)

    # -- the two parameter groups
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.alphas}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_probs(self) -> list[Tensor]:
        """p_l = softmax(alpha_l / T) for every searchable layer (Eq. 2 at T = 1)."""
        return [torch.softmax(a / self.temperature, dim=-1) for a in self.alphas]

    def set_drop_path(self, rate: float, device: torch.device | str = "cpu") -> None:
        """Drop-path at ``rate`` with its own generator, seeded from the global seed and the
        process rank: under torchrun each process masks its own samples differently."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.drop_path_generator = torch.Generator(device)
        self.drop_path_generator.manual_seed(int(torch.initial_seed()) + 7919 * (rank + 1))
        for block in self.blocks.values():
            if isinstance(block, MixedOp):
                block.drop_path_rate = rate
                block.generator = self.drop_path_generator

    def drop_path_rng_state(self) -> Tensor | None:
        generator = getattr(self, "drop_path_generator", None)
        return None if generator is None else generator.get_state()

    def set_drop_path_rng_state(self, state: Tensor | None) -> None:
        if state is not None:
            self.drop_path_generator.set_state(state)

    def forward(
        self,
        x: Tensor,
        path_weights: list[Tensor] | None = None,
        active: list[list[int]] | None = None,
        probe: bool = False,
    ) -> Tensor:
        """Run the net; ``path_weights`` (one vector per searchable layer) default to Eq. 2;
        ``active`` (candidate indices per searchable layer) restricts which paths are trained;
        ``probe`` runs the others without gradient, for their path weights' gradients."""
        if self.searchable and path_weights is None:
            path_weights = self.arch_probs()
        weights = dict(zip(self.searchable, path_weights or [], strict=True))
        paths = dict(zip(self.searchable, active, strict=True)) if active else {}
        feats = {"input": x}
        for name in self.order:
            block = self.blocks[module_key(name)]
            inp = feats[self.inputs[name]]
            if name in weights:
                feats[name] = block(inp, weights[name], paths.get(name), probe)
            else:
                feats[name] = block(inp)
        return self.head([feats[n] for n in self.head_inputs])
