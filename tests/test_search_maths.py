"""The search's maths against the papers it cites: the scale-free cost term, dual ascent and the
budget projection, and the single-path estimators (issue: the search must search)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE, quick_bench, write_experiment

from cost_models.latency_build import build_lut
from dnas import checkpoint
from dnas.cli import cli
from dnas.config import CostConfig, SearchConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.engine.runtime import device_name
from dnas.errors import ConfigError, DnasError
from dnas.nn.mixed_op import MixedOp
from dnas.nn.network import Network, module_key
from dnas.schema import from_dict
from dnas.search.budget import (
    BandSampler,
    best_within,
    most_probable_near,
    most_probable_within,
    sample_within,
    tilted_probs,
)
from dnas.search.cost_model import CostTable, get_cost_model
from dnas.search.darts import DartsOptions, DartsStrategy
from dnas.search.derive import derive
from dnas.search.gap import discretisation_gap
from dnas.search.objective import ArchObjective
from dnas.search.random_search import matched_epochs
from dnas.search.run import run_search
from dnas.search.single_path import BinaryGateStrategy, GumbelStrategy
from dnas.space.choices import uniform_choices
from dnas.space.graph import load_space
from dnas.space.ops import parse_op
from tasks.pose.task import PoseOptions, PoseTask

BUDGET_SPACE = Path(__file__).parent / "data" / "budget_space.yaml"
QUIET = Reporter(lambda _: None)


def toy_table() -> CostTable:
    layers = {"a": {"x": 1.0, "y": 4.0, "z": 9.0}, "b": {"x": 2.0, "y": 3.0},
              "c": {"x": 0.5, "y": 5.0, "z": 6.0}}  # fmt: skip
    return CostTable("flops", "MMAC", 10.0, layers, {})


# -- the cost term -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["relative", "budget"])
def test_the_logarithmic_forms_refuse_a_negative_task_loss(form):
    """d ln L = dL / L: a plugin's negative loss once divided by 1e-12 and blew alpha up to
    NaN, reported later as probabilities that are not probabilities."""
    objective = ArchObjective(CostConfig(form=form, target=20.0), toy_table())
    for loss in (-0.5, -1e-9):
        with pytest.raises(DnasError, match=rf"cost_model.form {form} takes the logarithm of the "
                                            "task loss, which is .* here: it needs a task loss "
                                            "of 0 or more"):  # fmt: skip
            objective(torch.tensor(loss), torch.tensor(20.0))
    objective(torch.tensor(0.0), torch.tensor(20.0))  # a batch with nothing to score
    hinge = ArchObjective(CostConfig(form="hinge", target=20.0), toy_table())
    hinge(torch.tensor(-0.5), torch.tensor(20.0))  # no logarithm: any loss


def test_relative_form_has_the_gradient_of_ln_task_plus_lambda_ln_cost():
    table = toy_table()
    objective = ArchObjective(CostConfig(weight=0.7), table)
    alpha = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    cost_w = torch.tensor([1.0, 4.0, 9.0])
    for scale in (1.0, 1e-3):  # the task loss's units must not matter
        alpha.grad = None
        p = torch.softmax(alpha, 0)
        task = scale * (p * torch.tensor([0.5, 0.2, 0.9])).sum()
        cost = table.fixed + (p * cost_w).sum()
        loss, stats = objective(task, cost)
        loss.backward()
        with torch.no_grad():
            dp = torch.tensor([0.5, 0.2, 0.9]) / (p * torch.tensor([0.5, 0.2, 0.9])).sum()
            dp += 0.7 * cost_w / cost
            jac = torch.diag(p) - torch.outer(p, p)
            expected = jac @ dp
        assert torch.allclose(alpha.grad, expected, atol=1e-6), scale
        assert stats["arch/lambda"] == 0.7


def test_eq6_form_is_kept_exactly():
    objective = ArchObjective(CostConfig(form="log", weight=0.3, tau=5.0), toy_table())
    cost = torch.tensor(250.0, requires_grad=True)
    task = torch.tensor(0.02, requires_grad=True)
    loss, _ = objective(task, cost)
    assert loss.item() == pytest.approx(0.02 + 0.3 * math.log(250.0) / math.log(5.0))
    loss.backward()
    assert float(task.grad) == 1.0
    assert float(cost.grad) == pytest.approx(0.3 / (250.0 * math.log(5.0)))


def test_dual_ascent_step_is_scale_free():
    cfg = CostConfig(form="budget", target=20.0, weight=0.5, dual_lr=0.2)
    objective = ArchObjective(cfg, toy_table())
    assert objective.lam == 0.0  # a dual variable starts at 0
    cost_grads = [torch.tensor([0.0, 3.0, 4.0])]  # |grad ln C| = 5
    grads = [torch.tensor([6.0, 0.0, 0.0])]  # lambda 0: all task, |6| -> rho 1.2
    objective.observe(25.0, 30.0, 0.25, grads, cost_grads)
    assert objective.rho == pytest.approx(1.2)
    lam = 0.2 * 1.2 * (0.25 * math.log(25.0 / 20.0) + 0.75 * math.log(30.0 / 20.0))
    assert objective.lam == pytest.approx(lam)
    grads = [torch.tensor([6.0, 0.0, 0.0]) + lam * cost_grads[0]]  # the task part stays 6
    task = objective.task_gradients(grads, 20.0, cost_grads)
    assert task[0].tolist() == pytest.approx([6.0, 0.0, 0.0])
    objective.observe(20.0, 20.0, 0.9, task, cost_grads)  # on target: lambda stays
    assert objective.rho == pytest.approx(1.2) and objective.lam == pytest.approx(lam)
    for _ in range(200):  # far over the target for long: lambda stops at 4 rho (anti-windup)
        grads = [torch.tensor([6.0, 0.0, 0.0]) + objective.lam * cost_grads[0]]
        objective.observe(1e6, 1e6, 1.0, objective.task_gradients(grads, 1e6, cost_grads),
                          cost_grads)  # fmt: skip
    assert objective.lam == pytest.approx(4 * 1.2)
    fixed = ArchObjective(CostConfig(weight=0.5), toy_table())
    fixed.observe(25.0, 25.0, 1.0, grads, cost_grads)
    assert fixed.lam == 0.5


def test_dual_ascent_ignores_a_step_the_gradient_scaler_skipped():
    objective = ArchObjective(CostConfig(form="budget", target=20.0), toy_table())
    cost_grads = [torch.tensor([0.0, 3.0, 4.0])]
    objective.observe(25.0, 30.0, 0.5, [torch.tensor([6.0, 0.0, 0.0])], cost_grads)
    lam, rho = objective.lam, objective.rho
    for bad in (math.inf, math.nan):  # fp16 overflow: the scaler skips the optimiser step
        objective.observe(25.0, 30.0, 0.5, [torch.tensor([bad, 0.0, 0.0])], cost_grads)
    assert (objective.lam, objective.rho) == (lam, rho)
    assert math.isfinite(objective.lam) and lam > 0


def test_collectives_use_the_backends_device(monkeypatch):
    from dnas.engine import distributed

    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)  # NCCL: CUDA tensors
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
    asked, reduced = [], []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: reduced.append(t) or t.mul_(2))
    monkeypatch.setattr(distributed, "collective_device", lambda: asked.append(1) or "cpu")
    assert distributed.mean_over_world({"loss": 0.25}) == {"loss": 0.25}
    assert asked == [1] and len(reduced) == 1


def test_expected_cost_is_float32_and_exact():
    table = toy_table()
    probs = [torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0, 0])]
    cost = table.expected(["a", "b", "c"], probs)
    assert cost.dtype == torch.float32
    assert float(cost) == pytest.approx(10 + 0.2 + 1.2 + 4.5 + 2.5 + 0.5)


# -- budget projection and sampling ---------------------------------------------------------------


def brute_force(scores, table, low, high):
    """The architecture in [low, high] with the largest summed score, by enumeration."""
    best, arg = -math.inf, None
    names = list(scores)
    for combo in itertools.product(*(range(len(scores[n])) for n in names)):
        choices = {n: list(table.layers[n])[i] for n, i in zip(names, combo, strict=True)}
        if low <= table.of_choices(choices) <= high:
            score = sum(scores[n][i] for n, i in zip(names, combo, strict=True))
            if score > best:
                best, arg = score, choices
    return arg


@pytest.mark.parametrize("target", [15.0, 18.5, 22.0, 27.0])
def test_projection_is_the_most_probable_architecture_in_the_band(target):
    table = toy_table()
    probs = {"a": [0.57, 0.31, 0.12], "b": [0.23, 0.77], "c": [0.48, 0.13, 0.39]}
    low, high = target * 0.97, target * 1.03
    logp = {n: [math.log(v) for v in p] for n, p in probs.items()}
    assert most_probable_within(probs, table, low, high) == brute_force(logp, table, low, high)


@pytest.mark.parametrize("target", [15.0, 18.5, 22.0, 27.0])
def test_best_within_is_the_cheapest_net_of_another_table_at_this_tables_cost(target):
    """Negated costs of a second table (a runtime's ms) as scores: the net that runtime runs
    fastest among those with this table's cost (MACs) in the band."""
    table = toy_table()
    ms = {"a": [3.0, 1.0, 2.5], "b": [0.5, 0.7], "c": [2.0, 1.5, 0.1]}
    scores = {n: [-v for v in row] for n, row in ms.items()}
    low, high = target * 0.97, target * 1.03
    assert best_within(scores, table, low, high) == brute_force(scores, table, low, high)


def test_projection_reports_an_empty_band():
    assert most_probable_within({"a": [1, 0, 0], "b": [1, 0], "c": [1, 0, 0]}, toy_table(),
                                100.0, 101.0) is None  # fmt: skip


def test_projection_widens_an_empty_band_to_the_nearest_nets():
    """No toy net costs 17.2 (they cost ..., 16.5, 17.5, 18, ...): with tolerance 0 the band
    widens to the narrowest that holds one, 17.5, and the most probable net there is taken."""
    table, probs = toy_table(), {"a": [0.6, 0.3, 0.1], "b": [0.7, 0.3], "c": [0.5, 0.3, 0.2]}
    near = most_probable_near(probs, table, 17.2, 0.0)
    assert near == {"a": "y", "b": "y", "c": "x"} and table.of_choices(near) == 17.5
    # 20.6 lies between nets of 20 (p 0.09) and 21 (p 0.042): the nearer one, not the likelier
    likelier_far = {"a": [0.6, 0.3, 0.1], "b": [0.7, 0.3], "c": [0.3, 0.2, 0.5]}
    assert table.of_choices(most_probable_near(likelier_far, table, 20.6, 0.0)) == 21.0
    assert most_probable_near(probs, table, 20.0, 0.02) == most_probable_within(
        probs, table, 19.6, 20.4
    )  # a band that holds nets is kept as it is


def test_tilted_sampler_hits_the_mean_and_the_band():
    table = get_cost_model("flops").table(load_space(BUDGET_SPACE), (64, 64), 16)
    low, high = table.cost_range()
    rng = np.random.default_rng(0)
    for frac in (0.1, 0.5, 0.9):
        target = low + frac * (high - low)
        probs = tilted_probs(table, target)
        mean = table.fixed + sum(float(p @ np.array(list(table.layers[n].values())))
                                 for n, p in probs.items())  # fmt: skip
        assert mean == pytest.approx(target, rel=1e-6)
        choices = sample_within(table, rng, target * 0.97, target * 1.03, 1000)
        assert target * 0.97 <= table.of_choices(choices) <= target * 1.03


def random_plan(tmp_path, root, cost_model, random):
    """The random strategy of an experiment over mbv2_pose_small at 64x64 (8.2..55.6 MMAC), its
    draws planned; returns it and its FLOPs table."""
    from dnas.engine.runtime import Amp
    from dnas.search.random_search import RandomSearchStrategy
    from dnas.search.run import build_strategy

    space = Path(__file__).parent.parent / "search_spaces" / "mbv2_pose_small.yaml"
    path = write_experiment(tmp_path / "exp.yaml", root, space=space, cost_model=cost_model,
                            search={"strategy": "random", "random": random})  # fmt: skip
    strategy = build_strategy(load_experiment(path), Amp(torch.device("cpu")))
    assert isinstance(strategy, RandomSearchStrategy)
    strategy.table = get_cost_model("flops").table(load_space(space), (64, 64), 16)
    strategy.sampler, strategy.band = strategy.plan_draws()
    return strategy, strategy.table


def test_random_draws_keep_the_seeds_stream_where_the_band_holds_them(tmp_path, synth_root):
    strategy, table = random_plan(tmp_path, synth_root, {"form": "budget", "target": 30.0}, {})
    assert strategy.band == pytest.approx((29.4, 30.6)) and strategy.notes == []
    mine, before = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(3):  # the draws of the same seed as before the band was planned
        assert strategy.sampler.draw(mine, 10000) == sample_within(table, before, 29.4, 30.6,
                                                                   10000)  # fmt: skip


def test_random_draws_under_a_cap_near_the_cheapest_net_come_from_the_tilted_sampler(
    tmp_path, synth_root
):
    """Uniform draws of 24 layers of 7 ops almost never cost under 10 MMAC (the cheapest net
    costs 8.2): the draws come from the maximum-entropy distribution of that range instead."""
    strategy, table = random_plan(tmp_path, synth_root, {}, {"budget": 10.0})
    cheapest = table.cost_range()[0]
    assert len(strategy.notes) == 1 and strategy.notes[0].startswith(
        "search.random.budget: 0.00% of uniform draws cost at most 10 MMAC, too few"
    )
    assert strategy.band == (cheapest, 10.0) and strategy.cost_band() is None
    strategy.rng = np.random.default_rng(0)
    assert all(cheapest <= table.of_choices(strategy.draw()) <= 10.0 for _ in range(20))
    # a cap the uniform draws meet keeps them
    strategy, _ = random_plan(tmp_path, synth_root, {}, {"budget": 45.0})
    assert strategy.sampler is None and strategy.notes == []
    with pytest.raises(ConfigError, match=r"exp.yaml: search.random.budget: 8 MMAC lies below "
                                          r"the space's cheapest net \(8.2"):  # fmt: skip
        random_plan(tmp_path, synth_root, {}, {"budget": 8.0})


def test_random_draws_widen_a_band_they_cannot_land_in(tmp_path, synth_root):
    exact = {"form": "budget", "target": 30.0, "tolerance": 0.0}
    strategy, table = random_plan(tmp_path, synth_root, exact, {})
    low, high = strategy.band
    assert strategy.cost_band() == (low, high) and low < 30.0 < high
    assert high / 30 - 1 <= 2e-3  # the first widening (0.1 %) or the next already holds draws
    assert strategy.notes[0].startswith("cost_model.tolerance: too few random draws land within "
                                        "30..30 MMAC; drawing within")  # fmt: skip
    strategy.rng = np.random.default_rng(0)
    assert all(low <= table.of_choices(strategy.draw()) <= high for _ in range(5))


def test_the_sampler_probe_and_its_draws_agree_on_a_band_of_one_float_cost():
    """A vectorised probe and of_choices add the same costs in other orders: 0.6 + 0.1 + 0.2
    + 0.3 is 1.2 one way and 1.2000000000000002 the other, and a band [1.2, 1.2] (tolerance 0,
    a target equal to a net's cost) must hold that net both ways."""
    table = CostTable("latency", "ms", 0.6, {"a": {"x": 0.1}, "b": {"x": 0.2}, "c": {"x": 0.3}}, {})
    sampler = BandSampler(table, 1.2, 1.2)
    assert sampler.acceptance(np.random.default_rng(0), 100) == 1.0
    assert sampler.draw(np.random.default_rng(0), 1) == {"a": "x", "b": "x", "c": "x"}
    assert not BandSampler(table, 1.3, 1.4).holds(table.of_choices({"a": "x", "b": "x", "c": "x"}))


# -- budget searches land on the target -----------------------------------------------------------


@pytest.fixture(scope="module")
def budget_lut(tmp_path_factory):
    table = build_lut(load_space(BUDGET_SPACE), (64, 64), 16, 1, quick_bench(), calibration=4,
                      progress=False)  # fmt: skip
    path = tmp_path_factory.mktemp("lut") / "budget.json"
    path.write_text(json.dumps(table))
    return path


def budget_search(tmp_path, root, strategy, frac, cost_model):
    model = get_cost_model(cost_model["type"], from_dict(CostConfig, cost_model, "<test>"))
    table = model.table(load_space(BUDGET_SPACE), (64, 64), 16)
    low, high = table.cost_range()
    # the cost of a real architecture near the fraction of the range: on a measured table of
    # this tiny space the costs cluster by the number of skip layers (each op ~0.15 ms of
    # dispatch, a skip ~0), and a 3 % band between two clusters would hold no net at all
    rng = np.random.default_rng(0)
    layers = load_space(BUDGET_SPACE).searchable_layers
    costs = [table.of_choices(uniform_choices(layers, rng)) for _ in range(2000)]
    target = min(costs, key=lambda c: abs(c - (low + frac * (high - low))))
    exp = write_experiment(
        tmp_path / f"{strategy}-{frac}.yaml", root, BUDGET_SPACE,
        cost_model={**cost_model, "form": "budget", "target": target},
        search={"strategy": strategy, "warmup_epochs": 0, "epochs": 2, "steps_per_epoch": 2,
                "arch_optimizer": {"lr": 0.1}, "random": {"samples": 2, "epochs_per_arch": 1}},
    )  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / f"run-{strategy}-{frac}", QUIET)
    return target, result


@pytest.mark.parametrize("strategy", ["darts", "gumbel", "binary_gates", "random"])
def test_budget_search_lands_within_3_percent_flops(strategy, tmp_path, real_mpii_root):
    for frac in (0.15, 0.5, 0.85):
        target, result = budget_search(tmp_path, real_mpii_root, strategy, frac,
                                       {"type": "flops"})  # fmt: skip
        assert abs(result["final_cost"] / target - 1) <= 0.03, (frac, result["final_cost"], target)
        assert result["target"] == target and result["cost_form"] == "budget"
        arch, _ = derive(tmp_path / f"run-{strategy}-{frac}")  # dnas derive gives that net
        assert {lay.name: lay.candidates[0] for lay in arch.layers if lay.name in
                result["choices"]} == result["choices"]  # fmt: skip


def test_a_hinge_target_outside_the_space_is_warned_about():
    """The toy space costs 13.5..28: a hinge at 10 taxes every net, one at 40 none."""
    from dnas.search.run import penalty_warning

    table = toy_table()
    below = penalty_warning(CostConfig(form="hinge", target=10.0), table)
    assert below.startswith("cost_model.target 10 MMAC is outside this space's range 13.5..28")
    assert "every net of the space costs more" in below
    assert "never acts" in penalty_warning(CostConfig(form="power", target=40.0), table)
    assert penalty_warning(CostConfig(form="hinge", target=20.0), table) is None
    assert penalty_warning(CostConfig(form="relative"), table) is None


def test_cost_model_keys_the_form_does_not_read_are_named():
    """A target under form relative reads as a budget but only shifts the logged value: the
    search says so when it starts, and its closing line does not measure the net against it."""
    from dnas.config import Experiment
    from dnas.search.run import summary_line, unused_cost_keys

    def warned(search=None, **cost):
        return unused_cost_keys(Experiment(task={"name": "pose"}, cost_model=CostConfig(**cost),
                                           search=search or SearchConfig()))  # fmt: skip

    assert warned(form="relative", target=17.61) == (
        "cost_model.target 17.61 (read by form budget, hinge, power) is not read by form "
        "relative; form: budget searches for that cost")  # fmt: skip
    assert warned(form="budget", target=17.61, weight=0.1, beta=3.0) == (
        "cost_model.weight 0.1 (read by form relative, log, hinge, power) and cost_model.beta 3 "
        "(read by form power) are not read by form budget")  # fmt: skip
    assert warned(form="log", weight=0.2, tau=5.0) is None
    assert warned(form="relative", weight=0.05, target=20.0, tolerance=0.02) is not None
    # search.arch_init: budget starts on the target, whatever the form
    assert warned(SearchConfig(arch_init="budget"), form="relative", target=17.61) is None
    result = {"cost_unit": "MMAC", "final_cost": 35.21, "target": 17.61, "projected_layers": 0,
              "decisiveness": 0.6, "band": None}  # fmt: skip
    assert "target" not in summary_line({**result, "cost_form": "relative"})
    assert "(target 17.61 MMAC, +99.9 %)" in summary_line({**result, "cost_form": "hinge"})


def test_a_search_names_the_latency_table_it_trades_against(budget_lut):
    """A table of another device, runtime, batch or thread count is the user's choice (FBNet
    searches on a GPU for a phone's table), so the search's first lines say which it is."""
    from dnas.search.run import cost_line

    cfg = from_dict(CostConfig, {"type": "latency", "table": str(budget_lut), "form": "budget",
                                 "target": 1.0}, "<test>")  # fmt: skip
    table = get_cost_model("latency", cfg).table(load_space(BUDGET_SPACE), (64, 64), 16)
    line = cost_line(cfg, table)
    threads = json.loads(budget_lut.read_text())["meta"]["threads"]
    here = device_name(torch.device("cpu"))  # the CPU's model: the machine the table models
    assert line.startswith(
        f"cost: latency (table {budget_lut}, measured {here}, torch, batch 1, "
        f"{threads} threads), form budget, target 1 ms; the space spans "
    )


@pytest.mark.parametrize("strategy", ["darts", "gumbel", "binary_gates", "random"])
def test_budget_search_lands_within_3_percent_latency(strategy, tmp_path, real_mpii_root,
                                                      budget_lut):  # fmt: skip
    for frac in (0.3, 0.7):
        target, result = budget_search(tmp_path, real_mpii_root, strategy, frac,
                                       {"type": "latency", "table": str(budget_lut)})  # fmt: skip
        assert result["cost_unit"] == "ms"
        assert abs(result["final_cost"] / target - 1) <= 0.03, (frac, result["final_cost"], target)


@pytest.mark.parametrize("strategy", ["darts", "gumbel"])
def test_arch_init_budget_starts_the_search_on_the_target(strategy, tmp_path, real_mpii_root):
    """``search.arch_init: budget``: before any architecture step the expected cost (Eq. 4-5)
    is the target, under the maximum-entropy distribution with that mean."""
    table = get_cost_model("flops").table(load_space(BUDGET_SPACE), (64, 64), 16)
    low, high = table.cost_range()
    target = low + 0.3 * (high - low)
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, BUDGET_SPACE,
                           cost_model={"form": "budget", "target": target},
                           search={"strategy": strategy, "arch_init": "budget", "warmup_epochs": 1,
                                   "epochs": 0, "steps_per_epoch": 1})  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / "run", QUIET)
    probs = result["arch_probs"]
    expected = table.fixed + sum(float(np.dot(probs[n], list(table.layers[n].values())))
                                 for n in probs)  # fmt: skip
    assert expected == pytest.approx(target, rel=1e-4)
    assert expected < table.uniform_cost()  # not where alpha = 0 starts
    tilted = tilted_probs(table, target)
    for name, p in probs.items():
        np.testing.assert_allclose(p, tilted[name], rtol=1e-4)
    no_target = write_experiment(tmp_path / "bad.yaml", real_mpii_root, BUDGET_SPACE,
                                 search={"arch_init": "budget"})  # fmt: skip
    run = CliRunner().invoke(cli, ["search", str(no_target), "--out", str(tmp_path / "s")])
    assert run.exit_code == 1 and run.output.strip().count("\n") == 0
    assert "cost_model.target: required by search.arch_init: budget" in run.output


def test_budget_target_outside_the_space_is_a_one_line_error(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, BUDGET_SPACE,
                           cost_model={"form": "budget", "target": 1000.0})  # fmt: skip
    run = CliRunner().invoke(cli, ["search", str(exp), "--out", str(tmp_path / "s")])
    assert run.exit_code == 1
    assert run.output.strip().count("\n") == 0
    assert "cost_model.target: 1000 MMAC is outside this space's range" in run.output


def test_a_target_outside_the_range_is_printed_to_the_digits_that_show_it_outside():
    from dnas.search.run import range_texts

    assert range_texts(55.61, 8.229888, 55.606272) == ("55.61", "8.2299..55.606")
    assert range_texts(8.2298, 8.229888, 55.606272) == ("8.2298", "8.2299..55.606")
    assert range_texts(10.0, 13.5, 28.0) == ("10", "13.5..28")
    assert range_texts(20.0, 13.5, 28.0) == ("20", "13.5..28")


def test_a_target_at_an_end_of_the_range_as_dnas_cost_prints_it_is_accepted():
    """The range's ends are float sums (mbv2_pose_small's maximum at 64x64 sums to
    55.60627199999998 MMAC); its whole-MAC value, 55.606272, is the space's own maximum."""
    from types import SimpleNamespace

    from dnas.search.run import check_target, penalty_warning

    table = get_cost_model("flops").table(load_space("mbv2_pose_small"), (64, 64), 16)
    ends = [round(end * 1e6) / 1e6 for end in table.cost_range()]  # as dnas cost prints MACs
    assert ends[1] != table.cost_range()[1]  # the sum's rounding that once refused it
    for target in ends:
        check_target(SimpleNamespace(cost_model=CostConfig(form="budget", target=target),
                                     source="e.yaml", input_hw=(64, 64)), table)  # fmt: skip
        assert penalty_warning(CostConfig(form="hinge", target=target), table) is None
    for target in (ends[0] * (1 - 1e-6), ends[1] * (1 + 1e-6)):
        assert "is outside this space's range" in penalty_warning(
            CostConfig(form="hinge", target=target), table)  # fmt: skip
        with pytest.raises(ConfigError, match="cost_model.target: .* is outside this space's"):
            check_target(SimpleNamespace(cost_model=CostConfig(form="budget", target=target),
                                         source="e.yaml", input_hw=(64, 64)), table)  # fmt: skip


def test_search_json_records_decisiveness_and_derive_warns(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    result = run_search(load_experiment(exp), tmp_path / "run", QUIET)
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    tops = [max(p) for p in saved["arch_probs"].values()]
    assert saved["decisiveness"] == pytest.approx(sum(tops) / len(tops))
    assert result["decisiveness"] < 0.5  # two steps at the paper's arch lr decide nothing
    run = CliRunner().invoke(cli, ["derive", str(tmp_path / "run"), "-o",
                                                   str(tmp_path / "a.yaml")])  # fmt: skip
    assert run.exit_code == 0
    assert run.stderr.count("\n") == 1 and "warning: the search ended undecided" in run.stderr
    assert (f"derived architecture cost: {saved['final_cost']:.4g} MMAC; decisiveness (mean top "
            f"op probability) {saved['decisiveness']:.3f}\n") in run.stdout  # fmt: skip
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "derived architecture cost:" in log and "decisiveness" in log


# -- single-path strategies -----------------------------------------------------------------------


def single_path(cls, root, cost_weight=0.0, warmup=0):
    torch.manual_seed(0)
    space = load_space(TINY_SPACE)
    net = Network(space, 16)
    task = PoseTask(PoseOptions(root=str(root)), (64, 64), "test")
    table = get_cost_model("flops").table(space, (64, 64), 16)
    cfg = SearchConfig(warmup_epochs=warmup, drop_path=0.0)
    strategy = cls(cfg, CostConfig(weight=cost_weight))
    strategy.adapt_search_space(net, task, table, torch.device("cpu"))
    strategy.new_epoch(warmup)
    batch = {"input": torch.randn(4, 3, 64, 64), "target": torch.rand(4, 16, 16, 16),
             "target_weight": torch.ones(4, 16, 1)}  # fmt: skip
    return strategy, batch


def test_gumbel_arch_step_gives_every_layer_a_task_gradient(real_mpii_root):
    """Where train-mode BN follows a layer, the sampled op's own gate gradient <dL/dy, y> is
    exactly 0; probing the other candidates gives every layer the straight-through gradient."""
    strategy, batch = single_path(GumbelStrategy, real_mpii_root)
    for _ in range(5):
        strategy.a_opt.zero_grad(set_to_none=True)
        loss, _ = strategy.objective(strategy.arch_forward(batch), strategy.expected_cost())
        loss.backward(inputs=strategy.alphas)
        norms = [float(a.grad.abs().max()) for a in strategy.alphas]
        assert all(n > 1e-9 for n in norms), norms


def test_gumbel_temperature_counts_architecture_epochs_only(real_mpii_root):
    strategy, _ = single_path(GumbelStrategy, real_mpii_root, warmup=3)
    taus = []
    for epoch in range(6):
        strategy.new_epoch(epoch)
        taus.append(strategy.tau)
    assert taus == pytest.approx([5.0, 5.0, 5.0, 5.0, 5.0 * 0.956, 5.0 * 0.956**2])


@pytest.mark.parametrize("cost_weight", [0.0, 2.0])
def test_binary_gates_step_leaves_unsampled_probabilities_unchanged(real_mpii_root, cost_weight):
    strategy, batch = single_path(BinaryGateStrategy, real_mpii_root, cost_weight)
    for _ in range(4):
        before = [torch.softmax(a.detach(), 0) for a in strategy.alphas]
        strategy.arch_step(batch)
        pairs = strategy.paths[1]
        moved = False
        for alpha, old, pair in zip(strategy.alphas, before, pairs, strict=True):
            new = torch.softmax(alpha.detach(), 0)
            rest = [i for i in range(len(alpha)) if i not in pair]
            assert torch.allclose(new[rest], old[rest], atol=1e-6)
            assert float(new[pair].sum()) == pytest.approx(float(old[pair].sum()), abs=1e-6)
            moved |= not torch.allclose(new[pair], old[pair])
        assert moved


@pytest.mark.parametrize("cls", [GumbelStrategy, BinaryGateStrategy])
def test_single_path_drop_path_never_wipes_a_layer(cls, real_mpii_root):
    strategy, batch = single_path(cls, real_mpii_root)
    strategy.network.set_drop_path(0.9)
    outputs = []
    for block in strategy.network.blocks.values():
        if isinstance(block, MixedOp):
            block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    strategy.network.train()
    for _ in range(3):
        weights, active = strategy.weight_paths()[0]
        strategy.network(torch.randn(8, 3, 64, 64), weights, active)
    per_sample = torch.cat([o.detach().flatten(1).abs().sum(1) for o in outputs])
    assert bool((per_sample > 0).all())


def test_darts_drop_path_still_drops_candidates():
    torch.manual_seed(0)
    op = MixedOp([parse_op("k3e3"), parse_op("skip")], 8, 8, 1)
    op.drop_path_rate = 0.5
    op.train()
    x = torch.randn(64, 8, 8, 8)
    w = torch.tensor([1.0, 0.0])
    out = op(x, w)
    assert int((out.flatten(1).abs().sum(1) == 0).sum()) > 10  # dense: about half dropped
    assert torch.allclose(op(x, w, active=[0]), op.ops[0](x))  # one path: never dropped


def test_drop_path_masks_differ_between_ranks(monkeypatch):
    import dnas.nn.network as network_module

    masks = []
    for rank in (0, 1):
        monkeypatch.setattr(network_module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(network_module.dist, "get_rank", lambda r=rank: r)
        torch.manual_seed(0)  # the same global seed on every rank, as under torchrun
        net = Network(load_space(TINY_SPACE), 16)
        net.set_drop_path(0.5)
        masks.append(torch.empty(64).bernoulli_(0.5, generator=net.drop_path_generator))
    assert not torch.equal(masks[0], masks[1])


def test_gradient_scaler_updates_once_per_search_step(tmp_path, real_mpii_root, monkeypatch):
    calls = []
    original = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update",
                        lambda self, *a: calls.append(1) or original(self, *a))  # fmt: skip
    search = {"warmup_epochs": 0, "epochs": 3, "steps_per_epoch": 1}
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, precision="fp16", search=search)
    run_search(load_experiment(exp), tmp_path / "run", QUIET)
    assert len(calls) == 3


def test_random_search_gets_the_compute_of_the_darts_search():
    table = toy_table()
    cfg = SearchConfig(warmup_epochs=60, epochs=150)
    supernet = 10 + 14 + 5 + 11.5
    uniform = 10 + 14 / 3 + 2.5 + 11.5 / 3
    assert matched_epochs(cfg, table, 50) == round((60 + 300) * supernet / uniform / 50)


def test_interrupted_budget_search_resumes_lambda(tmp_path, real_mpii_root):
    search = {"warmup_epochs": 0, "epochs": 2, "steps_per_epoch": 2}
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, BUDGET_SPACE,
                           cost_model={"form": "budget", "target": 3.0}, search=search)  # fmt: skip
    run_search(load_experiment(exp), tmp_path / "run", QUIET)
    state = checkpoint.load(tmp_path / "run" / "search.pt")["strategy"]["objective"]
    assert state["lambda"] != 0.0 and state["rho"] > 0


# -- DARTS: the mixture's temperature and its discretisation gap ----------------------------------


def darts_with(root, start: float, end: float, warmup: int = 2, epochs: int = 5):
    torch.manual_seed(0)
    space = load_space(TINY_SPACE)
    net = Network(space, 16)
    task = PoseTask(PoseOptions(root=str(root)), (64, 64), "test")
    table = get_cost_model("flops").table(space, (64, 64), 16)
    cfg = SearchConfig(warmup_epochs=warmup, epochs=epochs, drop_path=0.0,
                       options={"darts": DartsOptions(start, end)})  # fmt: skip
    strategy = DartsStrategy(cfg, CostConfig(weight=0.0))
    strategy.adapt_search_space(net, task, table, torch.device("cpu"))
    return strategy, net, table


def test_darts_temperature_anneals_geometrically_over_architecture_epochs(real_mpii_root):
    """T_e = T0 (T1 / T0)^(e / (E - 1)) over the E architecture epochs (warm-up stays at T0);
    the mixture, its expected cost (Eq. 4-5) and search.json's probabilities all use
    softmax(alpha / T_e)."""
    strategy, net, table = darts_with(real_mpii_root, 2.0, 0.1)
    with torch.no_grad():
        for alpha in net.alphas:
            alpha.copy_(torch.linspace(-1.0, 1.0, len(alpha)))
    temps = []
    for epoch in range(7):
        strategy.new_epoch(epoch)
        temps.append(net.temperature)
        probs = [torch.softmax(a.detach() / net.temperature, -1) for a in net.alphas]
        for got, want in zip(net.arch_probs(), probs, strict=True):
            torch.testing.assert_close(got.detach(), want)
        costs = [torch.tensor(list(table.layers[n].values())) for n in net.searchable]
        expected = table.fixed + sum(float(p @ c) for p, c in zip(probs, costs, strict=True))
        assert float(strategy.expected_cost().detach()) == pytest.approx(expected, rel=1e-5)
    ratio = 0.05**0.25
    assert temps == pytest.approx([2.0, 2.0, 2.0, 2.0 * ratio, 2.0 * ratio**2, 2.0 * ratio**3, 0.1])


def test_darts_default_is_eq2_exactly(real_mpii_root):
    strategy, net, _ = darts_with(real_mpii_root, 1.0, 1.0)
    for epoch in range(7):
        strategy.new_epoch(epoch)
        assert net.temperature == 1.0
    for got, alpha in zip(net.arch_probs(), net.alphas, strict=True):
        assert torch.equal(got, torch.softmax(alpha, -1))


def test_darts_budget_start_holds_at_any_temperature(real_mpii_root, tmp_path):
    """``arch_init: budget`` with T0 != 1 still starts on the maximum-entropy distribution."""
    table = get_cost_model("flops").table(load_space(BUDGET_SPACE), (64, 64), 16)
    low, high = table.cost_range()
    target = low + 0.4 * (high - low)
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, BUDGET_SPACE,
                           cost_model={"form": "budget", "target": target},
                           search={"arch_init": "budget", "warmup_epochs": 1, "epochs": 0,
                                   "steps_per_epoch": 1,
                                   "darts": {"temperature_start": 3.0}})  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / "run", QUIET)
    tilted = tilted_probs(table, target)
    for name, p in result["arch_probs"].items():
        np.testing.assert_allclose(p, tilted[name], rtol=1e-4)


def fixed_copy(net: Network, choices: dict[str, str]) -> Network:
    """The derived net as a plain network, holding the super net's weights of ``choices``."""
    fixed = Network(net.space.with_choices(choices), 16)
    state = {}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "alphas":
            continue
        if parts[0] == "blocks" and parts[2] == "ops":
            layer = next(n for n in net.searchable if module_key(n) == parts[1])
            index = list(net.space.searchable_layers[net.searchable.index(layer)].candidates)
            if int(parts[3]) != index.index(choices[layer]):
                continue
            key = ".".join(parts[:2] + parts[4:])
        state[key] = value
    fixed.load_state_dict(state)
    return fixed


def test_discretisation_gap_measures_the_derived_net_with_the_trained_weights(real_mpii_root):
    strategy, net, _ = darts_with(real_mpii_root, 1.0, 1.0)
    batches = [{"input": torch.randn(4, 3, 64, 64), "target": torch.rand(4, 16, 16, 16),
                "target_weight": torch.ones(4, 16, 1)} for _ in range(2)]  # fmt: skip
    net.train()
    for batch in batches:  # give batch norm running statistics that differ from the batches'
        net(batch["input"] * 3 + 1)
    running = {k: v.clone() for k, v in net.state_dict().items()
               if "running" in k or "num_batches_tracked" in k}  # fmt: skip
    choices = strategy.get_final_architecture()
    figures = discretisation_gap(net, batches, strategy.amp, strategy.task.loss,
                                 torch.device("cpu"), choices)  # fmt: skip
    for key, value in net.state_dict().items():
        if key in running:
            assert torch.equal(value, running[key]), key  # running statistics untouched
    assert net.training  # mode restored
    fixed = fixed_copy(net, choices)
    fixed.train()  # batch statistics, as the gap measures them
    with torch.no_grad():
        want = sum(float(strategy.task.loss(fixed(b["input"]), b)) for b in batches) / 2
        mixture = sum(float(strategy.task.loss(net(b["input"]), b)) for b in batches) / 2
    assert figures["derived_loss"] == pytest.approx(want, rel=1e-5)
    assert figures["mixture_loss"] == pytest.approx(mixture, rel=1e-5)
    assert figures["gap"] == pytest.approx(want / mixture - 1, rel=1e-4)
    assert abs(figures["gap"]) > 1e-5  # two different nets were measured
    with torch.no_grad():  # a decided mixture is its derived net: no gap
        for alpha, layer in zip(net.alphas, net.space.searchable_layers, strict=True):
            alpha.copy_(torch.full_like(alpha, -1e4))
            alpha[list(layer.candidates).index(choices[layer.name])] = 0.0
    decided = discretisation_gap(net, batches, strategy.amp, strategy.task.loss,
                                 torch.device("cpu"), choices)  # fmt: skip
    assert decided["gap"] == pytest.approx(0.0, abs=1e-6)


def test_darts_search_json_records_the_gap_and_temperature(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root,
                           search={"epochs": 2, "darts": {"temperature_start": 1.0,
                                                          "temperature_end": 0.2}})  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / "run", QUIET)
    gap = result["discretisation_gap"]
    assert set(gap) == {"mixture_loss", "derived_loss", "gap"}
    assert gap["gap"] == pytest.approx(gap["derived_loss"] / gap["mixture_loss"] - 1)
    assert result["mixture_temperature"] == pytest.approx(0.2)  # the last architecture epoch's
