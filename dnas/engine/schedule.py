"""Learning-rate schedules of a training run (``train.schedule``).

``step`` (the paper, Sec. 4): lr x ``gamma`` at each milestone epoch, stepped once per epoch.
``cosine``: a linear warm-up over ``warmup_steps`` steps, then half a cosine from lr to 0 over
the remaining steps (SGDR without restarts, Loshchilov & Hutter 2017, Eq. 5 with
eta_min = 0), stepped once per step: a short run spends its last epochs at a low lr instead of
stopping at the lr it had.
"""

from __future__ import annotations

import math

import torch

from dnas.config import TrainConfig


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """The lr multiplier at ``step`` (0-based) of ``total``: (step + 1) / warmup while warming
    up, then (1 + cos(pi t / T)) / 2 with t the steps since the warm-up and T the steps after it."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def unreached_milestones(cfg: TrainConfig) -> list[int]:
    """The step schedule's milestones that a run of ``cfg.epochs`` never reaches (the lr
    steps after an epoch ends, so a milestone at the last epoch or later changes nothing)."""
    return [m for m in cfg.milestones if m >= cfg.epochs] if cfg.schedule == "step" else []


class Schedule:
    """The run's lr scheduler and when it steps (``per_step``: after every step, else after
    every epoch); its ``state_dict`` is the scheduler's."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.per_step = cfg.schedule == "cosine"
        if self.per_step:
            total = cfg.epochs * steps_per_epoch
            warmup = min(cfg.warmup_steps, total)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: cosine_factor(step, total, warmup)
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=cfg.milestones, gamma=cfg.gamma
            )

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self) -> None:
        if not self.per_step:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
