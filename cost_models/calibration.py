"""Fitting a latency table's entries to whole-network timings while keeping it additive.

An op timed alone is not the same op inside a network: its input stays hot in cache across the
timing loop, and dispatch and memory traffic between ops cost time that no entry holds. How far
off it is depends mostly on the tensor sizes, so the entries of each input resolution of the
space get their own scale, and the network one overhead:

    measured_j ~ F + sum_g s_g * P_jg + c

Here P_jg is the sum of the entries of group g that architecture j picks. The groups are the
searchable layers' input resolutions (``128x128``, ``64x64``, ...). F, the stem, the fixed
layers and the head (``fixed``), is the same in every net, so a scale of its own could not be
told apart from the overhead c: it stays as timed, and c absorbs the difference. Finer groups,
one per op and resolution (36 scales for ``mbv2_pose_small``, as nn-Meter's per-kernel
predictors would suggest), fitted the noise of 100 measured nets no better under 5-fold
cross-validation (MAPE 2.2 vs 1.8 %) and swung between builds (one scale 0.38 in one build,
1.29 in the next). The fit is least squares on relative errors, since MAPE is what ``lut
check`` reports, with a small ridge pull of every scale towards 1 (RIDGE x N x share_g^2 x (s_g
- 1)^2 for N nets, so its strength does not depend on N) so that a group few samples inform
keeps its isolated timing. Scales are bounded to [0.2, 5]. The result stays a sum of per-op
entries, so Eq. 4-5 (the expected cost) stay linear in the op probabilities. Architectures held
out of the fit give its error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cost_models.fidelity import kendall_tau, mape

FIXED = "fixed"
SCALE_BOUNDS = (0.2, 5.0)
RIDGE = 0.002  # pull of each scale towards 1, relative to a group's share of the network time
MIN_RANKED = 5  # held-out nets needed before their Kendall tau is reported


@dataclass(frozen=True)
class Sample:
    """One whole network: the per-group sums of its table entries and its measured time."""

    parts: dict[str, float]
    measured_ms: float


@dataclass(frozen=True)
class Calibration:
    """Per-group scales, the overhead, and the fit's error on fitted and held-out nets (the
    last ``heldout_nets`` of the samples)."""

    scales: dict[str, float]
    overhead_ms: float
    fit_mape: float
    heldout_mape: float | None
    heldout_tau: float | None
    heldout_nets: int = 0

    def predict(self, parts: dict[str, float]) -> float:
        return sum(self.scales.get(g, 1.0) * ms for g, ms in parts.items()) + self.overhead_ms

    def to_dict(self) -> dict:
        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {"scales": {g: round(s, 5) for g, s in sorted(self.scales.items())},
                "overhead_ms": round(self.overhead_ms, 5), "fit_mape": rounded(self.fit_mape),
                "heldout_mape": rounded(self.heldout_mape),
                "heldout_tau": rounded(self.heldout_tau),
                "heldout_nets": self.heldout_nets}  # fmt: skip


def calibrate(samples: Sequence[Sample], lowest: dict[str, float],
              heldout_fraction: float = 0.25) -> Calibration:  # fmt: skip
    """Fit scales and overhead on the first samples, score the held-out rest, then refit on
    all of them (the held-out error is that of a fit that never saw those nets). ``lowest``
    is the per-group sum of the cheapest architecture: its prediction must stay positive."""
    if not samples:
        return Calibration({}, 0.0, 0.0, None, None)
    held = int(len(samples) * heldout_fraction) if len(samples) >= 8 else 0
    fitted, heldout = samples[: len(samples) - held], samples[len(samples) - held :]
    error = tau = None
    if heldout:
        first = _fit(fitted, lowest)
        pred = np.array([first.predict(s.parts) for s in heldout])
        real = np.array([s.measured_ms for s in heldout])
        error = mape(pred, real)
        if len(heldout) >= MIN_RANKED:  # a rank correlation of 2-4 nets says next to nothing
            tau = kendall_tau(pred, real)
    final = _fit(samples, lowest)
    return Calibration(final.scales, final.overhead_ms, final.fit_mape, error, tau, held)


def leave_one_out(samples: Sequence[Sample], lowest: dict[str, float]) -> np.ndarray:
    """Each sample's time as predicted by the scales and overhead fitted to all the others:
    how well the entries, fitted to nets measured with these, predict a net they did not see.
    ``lut check`` scores its nets so, to tell a table whose scales and overhead no longer fit
    the machine (the entries rank well once refitted) from one whose entries err."""
    return np.array([_fit([s for j, s in enumerate(samples) if j != i], lowest).predict(
        sample.parts) for i, sample in enumerate(samples)])  # fmt: skip


def _fit(samples: Sequence[Sample], lowest: dict[str, float]) -> Calibration:
    groups = sorted({g for s in samples for g in s.parts} - {FIXED})
    real = np.array([s.measured_ms for s in samples])
    fixed = np.array([s.parts.get(FIXED, 0.0) for s in samples])
    design = np.array([[s.parts.get(g, 0.0) for g in groups] + [1.0] for s in samples])
    weighted = design / real[:, None]  # relative errors
    target = (real - fixed) / real
    share = weighted[:, :-1].mean(axis=0)  # each group's mean share of a network's time
    pull = np.sqrt(RIDGE * len(samples)) * share
    ridge = np.diag(np.append(pull, 0.0))[:-1]
    a = np.vstack([weighted, ridge])
    b = np.concatenate([target, pull])
    low = [SCALE_BOUNDS[0]] * len(groups) + [-np.inf]
    high = [SCALE_BOUNDS[1]] * len(groups) + [np.inf]
    scales, overhead = _solve(a, b, low, high, groups)
    cheapest = sum(scales.get(g, 1.0) * ms for g, ms in lowest.items())
    if cheapest + overhead <= 0:  # a negative offset no cheap net could have: no offset
        low[-1] = 0.0
        scales, overhead = _solve(a, b, low, high, groups)
    fit = Calibration(scales, overhead, 0.0, None, None)
    pred = np.array([fit.predict(s.parts) for s in samples])
    return Calibration(scales, overhead, mape(pred, real), None, None)


def _solve(a: np.ndarray, b: np.ndarray, low: list[float], high: list[float],
           groups: list[str]) -> tuple[dict[str, float], float]:  # fmt: skip
    """Bounded least squares: (scale per group, overhead)."""
    import scipy.optimize  # here, not at import: seconds off every CLI start

    solution = scipy.optimize.lsq_linear(a, b, bounds=(low, high)).x
    return dict(zip(groups, solution[:-1].tolist(), strict=True)), float(solution[-1])
