"""How evenly a machine's changes of speed fall on different networks.

Builds and checks of a latency table divide the machine's speed out with one factor per pass
(the reference net's time, or the speed the nets of a pass shared), and ``lut check`` divides
the speed since the build out with one ratio: exact only if a machine that slows down slows
every net alike. ``speed_skew`` measures how far that holds on this machine, from many passes
of the same nets timed in turn (``benchmarks/speed_skew.py``): each net's slope of its log time
against its pass's shared speed (0 for all: even), whether those slopes are the nets' own
(split-half reliability), whether they follow the nets' size, and what they do to the ranking
that a check of a few passes sees in a slow spell against a fast one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats

from cost_models.fidelity import two_way_residuals
from cost_models.timing import shared_speeds

SPELLS = 3  # the passes cut by shared speed into the fastest third, ..., the slowest third


@dataclass(frozen=True)
class SpeedSkew:
    """What ``speed_skew`` found, of the nets (or ops) besides the reference net. Speeds are
    time factors against the median pass (1.5: nets took 1.5 times as long); a slope is the
    change of a net's log time, beyond its pass's shared speed, per unit of that speed's log
    (0: the net slows exactly as the others)."""

    passes: int
    speed_p10: float
    speed_p90: float
    slow_vs_fast: float  # the slowest third's median speed over the fastest third's
    slope_sd: float  # sd of the nets' slopes
    split_half_r: float  # correlation of slopes fitted on the even and on the odd passes
    size_r: float  # correlation of the slopes with the nets' log times
    explained: float  # share of the variance beyond net and pass levels that slopes explain
    shift_sd: float  # sd (%) of the nets' relative times, slowest third over fastest third
    tau_same_spell: float  # mean tau of two disjoint checks from one third (either end)
    tau_across_spells: float  # mean tau of a check from the fastest third against the slowest
    # mean tau of two disjoint checks drawn from all passes, each pass's level the nets'
    # shared speed (``shared_medians``), or the reference net's time in it
    tau_checks: float
    tau_checks_by_reference: float

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def slopes(log_ms: np.ndarray, speeds: np.ndarray) -> np.ndarray:
    """Each net's least-squares slope of its log time beyond its own and its pass's levels
    (``two_way_residuals``) against the passes' shared ``speeds``; their mean over the nets
    is 0 (the mean net slows as the pass does)."""
    centred = speeds - speeds.mean()
    return two_way_residuals(log_ms) @ centred / (centred**2).sum()


def _check_taus(log_ms: np.ndarray, first: np.ndarray, second: np.ndarray, check_passes: int,
                draws: int, rng: np.random.Generator,
                levels: Callable[[np.ndarray], np.ndarray]) -> float:  # fmt: skip
    """Mean Kendall tau between two checks of the nets (rows 1 on), each their median over
    ``check_passes`` passes drawn from ``first`` and from ``second`` (disjoint where the two
    are one set) once each pass's ``levels`` (of the check's passes) is taken out."""

    def check(picked: np.ndarray) -> np.ndarray:
        passes = log_ms[:, picked]
        return np.median(passes[1:] - levels(passes), axis=1)

    taus = []
    for _ in range(draws):
        if first is second:
            picked = rng.choice(first, 2 * check_passes, replace=False)
            a, b = picked[:check_passes], picked[check_passes:]
        else:
            a = rng.choice(first, check_passes, replace=False)
            b = rng.choice(second, check_passes, replace=False)
        taus.append(scipy.stats.kendalltau(check(a), check(b)).statistic)
    return float(np.mean(taus))


def _nets_speeds(passes: np.ndarray) -> np.ndarray:
    """The shared speeds of the nets (rows 1 on) alone, as ``shared_medians`` divides out."""
    return shared_speeds(passes[1:])


def _reference_level(passes: np.ndarray) -> np.ndarray:
    """The reference net's log time (row 0) as each pass's level, as a pass is scaled."""
    return passes[0]


def speed_skew(passes: Sequence[Sequence[float]], check_passes: int = 5, draws: int = 200,
               seed: int = 0) -> SpeedSkew | None:  # fmt: skip
    """The skew of ``passes[row][pass]`` (ms, the rows timed in turn pass after pass; row 0 the
    reference net, which is ranked in no check); None with fewer than 3 nets besides it or too
    few passes for two disjoint checks of ``check_passes`` in a third of them. Checks as
    ``lut check`` takes them: each net's median over its passes (``shared_medians``)."""
    everything = np.log(np.asarray(passes, dtype=float))
    if (everything.ndim != 2 or everything.shape[0] < 4
            or everything.shape[1] < 2 * SPELLS * check_passes):  # fmt: skip
        return None
    log_ms = everything[1:]
    count = log_ms.shape[1]
    speeds = shared_speeds(log_ms)
    slope = slopes(log_ms, speeds)
    even, odd = np.arange(0, count, 2), np.arange(1, count, 2)
    split = np.corrcoef(slopes(log_ms[:, even], speeds[even]),
                        slopes(log_ms[:, odd], speeds[odd]))[0, 1]  # fmt: skip
    centred = speeds - speeds.mean()
    resid = two_way_residuals(log_ms)
    explained = 1.0 - ((resid - np.outer(slope, centred)) ** 2).sum() / (resid**2).sum()
    order = np.argsort(speeds)
    third = count // SPELLS
    fast, slow = order[:third], order[-third:]
    shift = np.median(log_ms[:, slow], axis=1) - np.median(log_ms[:, fast], axis=1)
    rng = np.random.default_rng(seed)
    taus = functools.partial(_check_taus, everything, check_passes=check_passes, draws=draws,
                             rng=rng, levels=_nets_speeds)  # fmt: skip
    same = np.mean([taus(spell, spell) for spell in (fast, slow)])
    across = taus(fast, slow)
    anywhere = np.arange(count)
    return SpeedSkew(
        passes=count,
        speed_p10=float(np.exp(np.percentile(speeds, 10))),
        speed_p90=float(np.exp(np.percentile(speeds, 90))),
        slow_vs_fast=float(np.exp(np.median(speeds[slow]) - np.median(speeds[fast]))),
        slope_sd=float(slope.std(ddof=1)),
        split_half_r=float(split),
        size_r=float(np.corrcoef(slope, log_ms.mean(axis=1))[0, 1]),
        explained=float(explained),
        shift_sd=float(100 * shift.std(ddof=1)),
        tau_same_spell=float(same),
        tau_across_spells=across,
        tau_checks=taus(anywhere, anywhere),
        tau_checks_by_reference=taus(anywhere, anywhere, levels=_reference_level),
    )
