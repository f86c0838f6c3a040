"""What a latency check can show on this machine: the noise ceiling of its own measurements.

A table without any error would still not reach Kendall tau 1 or MAPE 0 against measured times
that carry noise of their own. ``noise_ceiling`` estimates that noise from the passes of the
check (each net is timed once per pass and kept as its median over the passes) and gives the
tau and MAPE an error-free table would get against such measurements on average, so that a
check's figures are read against what the machine allows: the "noise ceiling" of model
evaluation against noisy data (Lage-Castellanos et al., PLoS Comput. Biol. 15(3), 2019, whose
Monte Carlo estimate this follows).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000  # simulated checks; the ceiling's own Monte Carlo error is then under 0.005
CHUNK = 100  # draws scored at a time: memory grows with the square of the nets checked
MEDIAN_DRAWS = 1 << 16  # Monte Carlo draws behind ``median_variance``
MEDIAN_EXACT_UP_TO = 64  # passes - 1 up to which ``median_variance`` is simulated
# a check's tau this many of its ceiling's sds below the ceiling: an error-free table gets that
# about once in 40 checks (a normal tail), so the table's own ranking is wrong
BELOW_CEILING_SDS = 2.0
SLOPES_P = 0.01  # passes' slopes (``pass_slopes``) kept where noise gives such ones this rarely


@dataclass(frozen=True)
class NoiseCeiling:
    """The tau and MAPE (%) an error-free table would get on average against these
    measurements (the MAPE with the machine's level divided out), the sd of that tau from one
    such check to the next, and the sd (%) of a net's time from pass to pass beyond the speed
    that the other nets of its pass shared (how noisy the check was; the simulated checks
    draw from the residuals themselves, ``deleted_residuals``)."""

    kendall_tau: float
    mape: float
    pass_sd: float
    kendall_tau_sd: float

    def to_dict(self) -> dict[str, float]:
        return {"kendall_tau": round(self.kendall_tau, 4), "mape": round(self.mape, 3),
                "pass_sd": round(self.pass_sd, 3),
                "kendall_tau_sd": round(self.kendall_tau_sd, 4)}  # fmt: skip

    def tau_gap(self, tau: float) -> float | None:
        """How many of the ceiling's check-to-check sds ``tau`` lies above it (negative:
        below); None where an error-free table's tau would not vary (nothing to scale by)."""
        if not self.kendall_tau_sd > 0 or math.isnan(tau):
            return None
        return (tau - self.kendall_tau) / self.kendall_tau_sd


def pass_sd(log_ms: np.ndarray) -> float:
    """The sd of a net's log time in one pass that is neither the net's own level nor the
    pass's (a speed every net of the pass shared): the residual mean square of the two-way
    additive model ``log t[net, pass] = net + pass + noise`` on (nets - 1)(passes - 1) degrees
    of freedom, whose square is unbiased for the noise's variance."""
    nets, passes = log_ms.shape
    return math.sqrt(float((two_way_residuals(log_ms) ** 2).sum()) / ((nets - 1) * (passes - 1)))


def two_way_residuals(log_ms: np.ndarray) -> np.ndarray:
    """``log_ms[net, pass]`` less its net's and its pass's means (plus the grand mean): what
    neither a net's own level nor a speed its pass shared explains."""
    return log_ms - log_ms.mean(1, keepdims=True) - log_ms.mean(0, keepdims=True) + log_ms.mean()


@functools.cache
def median_variance(m: int) -> float:
    """The variance of the median of ``m`` standard normal draws: no closed form for small
    ``m``, so a fixed Monte Carlo estimate (about 1 % off) up to ``MEDIAN_EXACT_UP_TO``, then
    the large-sample pi / (2 m) (a few % off there, on a term of under 0.025)."""
    if m > MEDIAN_EXACT_UP_TO:
        return math.pi / (2 * m)
    draws = np.random.default_rng(0).standard_normal((MEDIAN_DRAWS, m))
    return float(np.median(draws, axis=1).var())


def net_levels(log_ms: np.ndarray) -> np.ndarray:
    """Each net's mean log time less the grand mean: its level in the two-way model."""
    return log_ms.mean(1) - log_ms.mean()


def pass_slopes(log_ms: np.ndarray) -> np.ndarray:
    """Each pass's slope on the nets' levels beyond the speed its nets shared (Mandel's "bundle
    of lines", J. Mandel, JASA 56, 1961): a pass that slowed the larger nets more than the
    smaller ones, as a spell of scarce memory bandwidth does. Such a slope moves the nets of
    its pass in the order of their levels, so it reorders none. Zeros where Mandel's F test
    finds no more than noise would give (p above ``SLOPES_P``; least-squares slopes fitted to
    noise alone, or to a few timings far off, would shift noise between cells), with fewer
    than 3 nets (nothing left to fit them to) or with nets all of one level."""
    nets, passes = log_ms.shape
    levels = net_levels(log_ms)
    spread = float((levels**2).sum())
    if nets < 3 or spread == 0.0:
        return np.zeros(passes)
    resid = two_way_residuals(log_ms)
    slopes = resid.T @ levels / spread
    explained = float((slopes**2).sum()) * spread
    rest = float((resid**2).sum()) - explained
    if rest > 0.0:  # Mandel's F test: slopes that noise alone would give are left out
        import scipy.stats  # here, not at import: scipy.stats adds seconds to a CLI start

        f = (explained / (passes - 1)) / (rest / ((nets - 2) * (passes - 1)))
        if scipy.stats.f.sf(f, passes - 1, (nets - 2) * (passes - 1)) > SLOPES_P:
            return np.zeros(passes)
    return slopes


def deleted_residuals(log_ms: np.ndarray) -> np.ndarray:
    """Each net's log time in each pass, its pass's shared speed taken out, against the median
    of the same net's other passes: a timing far off stays in its own cell (the two-way fit's
    residuals spread a share of it over its net's and its pass's other timings, so that a
    machine with a few far-off timings looks noisy everywhere). Scaled so that normal noise of
    sd s gives residuals of sd s: the pass's mean over the nets takes 1/nets of each timing's
    noise variance, and the median of the others adds its own."""
    nets, passes = log_ms.shape
    x = log_ms - log_ms.mean(0)
    others = np.stack([np.median(np.delete(x, j, axis=1), axis=1) for j in range(passes)], 1)
    scale = math.sqrt(nets / (nets - 1) / (1.0 + median_variance(passes - 1)))
    return (x - others) * scale


def noise_ceiling(passes: Sequence[Sequence[float]], draws: int = DRAWS,
                  seed: int = 0) -> NoiseCeiling | None:  # fmt: skip
    """The noise ceiling of measurements ``passes[net][pass]`` (ms) that a check keeps as each
    net's median over its passes; None with fewer than 2 nets or 2 passes. The two-way model
    of ``pass_sd`` is fitted to the log times with each pass's slope on the nets' levels
    (``pass_slopes``), and ``draws`` checks are simulated the way this one was measured: every
    pass at its fitted speed and slope, each net's time in it off by one of this check's own
    ``deleted_residuals`` beyond the slopes drawn at random (a residual bootstrap: a machine whose
    timings are now and then far off, heavy-tailed rather than normal, is simulated as it is,
    and the medians' robustness to that counts), each net kept as its median. Each simulated
    check is scored as ``lut check`` scores a table, here a table that predicts the measured
    medians exactly (they stand in for the true times; their gaps are a little wider, so the
    tau is a little optimistic), after the speed the check shared as a whole is divided out
    (the machine's level, which ``lut check`` reports apart). Where a tenth of the timings or
    more are far off, the ceiling still comes out low (tau by up to about 0.05)."""
    log_ms = np.log(np.asarray(passes, dtype=float))
    if log_ms.ndim != 2 or log_ms.shape[0] < 2 or log_ms.shape[1] < 2:
        return None
    sd = pass_sd(log_ms)
    speeds = log_ms.mean(0) - log_ms.mean()  # each pass's shared speed, in log
    slopes = pass_slopes(log_ms)
    truth = np.median(log_ms, axis=1)
    nets = log_ms.shape[0]
    # the residuals beyond each pass's slope, which took one more degree of freedom a pass
    beyond = log_ms - np.outer(net_levels(log_ms), slopes)
    fitted = math.sqrt((nets - 1) / (nets - 2)) if slopes.any() else 1.0
    residuals = fitted * deleted_residuals(beyond).ravel()
    noise = np.random.default_rng(seed).choice(residuals, size=(draws, *log_ms.shape))
    # each pass at its speed and slope, the slope on the medians that stand for the true times
    # (on the nets' means instead, a check with slopes of sd 0.5 came out 0.019 low, not 0.013)
    sloped = speeds + np.outer(truth - truth.mean(), slopes)
    errors = np.median(sloped + noise, axis=2)  # draws x nets: each median's error
    errors -= np.median(errors, axis=1, keepdims=True)  # the check's shared level
    i, j = np.triu_indices(len(truth), 1)
    untied = truth[i] != truth[j]  # as Kendall's tau-b, a tie counts for neither order
    i, j = i[untied], j[untied]
    gaps = truth[i] - truth[j]
    taus = np.concatenate([  # each draw's tau
        (np.sign(gaps + e[:, i] - e[:, j]) * np.sign(gaps)).mean(1)
        for e in np.split(errors, range(CHUNK, draws, CHUNK))
    ]) if untied.any() else np.full(draws, np.nan)  # fmt: skip
    error = 100 * float(np.abs(1.0 - np.exp(-errors)).mean())
    return NoiseCeiling(float(taus.mean()), error, 100 * sd, float(taus.std()))


def tau_vs_ceiling(tau: float, ceiling: NoiseCeiling | None) -> float | None:
    """How many of the noise ceiling's standard deviations ``tau`` lies from its tau, signed
    (negative: below the ceiling), to 2 decimals as reports record it; None without a ceiling,
    a spread or a tau (nan: fewer than 2 nets)."""
    gap = ceiling.tau_gap(tau) if ceiling else None
    return round(gap, 2) if gap is not None else None


def kendall_tau(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Kendall's tau of predicted against measured times (nan for fewer than 2)."""
    if len(measured) < 2:
        return float("nan")
    import scipy.stats  # here, not at import: scipy.stats adds seconds to every CLI start

    return float(scipy.stats.kendalltau(predicted, measured).statistic)


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured``."""
    return float(100 * np.mean(np.abs(predicted - measured) / measured))
