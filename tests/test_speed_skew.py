"""How evenly a machine's changes of speed fall on nets (cost_models/speed_skew.py), on
simulated passes whose skew is known."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from cost_models.speed_skew import slopes, speed_skew

NETS, PASSES = 30, 90


def simulated_passes(rng, bends, noise_sd=0.03, speed_sd=0.2):
    """``passes[net][pass]`` (ms) of nets of 20-40 ms, the first standing for the reference
    net, whose log time moves with their pass's shared log speed times ``1 + bends(levels)``
    (the nets' log sizes less their mean): 0, every net alike."""
    levels = np.log(rng.uniform(20.0, 40.0, NETS))
    bent = bends(levels - levels.mean())
    speeds = speed_sd * rng.standard_normal(PASSES)
    log_ms = levels[:, None] + np.outer(1.0 + bent, speeds)
    return np.exp(log_ms + noise_sd * rng.standard_normal((NETS, PASSES))), bent, speeds


def by_size(sizes):
    """Small nets slow down more than large ones (as the 2-core EPYC VMs' nets did)."""
    return -0.5 * sizes


def test_slopes_are_the_nets_own_bends_less_their_mean():
    rng = np.random.default_rng(0)
    passes, bends, speeds = simulated_passes(rng, by_size, noise_sd=0.0)
    assert slopes(np.log(passes), speeds) == pytest.approx(bends - bends.mean(), abs=1e-12)


def test_a_slow_down_that_follows_size_is_found_but_keeps_the_ranking():
    """Slopes set by the nets' size stretch or squeeze their times in a slow spell without
    reordering them: a check in a slow spell ranks as one in a fast spell does."""
    rng = np.random.default_rng(1)
    passes, bends, _ = simulated_passes(rng, by_size)
    skew = speed_skew(passes)
    assert skew.passes == PASSES
    assert skew.slope_sd == pytest.approx(bends[1:].std(ddof=1), rel=0.2)
    assert skew.split_half_r > 0.8 and skew.size_r < -0.8 and skew.explained > 0.15
    # between the thirds' median speeds the nets' relative times move by the bends times that
    gap = np.log(skew.slow_vs_fast)
    assert skew.shift_sd == pytest.approx(100 * gap * bends[1:].std(ddof=1), rel=0.25)
    assert skew.speed_p10 < 1.0 < skew.speed_p90
    assert skew.tau_across_spells == pytest.approx(skew.tau_same_spell, abs=0.02)


def test_a_slow_down_of_the_nets_own_reorders_them_across_spells():
    rng = np.random.default_rng(2)
    own = 0.1 * rng.standard_normal(NETS)
    passes, bends, _ = simulated_passes(rng, lambda sizes: own)
    skew = speed_skew(passes)
    assert skew.slope_sd == pytest.approx(bends[1:].std(ddof=1), rel=0.2)
    assert skew.split_half_r > 0.8 and abs(skew.size_r) < 0.5
    assert skew.tau_across_spells < skew.tau_same_spell - 0.03


def test_an_even_slow_down_shows_no_skew():
    rng = np.random.default_rng(3)
    passes, _, _ = simulated_passes(rng, lambda sizes: 0.0 * sizes)
    skew = speed_skew(passes)
    assert abs(skew.split_half_r) < 0.5 and abs(skew.size_r) < 0.5 and skew.explained < 0.05
    # what is left of the slopes is the noise's: sd 0.03 over the speeds' spread
    assert skew.slope_sd < 0.03
    assert skew.tau_across_spells == pytest.approx(skew.tau_same_spell, abs=0.02)


def test_too_few_passes_or_nets_give_nothing():
    rng = np.random.default_rng(4)
    passes, _, _ = simulated_passes(rng, by_size)
    assert speed_skew(passes[:, :29]) is None  # two checks of 5 in a third need 30
    assert speed_skew(passes[:3]) is None  # the reference net and two nets
    assert speed_skew(passes[:, :30]) is not None


def test_checks_levelled_by_every_net_agree_better_than_by_the_reference_alone():
    """Each pass levelled by the one reference net's time carries that net's own noise to
    every net of the pass; levelled by the nets' shared speed (``shared_medians``) it does not,
    so two checks agree better."""
    rng = np.random.default_rng(5)
    passes, _, _ = simulated_passes(rng, lambda sizes: 0.0 * sizes, noise_sd=0.05)
    skew = speed_skew(passes)
    assert skew.tau_checks > skew.tau_checks_by_reference + 0.008  # 0.880 against 0.866


def test_the_benchmark_times_a_checks_nets_in_turn_and_says_when_it_ran_too_short(tmp_path):
    """``make bench-skew`` as a user runs it, for a moment: every row timed each pass, the
    passes saved, and one line saying why no skew came out of so few."""
    saved = tmp_path / "passes.npy"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed_skew.py"), "--input",
                          "32", "--samples", "3", "--minutes", "0.01", "--save", str(saved)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["skew"] is None and list(report["ms"]) == [
        "reference net", "network 1", "network 2", "network 3"]  # fmt: skip
    passes = np.load(saved)
    assert passes.shape[0] == 4 and passes.shape[1] >= 1 and (passes > 0).all()
    assert "too few" in run.stderr and "--minutes" in run.stderr
