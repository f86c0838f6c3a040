"""How much evidence a search's decisions rest on: whether its architecture gradient points one
way, step after step, or is noise.

Adam normalises each alpha's step by the gradient's running rms, so it moves alpha as far on
zero-mean noise as on a consistent signal: on pure noise, lr 0.1 for 180 steps already gives a
mean top op probability near 0.5. Decisiveness alone does not show that a search found
anything. The test here is the one-sample t-test per alpha entry on the *task* gradients of a
set of architecture steps (an epoch's for the log, the whole search's for ``search.json``),
t = mean / (sd / sqrt(n)). With no signal, |t| > 2 for a share ``P(|T_{n-1}| > 2)`` of the
entries (about 5 %), and a binomial test says whether the share seen is more than that.
Within a layer the entries of a softmax gradient sum to zero, so they are not independent:
read the p-value as a guide, not an exact level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

T_SIGNIFICANT = 2.0  # |t| above which an entry's mean gradient counts as a direction
NOISE_P = 0.01  # binomial p-value above which the epoch's gradients are called noise
MIN_STEPS = 3  # fewer steps give no usable standard deviation


class GradientEvidence:
    """Per-entry running sums of task gradients on alpha over architecture steps; :meth:`summary`
    tests them against noise. Its state is checkpointed with the strategy (exact resume)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.total: Tensor | None = None
        self.squares: Tensor | None = None

    def add(self, grads: list[Tensor]) -> None:
        """One architecture step's task gradient, a tensor per layer; a step with a non-finite
        gradient (fp16: the scaler skipped it) is left out."""
        flat = torch.cat([g.detach().reshape(-1) for g in grads]).double().cpu()
        if not bool(torch.isfinite(flat).all()):
            return
        if self.total is None:
            self.total, self.squares = torch.zeros_like(flat), torch.zeros_like(flat)
        self.total += flat
        self.squares += flat**2
        self.steps += 1

    def t_values(self) -> Tensor:
        """t = mean / (sd / sqrt(n)) per entry (sd with n - 1 degrees of freedom); 0 where every
        step's gradient was the same."""
        n = self.steps
        mean = self.total / n
        var = ((self.squares - n * mean**2) / (n - 1)).clamp_min(0.0)
        se = torch.sqrt(var / n)
        return torch.where(se > 0, mean / se.clamp_min(1e-300), torch.zeros_like(mean))

    def summary(self) -> dict[str, Any] | None:
        """``steps``; ``significant``: the share of entries with |t| > 2; ``under_noise``: that
        share with no signal; ``p_value`` of the share seen under noise; ``noise``: whether
        p_value > 0.01. None before 3 steps."""
        if self.steps < MIN_STEPS or self.total is None:
            return None
        from scipy import stats  # here, not at import: scipy.stats adds seconds to every CLI start

        t = self.t_values()
        entries, hits = t.numel(), int((t.abs() > T_SIGNIFICANT).sum())
        under_noise = float(2 * stats.t.sf(T_SIGNIFICANT, self.steps - 1))
        p_value = float(stats.binomtest(hits, entries, under_noise, alternative="greater").pvalue)
        return {"steps": self.steps, "significant": hits / entries, "under_noise": under_noise,
                "p_value": p_value, "noise": p_value > NOISE_P}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "total": self.total, "squares": self.squares}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.total, self.squares = state["steps"], state["total"], state["squares"]


def noise_warning(summary: dict[str, Any] | None) -> str | None:
    """One line when a search's architecture gradient, over all its architecture steps, was
    indistinguishable from noise: the derived ops are then where Adam's normalised steps on
    noise left alpha."""
    if not summary or not summary.get("noise"):
        return None
    return (f"the search's architecture gradient never rose above noise "
            f"({summary['significant']:.1%} of alpha entries with |t| > 2 over "
            f"{summary['steps']} steps; noise alone gives {summary['under_noise']:.1%}): the "
            "derived ops may be noise; search longer or with a larger search.batch_size, and "
            "check that searches with other seeds agree")  # fmt: skip


def noise_epochs_warning(summary: dict[str, Any] | None, strategy: str | None = None) -> str | None:
    """One line when the architecture gradient was noise in more than half of the architecture
    epochs taken one by one, although the whole search may pass: alpha then moved on noise for
    most of the search. Its advice fits ``strategy`` (``gumbel`` at a low temperature: its
    straight-through gradient is a few large spikes, measured as noise below a temperature of
    about 0.5 in docs/benchmarks.md)."""
    if not summary or "noise_epochs" not in summary:
        return None
    noisy, epochs = summary["noise_epochs"], summary["arch_epochs"]
    if 2 * noisy <= epochs:
        return None
    temperature = ("keep its temperature higher (search.single_path.tau_min, tau_decay), or "
                   if strategy == "gumbel" else "")  # fmt: skip
    return (f"the architecture gradient was noise in {noisy} of {epochs} architecture epochs: "
            f"alpha moved on noise for most of the search; {temperature}take more steps per "
            "epoch or a larger search.batch_size")  # fmt: skip
