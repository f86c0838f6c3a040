"""The most probable architecture whose cost lies in a band: the final projection of a budget
search (as HardCoRe-NAS ends with a projection onto the hard constraint).

Dual ascent (``dnas.search.objective``) steers the argmax net onto the target while the search runs;
when the argmax still misses the band at the end (a discrete net cannot always meet a target
exactly), this picks the architecture that maximises sum_l ln p_l(op) subject to
``low <= cost <= high``, by dynamic programming over the cost in fine bins. It differs from the
argmax only in the layers where giving up probability buys the most cost.
"""

from __future__ import annotations

import numpy as np
import torch

from dnas.config import band_around
from dnas.search.cost_model import CostTable

BINS = 20_000
COST_RTOL = 1e-9  # the relative rounding of a summed cost: sums in other orders differ by it
DRAW_TRIES = 100_000  # rejection draws per random architecture before giving up


def most_probable_within(
    probs: dict[str, list[float]], table: CostTable, low: float, high: float
) -> dict[str, str] | None:
    """``{layer: op}`` maximising the summed log-probability with cost in [low, high], or None
    when no architecture of the space costs that much."""
    logp = {n: np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-30, None))
            for n, p in probs.items()}  # fmt: skip
    return best_within(logp, table, low, high)


def most_probable_near(
    probs: dict[str, list[float]], table: CostTable, target: float, tolerance: float
) -> dict[str, str] | None:
    """The budget projection: the most probable net within ``tolerance`` of ``target``; where
    no net of the space costs that much (a narrow band in a coarse space), within the narrowest
    band around ``target`` that holds one (bisection on the tolerance): as near as the space
    comes. None only when no band around ``target`` holds a net of the space."""

    def within(tol: float) -> dict[str, str] | None:
        return most_probable_within(probs, table, *band_around(target, tol))

    if (found := within(tolerance)) is not None:
        return found
    cheapest, dearest = table.cost_range()
    low, high = tolerance, max(target - cheapest, dearest - target) / target + 1e-9
    if within(high) is None:
        return None
    for _ in range(40):  # the narrowest holding band, to 2^-40 of the range
        mid = (low + high) / 2
        low, high = (low, mid) if within(mid) is not None else (mid, high)
    return within(high)


def best_within(
    scores: dict[str, list[float]], table: CostTable, low: float, high: float
) -> dict[str, str] | None:
    """``{layer: op}`` maximising the summed per-op ``scores`` (each layer's in the order of
    ``table.layers``) with cost in [low, high], or None when no architecture costs that much:
    a multiple-choice knapsack, solved by dynamic programming over the cost in ``BINS`` bins.
    With log-probabilities it is the budget projection; with another table's negated costs it
    is the cheapest net in that table at this table's cost (``lut check``'s picks)."""
    names = list(scores)
    costs = [np.array(list(table.layers[n].values()), dtype=np.float64) for n in names]
    ops = [list(table.layers[n]) for n in names]
    base = table.fixed + sum(float(c.min()) for c in costs)
    top = high - base  # the most the layers may add above their cheapest ops
    if top < 0:
        return None
    width = max(top, 1e-12) / BINS
    slack = len(names) * width / 2  # worst rounding error of a sum of rounded costs
    score = np.full(BINS + 1, -np.inf)
    score[0] = 0.0
    picks = np.zeros((len(names), BINS + 1), dtype=np.int16)
    for i, name in enumerate(names):
        gain = np.asarray(scores[name], dtype=np.float64)
        shifts = np.rint((costs[i] - costs[i].min()) / width).astype(int)
        best = np.full(BINS + 1, -np.inf)
        for o, shift in enumerate(shifts):
            if shift > BINS:
                continue
            moved = np.full(BINS + 1, -np.inf)
            moved[shift:] = score[: BINS + 1 - shift] + gain[o]
            better = moved > best
            best[better], picks[i][better] = moved[better], o
        score = best
    first = int(np.ceil(max(0.0, low - base + slack) / width))
    last = int(np.floor((top - slack) / width))
    if first > last or not np.isfinite(score[first : last + 1]).any():
        return None
    b = first + int(np.argmax(score[first : last + 1]))
    choices: dict[str, str] = {}
    for i in range(len(names) - 1, -1, -1):
        o = int(picks[i][b])
        choices[names[i]] = ops[i][o]
        b -= int(np.rint((costs[i][o] - costs[i].min()) / width))
    return {n: choices[n] for n in names}


def cheapest_within(
    costs: CostTable, table: CostTable, low: float, high: float
) -> dict[str, str] | None:
    """``{layer: op}`` of the lowest cost under ``costs`` (a runtime's ms) among the nets
    whose ``table`` cost (MACs) is in [low, high], or None when none is."""
    scores = {n: [-costs.layers[n][op] for op in ops] for n, ops in table.layers.items()}
    return best_within(scores, table, low, high)


def tilted_probs(table: CostTable, target: float) -> dict[str, np.ndarray]:
    """Per-layer op probabilities proportional to exp(-beta * cost), beta chosen (bisection) so
    that the expected cost is ``target``: the maximum-entropy distribution over architectures
    with that mean cost (beta = 0, uniform, when the uniform mean is the target)."""
    costs = {n: np.array(list(ops.values()), dtype=np.float64) for n, ops in table.layers.items()}
    scale = max(float(np.ptp(np.concatenate(list(costs.values())))), 1e-12)

    def probs(beta: float) -> dict[str, np.ndarray]:
        out = {}
        for name, c in costs.items():
            z = -beta * (c - c.min()) / scale
            e = np.exp(z - z.max())
            out[name] = e / e.sum()
        return out

    def mean(beta: float) -> float:
        return table.fixed + sum(float(p @ costs[n]) for n, p in probs(beta).items())

    lo, hi = -60.0, 60.0  # mean(beta) falls as beta rises
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) > target else (lo, mid)
    return probs((lo + hi) / 2)


def start_on_budget(alphas: list[torch.Tensor], names: list[str], table: CostTable,
                    target: float, temperature: float = 1.0) -> None:  # fmt: skip
    """Set every layer's alpha to ``temperature`` times the log of :func:`tilted_probs` at
    ``target``, so that softmax(alpha / temperature) is that distribution: the search then
    starts with its expected cost on the budget (``search.arch_init: budget``)."""
    probs = tilted_probs(table, target)
    with torch.no_grad():
        for alpha, name in zip(alphas, names, strict=True):
            log_p = torch.log(torch.as_tensor(probs[name], dtype=alpha.dtype))
            alpha.copy_(temperature * log_p)


def draw_ops(table: CostTable, rng: np.random.Generator,
             probs: dict[str, np.ndarray] | None = None) -> dict[str, str]:  # fmt: skip
    """One architecture of ``table``'s layers, each op drawn from ``probs`` (uniform without)."""
    return {name: list(ops)[int(rng.choice(len(ops), p=None if probs is None else probs[name]))]
            for name, ops in table.layers.items()}  # fmt: skip


class BandSampler:
    """Random architectures with cost in [low, high]: drawn from :func:`tilted_probs` at the
    band's centre (uniform for an open band, or with ``tilted=False``: then the draws are the
    uniform distribution conditioned on the band), computed once, rejected outside the band."""

    def __init__(self, table: CostTable, low: float, high: float, tilted: bool = True) -> None:
        self.table, self.low, self.high = table, low, high
        centred = tilted and np.isfinite(low) and np.isfinite(high)
        self.probs = tilted_probs(table, (low + high) / 2) if centred else None

    def holds(self, cost: float | np.ndarray) -> bool | np.ndarray:
        """Whether ``cost`` lies in the band, to the rounding of a sum (``COST_RTOL``): a
        vectorised sum and ``of_choices`` add the same costs in other orders."""
        slack = COST_RTOL * max(abs(self.low), abs(self.high)) if np.isfinite(self.high) else 0.0
        return (cost >= self.low - slack) & (cost <= self.high + slack)

    def acceptance(self, rng: np.random.Generator, n: int) -> float:
        """The fraction of ``n`` draws (all at once) that land in the band."""
        return float(np.mean(self.holds(self.costs(self.probe(rng, n)))))

    def distinct(self, rng: np.random.Generator, n: int) -> int:
        """How many different architectures ``n`` draws land in the band (a lower bound on
        the architectures it holds, near exact when it holds few)."""
        draws = self.probe(rng, n)
        landed = np.ascontiguousarray(draws[self.holds(self.costs(draws))])
        if landed.shape[1] == 0:  # nothing searchable: the one fixed net, if it lands
            return int(len(landed) > 0)
        rows = landed.view(np.dtype((np.void, landed.shape[1] * landed.itemsize)))
        return len(np.unique(rows))

    def probe(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws at once, before rejection: an (n, layers) array of op indices, in the
        smallest integer type that holds them (a million draws of 28 layers: 28 MB)."""
        layers = self.table.layers
        kind = np.min_scalar_type(max((len(ops) for ops in layers.values()), default=1))
        columns = [rng.choice(len(ops), size=n, p=None if self.probs is None else self.probs[name])
                   .astype(kind) for name, ops in layers.items()]  # fmt: skip
        return np.stack(columns, axis=1) if columns else np.zeros((n, 0), kind)

    def costs(self, draws: np.ndarray) -> np.ndarray:
        """The cost of every row of a :meth:`probe`."""
        total = np.full(len(draws), float(self.table.fixed))
        for j, ops in enumerate(self.table.layers.values()):
            total += np.array(list(ops.values()), dtype=np.float64)[draws[:, j]]
        return total

    def draw(self, rng: np.random.Generator, tries: int) -> dict[str, str] | None:
        """One architecture of the band; None after ``tries`` rejected draws."""
        for _ in range(tries):
            choices = draw_ops(self.table, rng, self.probs)
            if self.holds(self.table.of_choices(choices)):
                return choices
        return None


def sample_within(
    table: CostTable, rng: np.random.Generator, low: float, high: float, tries: int
) -> dict[str, str] | None:
    """One draw of :class:`BandSampler` (callers that draw many keep one sampler: its
    probabilities take a bisection to compute)."""
    return BandSampler(table, low, high).draw(rng, tries)
