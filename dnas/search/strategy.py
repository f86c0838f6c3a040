"""The Strategy interface (NASLib's lifecycle) that every search method implements.

The search loop (``dnas.search.run``) only ever calls these methods, so DARTS, the single-path
methods and the random-search baseline are interchangeable by name in the experiment YAML.
``adapt_search_space`` sets ``network`` and ``table``, which the final architecture reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from dnas.config import CostConfig, SearchConfig
from dnas.engine.runtime import Amp
from dnas.nn.network import Network
from dnas.search.budget import most_probable_near
from dnas.search.cost_model import CostTable
from dnas.space.choices import most_probable_ops
from dnas.task import Task


class Strategy(ABC):
    """A search strategy's lifecycle (NASLib's): adapt the super net, step it, end epochs,
    report op probabilities and the final architecture, checkpoint exactly; registered in
    ``STRATEGIES`` and driven by the one search loop (README, "Search strategies")."""

    # a strategy's own YAML keys: the dataclass ``Options``, read from section
    # ``search.<options_key>`` (strategies may share one); None: none
    Options: ClassVar[type | None] = None
    options_key: ClassVar[str | None] = None
    # the config file its options came from (set by the run), for the one-line errors naming it
    source: str = "<memory>"

    def __init__(self, cfg: SearchConfig, cost: CostConfig, amp: Amp | None = None) -> None:
        self.cfg = cfg
        self.cost_cfg = cost
        self.options = (cfg.options.get(self.options_key) or self.Options()) \
            if self.options_key else None  # fmt: skip
        self.amp = amp or Amp(torch.device("cpu"))
        # how the search run readies a network the strategy builds itself, once it is on the
        # device (under torchrun: batch-norm synchronisation and rank 0's weights); set by the run
        self.prepare: Callable[[nn.Module], nn.Module] = lambda model: model
        # what the user should hear about how the strategy set itself up (a widened band):
        # the run prints each as a warning line after adapt_search_space
        self.notes: list[str] = []

    @abstractmethod
    def adapt_search_space(
        self, network: Network, task: Task, table: CostTable, device: torch.device
    ) -> None:
        """Take the super net (and what scores it) and set up optimisers."""

    @property
    @abstractmethod
    def num_epochs(self) -> int:
        """How many passes over the weight split the search makes."""

    def new_epoch(self, epoch: int) -> None:
        """Called before each epoch's steps."""
        self.epoch = epoch

    def wants_arch_batch(self) -> bool:
        """Whether the next step uses an architecture-split batch (the loop loads one only
        then: none in warm-up, one every ``search.arch_every`` steps)."""
        return True

    @abstractmethod
    def step(
        self, train_batch: dict[str, Any], val_batch: dict[str, Any] | None
    ) -> dict[str, float]:
        """One step on a batch of the weight split and, when :meth:`wants_arch_batch` said so,
        one of the architecture split (else ``val_batch`` is None)."""

    def end_epoch(self, epoch: int, val_loader: DataLoader) -> dict[str, float]:
        """Called after each epoch's steps; returns scalars to log."""
        return {}

    @abstractmethod
    def arch_probs(self) -> dict[str, list[float]]:
        """Current probability of each candidate op, per searchable layer."""

    def trained_models(self) -> list[nn.Module]:
        """The networks whose weights the strategy trains now; the run keeps them identical
        across processes (batch-norm statistics at epoch ends, a check at the end)."""
        return [self.network]

    def result_extras(self) -> dict[str, Any]:
        """Strategy-specific entries for ``search.json``."""
        return {}

    def gradient_evidence(self) -> dict[str, Any] | None:
        """Whether the architecture gradient rose above noise (:mod:`dnas.search.evidence`);
        None for a strategy without one."""
        return None

    def cost_band(self) -> tuple[float, float] | None:
        """The costs the derived net is held to: the ``budget`` form's band (None without)."""
        return self.cost_cfg.band()

    def argmax_architecture(self) -> dict[str, str]:
        """The most probable op per searchable layer."""
        return most_probable_ops(self.network.space, self.arch_probs())

    def get_final_architecture(self) -> dict[str, str]:
        """The chosen op per searchable layer: the argmax; under ``form: budget``, when the
        argmax misses the target band, the most probable architecture inside it (or, where the
        space has none there, in the narrowest wider band that holds one)."""
        choices = self.argmax_architecture()
        band, cfg = self.cost_band(), self.cost_cfg
        if band is None or band[0] <= self.table.of_choices(choices) <= band[1]:
            return choices
        return most_probable_near(self.arch_probs(), self.table, cfg.target, cfg.tolerance) \
            or choices  # fmt: skip

    @abstractmethod
    def get_checkpointables(self) -> dict[str, Any]:
        """Everything (state dicts, counters, generator states) a checkpoint must hold so that
        :meth:`load_checkpointables` continues the search exactly."""

    @abstractmethod
    def load_checkpointables(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_checkpointables` returned (after ``adapt_search_space``)."""
