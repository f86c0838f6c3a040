"""Seed agreement of searches (dnas.search.agreement, ``dnas agreement``): the share of layers two
derived nets agree on, chance from budget-matched random pairs, and the CLI on real runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from dnas import checkpoint
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.errors import DnasError
from dnas.search.agreement import NOISE_ONLY, chance_agreement, mean_agreement, op_agreement
from dnas.search.bounds import check_band, check_chance_samples
from dnas.search.budget import tilted_probs
from dnas.search.cost_model import get_cost_model
from dnas.search.run import run_search
from dnas.space.graph import load_space


def test_op_agreement_is_the_share_of_equal_layers():
    a = {"l1": "k3e3", "l2": "skip", "l3": "k5e6", "l4": "k3e6"}
    assert op_agreement(a, a) == 1.0
    assert op_agreement(a, {**a, "l2": "k3e3", "l4": "skip"}) == 0.5
    b, c = {**a, "l1": "skip"}, {**a, "l1": "skip", "l2": "k3e3"}
    assert mean_agreement([a, b, c]) == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    with pytest.raises(DnasError, match="different searchable layers"):
        op_agreement(a, {"l1": "k3e3"})


def test_the_bounds_take_numbers_of_any_kind_and_nothing_else():
    """numpy's scalars pass as Python's do (a band read from an array); bools, strings and NaN
    do not, nor anything outside the CLI's --band and --samples bounds."""
    for band in (0.001, 1, 0.03, np.float32(0.03), np.float64(0.5)):
        check_band(band, "agreement")
    for samples in (10, 200, np.int64(200), np.int32(10)):
        check_chance_samples(samples, "agreement")
    for band in (0.0009, 1.01, float("nan"), True, "0.03", None):
        with pytest.raises(DnasError, match="agreement: expected band in 0.001..1"):
            check_band(band, "agreement")
    for samples in (9, 10.0, True, np.float64(20)):
        with pytest.raises(DnasError, match="agreement: expected samples >= 10"):
            check_chance_samples(samples, "agreement")


def test_chance_is_the_collision_rate_of_the_budget_sampler():
    """Where the band excludes nothing, every draw comes from the maximum-entropy sampler at
    the cost, so the expected agreement per layer is sum_op p^2 (two independent draws)."""
    table = get_cost_model("flops").table(load_space("mbv2_pose_small"), (64, 64), 14)
    low, high = table.cost_range()
    cost = low + 0.4 * (high - low)
    probs = tilted_probs(table, cost)
    expected = float(np.mean([float(p @ p) for p in probs.values()]))
    mean, sd = chance_agreement(table, cost, band=100.0, samples=600, seed=3)
    assert abs(mean - expected) < 3 * sd / np.sqrt(600) + 1e-9
    # the mean over the 6 pairs of 4 runs has the same expectation and a smaller spread
    mean4, sd4 = chance_agreement(table, cost, band=100.0, samples=300, seed=4, runs=4)
    assert abs(mean4 - expected) < 3 * sd4 / np.sqrt(300) + 1e-9
    assert sd4 < 0.75 * sd
    uniform = 1 / np.mean([len(ops) for ops in table.layers.values()])
    assert abs(expected - uniform) > 0.005  # the sampler is tilted: uniform would differ
    # inside a 3 % band the budget constrains the draws: a different (and seeded) figure
    again = chance_agreement(table, cost, band=0.03, samples=50, seed=3)
    assert again == chance_agreement(table, cost, band=0.03, samples=50, seed=3)


def test_cli_compares_real_searches_and_rejects_mismatches(tmp_path, real_mpii_root):
    runs = {}
    for name, seed, size in (("s0", 0, 64), ("s1", 1, 64), ("big", 0, 96)):
        exp = write_experiment(tmp_path / f"{name}.yaml", real_mpii_root, TINY_SPACE,
                               seed=seed, input_size=[size, size])  # fmt: skip
        run_search(load_experiment(exp), tmp_path / name, Reporter(lambda _: None))
        runs[name] = str(tmp_path / name)
    twice = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["s0"]])
    assert twice.exit_code == 1 and "the same search run given twice" in twice.output
    copy = shutil.copytree(runs["s0"], tmp_path / "s0-copy")  # another run of one config, seed
    same = CliRunner().invoke(cli, ["agreement", runs["s0"], str(copy)])
    assert same.exit_code == 1 and same.output.strip() == (
        f"Error: {runs['s0']} and {copy}: one config run twice with one seed (0), which agrees "
        "with itself; compare searches that differ in their seed")  # fmt: skip
    two = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["s1"], "--format", "json"])
    assert two.exit_code == 0, two.output
    report = json.loads(two.stdout)
    assert report["warnings"] == [] and 0 < report["chance"] < 1
    assert report["pairwise"][0]["agreement"] == report["mean"]
    two = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["s1"]])
    assert two.exit_code == 0, two.output
    derived = [json.loads((tmp_path / n / "search.json").read_text())["choices"]
               for n in ("s0", "s1")]  # fmt: skip
    assert f"{op_agreement(*derived):.3f}  {runs['s0']} vs {runs['s1']}" in two.output
    assert "mean agreement" in two.output and "chance" in two.output
    bad = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["big"]])
    assert bad.exit_code == 1
    assert "searched another space or cost table" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    # another objective (a budget at another target), another task, or a shared seed
    for name, extra in (("t1", {"cost_model": {"form": "budget", "target": 1.2}}),
                        ("t2", {"cost_model": {"form": "budget", "target": 1.6}}),
                        ("lr", {"search": {"arch_optimizer": {"lr": 0.01}}})):  # fmt: skip
        exp = write_experiment(tmp_path / f"{name}.yaml", real_mpii_root, TINY_SPACE, **extra)
        run_search(load_experiment(exp), tmp_path / name, Reporter(lambda _: None))
        runs[name] = str(tmp_path / name)
    targets = CliRunner().invoke(cli, ["agreement", runs["t1"], runs["t2"]])
    assert targets.exit_code == 1 and targets.output.strip() == (
        f"Error: {runs['t2']}: searched for another cost objective than {runs['t1']} (cost_model "
        "form budget, target 1.6 vs form budget, target 1.2); only searches of one objective "
        "compare")  # fmt: skip
    shared = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["lr"]])
    assert shared.exit_code == 0, shared.output
    assert shared.stderr.strip() == (
        f"warning: {runs['s0']} and {runs['lr']} share seed 0: their agreement measures what "
        "their configs' other differences change, not the seed")  # fmt: skip
    # every run's architecture gradient noise (as dnas derive warns): the agreement may be
    # the cost term's alone, and the report says so
    for name in ("s0", "s1"):
        path = tmp_path / name / "search.pt"
        ckpt = checkpoint.load(path)
        ckpt["gradient_evidence"] = {"noise": True, "significant": 0.04, "under_noise": 0.05,
                                     "steps": 30}  # fmt: skip
        checkpoint.save_atomic(ckpt, path)
    noisy = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["s1"], "--format", "json"])
    assert noisy.exit_code == 0 and json.loads(noisy.stdout)["warnings"] == [NOISE_ONLY]
    assert NOISE_ONLY.startswith("every run's architecture gradient never rose above noise")
    # s1 passed overall, though noise in most of its epochs: not a run that learned nothing
    ckpt["gradient_evidence"] = {**ckpt["gradient_evidence"], "noise": False,
                                 "noise_epochs": 2, "arch_epochs": 2}  # fmt: skip
    checkpoint.save_atomic(ckpt, path)
    mixed = CliRunner().invoke(cli, ["agreement", runs["s0"], runs["s1"], "--format", "json"])
    assert mixed.exit_code == 0 and json.loads(mixed.stdout)["warnings"] == []
    alone = CliRunner().invoke(cli, ["agreement", runs["s0"]])
    assert alone.exit_code == 1 and "at least two search runs" in alone.output
