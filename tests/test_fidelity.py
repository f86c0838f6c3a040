"""The noise ceiling of a latency check (cost_models/fidelity.py), against simulated checks."""

import numpy as np
import pytest
import scipy.stats

from cost_models.fidelity import (
    NoiseCeiling,
    deleted_residuals,
    noise_ceiling,
    pass_sd,
    pass_slopes,
)
from cost_models.lut_commands import ranking_line

NETS, PASSES = 30, 5


def simulated_check(rng, truth, speed_sd, noise_sd, slow_rate=0.0, slow=0.25):
    """One check's passes (ms) of nets with log times ``truth``: every pass at a speed of its
    own, every net's time in it off by its own noise, and with probability ``slow_rate`` a
    timing ``slow`` (in log) slower (a heavy tail: another process took the CPU a while)."""
    speeds = speed_sd * rng.standard_normal(PASSES)
    noise = noise_sd * rng.standard_normal((NETS, PASSES))
    noise += slow * (rng.random((NETS, PASSES)) < slow_rate)
    return np.exp(truth[:, None] + speeds + noise)


def against_checks(truth, draw_passes, checks=60):
    """An exact table's Kendall tau and MAPE against ``checks`` checks drawn by ``draw_passes``
    (each net's median over its passes, the check's shared level divided out), and each
    check's own noise ceiling."""
    taus, mapes, ceilings = [], [], []
    for _ in range(checks):
        passes = draw_passes()
        measured = np.median(passes, axis=1)
        level = np.median(measured / np.exp(truth))
        taus.append(scipy.stats.kendalltau(truth, measured).statistic)
        mapes.append(100 * np.mean(np.abs(np.exp(truth) * level - measured) / measured))
        ceilings.append(noise_ceiling(passes, draws=400))
    return taus, mapes, ceilings


def test_pass_sd_is_unbiased_for_the_noise_beyond_the_shared_speeds():
    rng = np.random.default_rng(0)
    truth = np.log(60.0) + 0.1 * rng.standard_normal(NETS)
    variances = [pass_sd(np.log(simulated_check(rng, truth, 0.08, 0.04))) ** 2
                 for _ in range(400)]  # fmt: skip
    assert np.mean(variances) == pytest.approx(0.04**2, rel=0.03)  # (nets-1)(passes-1) df


@pytest.mark.parametrize("speed_sd, noise_sd", [(0.0, 0.04), (0.08, 0.04), (0.03, 0.015)])
def test_the_ceiling_is_an_exact_tables_tau_and_mape_against_such_checks(speed_sd, noise_sd):
    """Nets spread by 10 %: an exact table's Kendall tau and MAPE against many checks (each
    net's median over its passes, the check's shared level divided out) on average, and the
    ceiling estimated from one check at a time, on average, agree."""
    rng = np.random.default_rng(1)
    truth = np.log(60.0) + 0.1 * rng.standard_normal(NETS)
    taus, mapes, ceilings = against_checks(
        truth, lambda: simulated_check(rng, truth, speed_sd, noise_sd)
    )
    assert np.mean([c.kendall_tau for c in ceilings]) == pytest.approx(np.mean(taus), abs=0.02)
    assert np.mean([c.mape for c in ceilings]) == pytest.approx(np.mean(mapes), rel=0.08)
    assert np.mean([c.pass_sd for c in ceilings]) == pytest.approx(100 * noise_sd, rel=0.05)
    # and how far one check's tau falls from that average
    assert np.mean([c.kendall_tau_sd for c in ceilings]) == pytest.approx(np.std(taus), rel=0.3)


@pytest.mark.parametrize("slow_rate, tau_off", [(0.05, 0.03), (0.1, 0.05)])
def test_the_ceiling_holds_when_a_few_timings_are_far_off(slow_rate, tau_off):
    """Heavy-tailed noise (1.5 % normal, 5 or 10 % of timings 28 % slow): each net's median
    shrugs most outliers off, while they inflate the residual sd. Drawn from the check's own
    deleted residuals, the ceiling's tau is within 0.016 / 0.045 of an exact table's average
    and its MAPE 1.25 / 1.43x (simulated from a normal of ``pass_sd``, as before: 0.18 / 0.21
    low, MAPE 2.6-2.8x)."""
    rng = np.random.default_rng(3)
    truth = np.log(60.0) + 0.05 * rng.standard_normal(NETS)
    taus, mapes, ceilings = against_checks(
        truth, lambda: simulated_check(rng, truth, 0.03, 0.015, slow_rate)
    )
    assert np.mean([c.kendall_tau for c in ceilings]) == pytest.approx(np.mean(taus), abs=tau_off)
    assert 1.0 <= np.mean([c.mape for c in ceilings]) / np.mean(mapes) <= 1.5


@pytest.mark.parametrize("slope_sd, noise_sd", [(0.3, 0.02), (0.5, 0.03)])
def test_the_ceiling_holds_when_a_pass_slows_the_larger_nets_more(slope_sd, noise_sd):
    """Every pass with a slope of its own on the nets' levels (Mandel's bundle of lines: a
    spell of scarce memory bandwidth slows the larger nets more) and normal noise: the slopes
    reorder no net within a pass, and the ceiling, which fits them, is within 0.015 of an
    exact table's average tau (drawn from the two-way residuals alone it came out 0.03 / 0.05
    low, with the slopes counted as noise)."""
    rng = np.random.default_rng(5)
    truth = np.log(60.0) + 0.15 * rng.standard_normal(NETS)
    centred = truth - truth.mean()

    def sloped_check() -> np.ndarray:
        slopes = slope_sd * rng.standard_normal(PASSES)
        # their mean would be a slope of the whole check, which one check cannot tell from the
        # nets' own levels (as its shared speed from the machine's): each check's sums to 0
        sloped = np.outer(centred, slopes - slopes.mean())
        return np.exp(truth[:, None] + sloped + noise_sd * rng.standard_normal((NETS, PASSES)))

    taus, mapes, ceilings = against_checks(truth, sloped_check)
    assert np.mean([c.kendall_tau for c in ceilings]) == pytest.approx(np.mean(taus), abs=0.015)
    assert np.mean([c.mape for c in ceilings]) == pytest.approx(np.mean(mapes), rel=0.15)


def test_pass_slopes_are_each_pass_s_slope_on_the_nets_levels():
    levels = np.array([-0.2, -0.1, 0.0, 0.05, 0.25])
    slopes = np.array([0.4, -0.1, -0.3])  # they sum to 0: their mean is in the nets' levels
    speeds = np.array([0.0, 0.2, -0.1])
    log_ms = 3.0 + levels[:, None] + speeds + np.outer(levels, slopes)
    assert pass_slopes(log_ms) == pytest.approx(slopes)
    assert not pass_slopes(log_ms[:2]).any()  # 2 nets: nothing left to fit a slope to
    assert not pass_slopes(np.zeros((4, 3))).any()  # nets all of one level


def test_deleted_residuals_keep_normal_noise_at_its_sd_and_an_outlier_in_its_cell():
    rng = np.random.default_rng(4)
    for nets in (3, 10, 4000):
        for passes in (2, 3, 5):
            draws = [deleted_residuals(0.02 * rng.standard_normal((nets, passes)))
                     for _ in range(12000 // nets)]  # fmt: skip
            assert np.sqrt(np.mean(np.square(draws))) == pytest.approx(0.02, rel=0.03)
    log_ms = np.zeros((30, 5))
    log_ms[7, 2] = 0.3  # one timing far off
    resid = deleted_residuals(log_ms)
    assert resid[7, 2] > 0.2 and np.abs(np.delete(resid.ravel(), 7 * 5 + 2)).max() < 0.02


def test_the_ceiling_falls_with_noise_and_ignores_a_speed_shared_by_all_nets():
    rng = np.random.default_rng(2)
    truth = np.log(60.0) + 0.1 * rng.standard_normal(NETS)
    base = rng.standard_normal((NETS, PASSES))
    quiet, noisy = (noise_ceiling(np.exp(truth[:, None] + sd * base)) for sd in (0.01, 0.05))
    assert 1.0 > quiet.kendall_tau > noisy.kendall_tau > 0.5
    assert 0.0 < quiet.mape < noisy.mape
    # the same passes, each at another speed of the whole machine: the same noise
    sped = noise_ceiling(np.exp(truth[:, None] + 0.05 * base + [0.0, 0.2, -0.1, 0.05, 0.3]))
    assert sped.pass_sd == pytest.approx(noisy.pass_sd)
    exact = noise_ceiling(np.exp(truth[:, None] + np.zeros(PASSES)))
    exact_figures = (exact.kendall_tau, exact.mape, exact.pass_sd, exact.kendall_tau_sd)
    assert exact_figures == pytest.approx((1.0, 0.0, 0.0, 0.0), abs=1e-9)


def test_no_ceiling_without_two_passes_or_two_nets():
    assert noise_ceiling([[10.0], [12.0]]) is None
    assert noise_ceiling([[10.0, 11.0, 9.0]]) is None


def test_a_check_s_tau_is_read_in_sds_of_its_ceiling():
    """``tau_gap``: (tau - ceiling) / the ceiling's check-to-check sd; ``lut check`` calls a
    tau more than 2 of them below the ceiling the table's own error. The figures are the
    large-space check of 2026-12-06 on a family-25 EPYC (docs/benchmarks.md)."""
    ceiling = NoiseCeiling(kendall_tau=0.7744, mape=3.056, pass_sd=6.584, kendall_tau_sd=0.0419)
    assert ceiling.tau_gap(0.646) == pytest.approx(-3.064, abs=1e-3)
    assert ceiling.tau_gap(0.80) == pytest.approx(0.611, abs=1e-3)
    assert NoiseCeiling(0.9, 1.0, 0.0, 0.0).tau_gap(0.8) is None  # nothing to scale by
    assert ceiling.tau_gap(float("nan")) is None
    below = {"kendall_tau": 0.646, "tau_vs_ceiling_sds": -3.07, "speed_vs_build": 1.2764}
    assert ranking_line(below) == (
        "ranking: tau 0.646 is 3.1 sd below the noise ceiling: the table ranks these nets "
        "otherwise than they run now, beyond this check's noise (the machine took 1.28x as long "
        "as at the build); build it again while the machine is steady"
    )
    within = ranking_line({"kendall_tau": 0.784, "tau_vs_ceiling_sds": 1.48})
    assert within == (
        "ranking: tau 0.784 is +1.5 sd from the noise ceiling, not below it beyond "
        "noise: the table ranks these nets as well as these measurements can tell"
    )
    above = ranking_line({"kendall_tau": 0.903, "tau_vs_ceiling_sds": 2.52})
    assert above.startswith("ranking: tau 0.903 is +2.5 sd from the noise ceiling, not below")
    at_the_bound = ranking_line({"kendall_tau": 0.7, "tau_vs_ceiling_sds": -2.0})
    assert at_the_bound.startswith("ranking: tau 0.700 is -2.0 sd from")  # the bound is noise
    assert ranking_line({"kendall_tau": 0.7, "tau_vs_ceiling_sds": None}) is None
    # the entries, refitted to the other checked nets, within noise of the ceiling: the table's
    # calibration is another spell's, and a refit (not a build) is the remedy
    refit = {"kendall_tau": 0.741, "mape": 2.1, "tau_vs_ceiling_sds": -0.8, "recalibratable": True}
    assert ranking_line(below | {"refit": refit, "recalibrated": True}) == (
        "ranking: tau 0.646 is 3.1 sd below the noise ceiling: the table ranks these nets "
        "otherwise than they run now, beyond this check's noise (the machine took 1.28x as long "
        "as at its last recalibration); but its entries, with scales and overhead refitted to "
        "the other checked nets, rank them at tau 0.741 (-0.8 sd): the entries hold, and the "
        "scales and overhead fitted at its last recalibration do not fit the machine now; refit "
        "them here with 'dnas lut recalibrate'"
    )
    # the refit as far below, none, or a table that lut recalibrate cannot refit: a build
    for other in ({"tau_vs_ceiling_sds": -2.7}, {"tau_vs_ceiling_sds": None},
                  {"recalibratable": False}):  # fmt: skip
        assert ranking_line(below | {"refit": refit | other}) == ranking_line(below)
    assert ranking_line(below | {"refit": None}) == ranking_line(below)
