"""Latency-table calibration: per-group scales and an overhead fitted to whole networks."""

from __future__ import annotations

import numpy as np
import pytest

from cost_models.calibration import FIXED, SCALE_BOUNDS, Sample, calibrate, leave_one_out


def synthetic(n: int, scales: dict[str, float], overhead: float, fixed: float = 2.0,
              seed: int = 0, noise: float = 0.0) -> list[Sample]:  # fmt: skip
    """Networks whose searchable parts are random, with the same fixed part, timed exactly as
    the model says (+ noise): fixed + sum_g s_g * parts_g + overhead."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        parts = {g: float(rng.uniform(0.5, 3.0)) for g in scales}
        ms = fixed + sum(scales[g] * p for g, p in parts.items()) + overhead
        samples.append(Sample(parts | {FIXED: fixed},
                              ms * (1 + noise * float(rng.standard_normal()))))  # fmt: skip
    return samples


def test_recovers_the_scales_and_overhead_of_exact_timings():
    truth = {"64x64": 0.8, "32x32": 1.4, "16x16": 1.0}
    fit = calibrate(synthetic(40, truth, 0.6), lowest={FIXED: 2.0})
    for group, scale in truth.items():  # the ridge pull towards 1 biases only slightly
        assert fit.scales[group] == pytest.approx(scale, abs=0.03), group
    assert FIXED not in fit.scales  # the same in every net: not told apart from the overhead
    assert fit.overhead_ms == pytest.approx(0.6, abs=0.15)
    assert fit.fit_mape < 0.5 and fit.heldout_mape < 0.5 and fit.heldout_tau > 0.95
    parts = {FIXED: 2.0, "64x64": 1.0}
    assert fit.predict(parts) == pytest.approx(2.0 + fit.scales["64x64"] + fit.overhead_ms)


def test_too_few_held_out_nets_give_no_rank_correlation():
    """8 nets hold out 2: their Kendall tau is +-1 by construction, so none is reported."""
    fit = calibrate(synthetic(8, {"64x64": 1.0}, 0.5), lowest={FIXED: 2.0})
    assert fit.heldout_mape is not None and fit.heldout_tau is None
    assert calibrate(synthetic(20, {"64x64": 1.0}, 0.5), lowest={FIXED: 2.0}).heldout_tau


def test_the_ridge_pull_does_not_depend_on_the_number_of_nets():
    """With noiseless data every fit lands on the truth; the ridge bias is the same at 20 and
    at 80 nets (it is RIDGE x N x share^2 against N residuals)."""
    truth = {"64x64": 0.5, "32x32": 1.5}
    few = calibrate(synthetic(20, truth, 0.0), lowest={}, heldout_fraction=0)
    many = calibrate(synthetic(80, truth, 0.0, seed=1), lowest={}, heldout_fraction=0)
    for group in truth:
        assert few.scales[group] == pytest.approx(many.scales[group], abs=0.01), group


def test_a_quarter_is_held_out_and_the_final_fit_uses_every_sample():
    truth = {"a": 2.0}
    samples = synthetic(20, truth, 0.0, noise=0.02)
    fit = calibrate(samples, lowest={FIXED: 2.0})
    refit = calibrate(samples[:15], lowest={FIXED: 2.0})  # what scored the 5 held out
    pred = np.array([refit.predict(s.parts) for s in samples[15:]])
    real = np.array([s.measured_ms for s in samples[15:]])
    assert fit.heldout_mape == pytest.approx(100 * np.mean(np.abs(pred - real) / real))
    assert fit.heldout_nets == 5 and fit.to_dict()["heldout_nets"] == 5  # the last 5
    assert fit.scales != refit.scales  # refitted on all 20
    few = calibrate(samples[:5], lowest={})
    assert few.heldout_mape is None and few.heldout_nets == 0  # too few to hold any out


def test_scales_are_bounded_and_the_cheapest_net_stays_positive():
    # timings that would want a scale of 10 and a large negative offset
    samples = [Sample({"a": p}, 10.0 * p - 9.0) for p in (1.0, 1.2, 1.4, 1.6, 1.8)]
    fit = calibrate(samples, lowest={"a": 0.1})
    assert SCALE_BOUNDS[0] <= fit.scales["a"] <= SCALE_BOUNDS[1]
    assert fit.predict({"a": 0.1}) > 0
    assert calibrate([], lowest={}).scales == {}


def test_leave_one_out_predicts_each_net_from_a_fit_on_the_others():
    """Exact timings: every net predicted as timed. One net timed 3x too slow: its own
    prediction comes from the others and stays near the truth, and so it shows the whole error,
    where a fit that saw it would have moved towards it."""
    truth = {"64x64": 0.7, "32x32": 1.3}
    samples = synthetic(12, truth, 0.4)
    exact = np.array([s.measured_ms for s in samples])
    assert leave_one_out(samples, {FIXED: 2.0}) == pytest.approx(exact, rel=0.01)
    slow = [*samples[:-1], Sample(samples[-1].parts, 3 * samples[-1].measured_ms)]
    pred = leave_one_out(slow, {FIXED: 2.0})
    assert pred[-1] == pytest.approx(exact[-1], rel=0.01)
    seen = calibrate(slow, {FIXED: 2.0}, heldout_fraction=0).predict(slow[-1].parts)
    assert seen > 1.02 * exact[-1]  # pulled 3 % towards the slow timing
    by_hand = calibrate(slow[1:], {FIXED: 2.0}, heldout_fraction=0).predict(slow[0].parts)
    assert pred[0] == pytest.approx(by_hand)
