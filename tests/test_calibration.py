"""Latency-table calibration: per-group scales and an overhead fitted to whole networks."""

from __future__ import annotations

import numpy as np
import pytest

from cost_models.calibration import FIXED, SCALE_BOUNDS, Sample, calibrate


def synthetic(n: int, scales: dict[str, float], overhead: float, seed: int = 0,
              noise: float = 0.0) -> list[Sample]:  # fmt: skip
    """Networks whose parts are random and whose time follows the model exactly (+ noise)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        parts = {g: float(rng.uniform(0.5, 3.0)) for g in scales}
        ms = sum(scales[g] * p for g, p in parts.items()) + overhead
        samples.append(Sample(parts, ms * (1 + noise * float(rng.standard_normal()))))
    return samples


def test_recovers_the_scales_and_overhead_of_exact_timings():
    truth = {FIXED: 1.1, "k3e3@64x64": 0.8, "k7e6@32x32": 1.4, "skip@16x16": 1.0}
    fit = calibrate(synthetic(40, truth, 0.6), lowest={FIXED: 1.0})
    for group, scale in truth.items():  # the ridge pull towards 1 biases only slightly
        assert fit.scales[group] == pytest.approx(scale, abs=0.03), group
    assert fit.overhead_ms == pytest.approx(0.6, abs=0.15)
    assert fit.fit_mape < 0.5 and fit.heldout_mape < 0.5 and fit.heldout_tau > 0.95
    parts = {FIXED: 2.0, "k3e3@64x64": 1.0}
    expected = fit.scales[FIXED] * 2.0 + fit.scales["k3e3@64x64"] + fit.overhead_ms
    assert fit.predict(parts) == pytest.approx(expected)


def test_a_quarter_is_held_out_and_the_final_fit_uses_every_sample():
    truth = {FIXED: 1.0, "a": 2.0}
    samples = synthetic(20, truth, 0.0, noise=0.02)
    fit = calibrate(samples, lowest={FIXED: 0.5})
    refit = calibrate(samples[:15], lowest={FIXED: 0.5})  # what scored the 5 held out
    pred = np.array([refit.predict(s.parts) for s in samples[15:]])
    real = np.array([s.measured_ms for s in samples[15:]])
    assert fit.heldout_mape == pytest.approx(100 * np.mean(np.abs(pred - real) / real))
    assert fit.scales != refit.scales  # refitted on all 20
    assert calibrate(samples[:5], lowest={}).heldout_mape is None  # too few to hold any out


def test_scales_are_bounded_and_the_cheapest_net_stays_positive():
    # timings that would want a scale of 10 and a large negative offset
    samples = [Sample({"a": p}, 10.0 * p - 9.0) for p in (1.0, 1.2, 1.4, 1.6, 1.8)]
    fit = calibrate(samples, lowest={"a": 0.1})
    assert SCALE_BOUNDS[0] <= fit.scales["a"] <= SCALE_BOUNDS[1]
    assert fit.predict({"a": 0.1}) > 0
    assert calibrate([], lowest={}).scales == {}
