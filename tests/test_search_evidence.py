"""The architecture gradient's evidence against noise (dnas.search.evidence): the t-test's maths,
its behaviour on noise, signal and heavy-tailed spikes, the task/cost split of a step's
gradient for every cost form, and how a search records it and ``dnas derive`` reports it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_experiment
from scipy import stats

from dnas import checkpoint
from dnas.cli import cli
from dnas.config import CostConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.search.cost_model import CostTable
from dnas.search.evidence import GradientEvidence, noise_epochs_warning, noise_warning
from dnas.search.objective import ArchObjective
from dnas.search.run import run_search, summary_line


def fed(samples: np.ndarray, layers: int = 4) -> GradientEvidence:
    """A meter fed ``samples`` (steps x entries), split into ``layers`` tensors per step."""
    meter = GradientEvidence()
    for row in samples:
        meter.add(list(torch.tensor(row).chunk(layers)))
    return meter


def test_t_values_are_the_one_sample_t_test():
    samples = np.random.default_rng(0).normal(0.3, 1.0, size=(9, 12))
    meter = fed(samples)
    expected = stats.ttest_1samp(samples, 0.0, axis=0).statistic
    np.testing.assert_allclose(meter.t_values().numpy(), expected, rtol=1e-9)


def test_pure_noise_is_called_noise_at_the_t_distributions_rate():
    steps, entries = 12, 4000
    samples = np.random.default_rng(1).normal(0.0, 1e-5, size=(steps, entries))
    summary = fed(samples).summary()
    under_noise = 2 * stats.t.sf(2.0, steps - 1)  # 7.1 % with 11 degrees of freedom
    assert summary["under_noise"] == pytest.approx(under_noise)
    sd = math.sqrt(under_noise * (1 - under_noise) / entries)
    assert abs(summary["significant"] - under_noise) < 3 * sd
    assert summary["noise"] and summary["steps"] == steps


def test_a_consistent_direction_is_evidence():
    rng = np.random.default_rng(2)
    samples = rng.normal(0.0, 1.0, size=(40, 200))
    samples[:, :50] += 1.0  # a quarter of the entries have a mean one noise sd from zero
    summary = fed(samples).summary()
    assert 0.25 < summary["significant"] < 0.35 and not summary["noise"]
    assert summary["p_value"] < 1e-10


def test_rare_spikes_are_not_evidence():
    """Gumbel's straight-through gradient at a low temperature: almost every step ~0, one large
    step per entry. Adam would move alpha far on it; the t-test gives |t| = 1 per entry."""
    samples = np.zeros((30, 60))
    samples[np.arange(60) % 30, np.arange(60)] = 5.0
    meter = fed(samples)
    np.testing.assert_allclose(meter.t_values().numpy(), 1.0)
    assert meter.summary()["significant"] == 0.0 and meter.summary()["noise"]


def test_too_few_steps_and_non_finite_steps():
    meter = GradientEvidence()
    assert meter.summary() is None
    for value in (1.0, 2.0, math.nan, math.inf):
        meter.add([torch.tensor([value, -value])])
    assert meter.steps == 2 and meter.summary() is None  # the scaler's skipped steps are left out
    meter.add([torch.tensor([3.0, -3.0])])
    copy = GradientEvidence()
    copy.load_state_dict(meter.state_dict())
    assert copy.summary() == meter.summary() and copy.steps == 3


def toy_table() -> CostTable:
    return CostTable("flops", "MMAC", 1.0, {"a": {"x": 1.0, "y": 5.0, "z": 9.0}}, {})


@pytest.mark.parametrize("form", ["relative", "budget", "log", "hinge", "power"])
def test_task_gradient_is_the_step_gradient_less_the_cost_terms(form):
    """What the evidence and the dual ascent see: for every cost form, the gradient of the task
    term alone, recovered from the whole step's gradient by the chain rule."""
    cfg = CostConfig(form=form, weight=0.3, target=4.0, tau=5.0, beta=2.0)
    objective, table = ArchObjective(cfg, toy_table()), toy_table()
    objective.lam = 0.7 if form == "budget" else objective.lam
    alpha = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    costs = torch.tensor(list(table.layers["a"].values()))

    def task_and_cost():
        p = torch.softmax(alpha, -1)
        return (p * torch.tensor([0.3, 0.1, 0.2])).sum() ** 2, 1.0 + (p * costs).sum()

    task_loss, cost = task_and_cost()
    loss, _ = objective(task_loss, cost)
    (total,) = torch.autograd.grad(loss, alpha)
    task_loss, cost = task_and_cost()
    term = task_loss / task_loss.detach() if form in ("relative", "budget") else task_loss
    (want,) = torch.autograd.grad(term, alpha)
    _, cost = task_and_cost()
    (log_cost,) = torch.autograd.grad(torch.log(cost), alpha)
    (got,) = objective.task_gradients([total], float(cost.detach()), [log_cost])
    assert float(cost.detach()) > cfg.target  # the hinge and power penalties are active
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def test_search_records_its_evidence_and_derive_warns_on_noise(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root,
                           search={"strategy": "gumbel", "epochs": 4})  # fmt: skip
    result = run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    evidence = json.loads((tmp_path / "run" / "search.json").read_text())["gradient_evidence"]
    assert evidence == result["gradient_evidence"]
    assert evidence["steps"] == 4  # 4 architecture epochs x 1 step (4 of 5 items, batch 4)
    assert set(evidence) == {"steps", "significant", "under_noise", "p_value", "noise",
                             "arch_epochs", "noise_epochs"}  # fmt: skip
    assert evidence["arch_epochs"] == 0  # an epoch of 1 step gets no test of its own
    assert "architecture epochs" not in summary_line(result)
    tested = {**result, "gradient_evidence": {**evidence, "arch_epochs": 4, "noise_epochs": 3}}
    assert summary_line(tested).endswith(", noise in 3 of 4 architecture epochs")
    assert evidence["under_noise"] == pytest.approx(2 * stats.t.sf(2.0, 3))
    path = tmp_path / "run" / "search.pt"
    ckpt = checkpoint.load(path)
    assert ckpt["gradient_evidence"] == evidence
    ckpt["gradient_evidence"] = {**evidence, "significant": 0.01, "noise": True}
    checkpoint.save_atomic(ckpt, path)
    run = CliRunner().invoke(cli, ["derive", str(tmp_path / "run"), "-o",
                                   str(tmp_path / "a.yaml")])  # fmt: skip
    assert run.exit_code == 0
    assert "warning: the search's architecture gradient never rose above noise" in run.stderr
    assert "noise in" not in run.stderr
    assert noise_warning({**evidence, "noise": False}) is None and noise_warning(None) is None
    ckpt["gradient_evidence"] = {**evidence, "arch_epochs": 4, "noise_epochs": 3}
    checkpoint.save_atomic(ckpt, path)
    run = CliRunner().invoke(cli, ["derive", str(tmp_path / "run"), "-o",
                                   str(tmp_path / "b.yaml")])  # fmt: skip
    assert "warning: the architecture gradient was noise in 3 of 4 architecture epochs" in (
        run.stderr
    )
    assert noise_epochs_warning({**evidence, "arch_epochs": 4, "noise_epochs": 2}) is None
    noisy = {**evidence, "arch_epochs": 4, "noise_epochs": 3}  # the advice fits the strategy
    assert "search.single_path.tau_min" in noise_epochs_warning(noisy, "gumbel")
    for strategy in ("darts", "binary_gates", None):
        line = noise_epochs_warning(noisy, strategy)
        assert "temperature" not in line and line.endswith(
            "take more steps per epoch or a larger search.batch_size"
        )


def test_each_architecture_epoch_is_tested_and_checkpointed(real_mpii_root):
    """An epoch of at least 3 architecture steps gets its own noise test; the flags count in
    ``gradient_evidence`` and survive a checkpoint (exact resume)."""
    from test_single_path import setup

    from dnas.search.single_path import GumbelStrategy

    _, strategy, batch = setup(GumbelStrategy, real_mpii_root)
    for epoch in range(2):
        strategy.new_epoch(epoch)
        for _ in range(4):
            strategy.step(batch, batch)  # an architecture step, then a weight step
        stats = strategy.end_epoch(epoch, None)
        assert "search/gradient_evidence" in stats
    evidence = strategy.gradient_evidence()
    assert evidence["arch_epochs"] == 2 and evidence["steps"] == 8
    assert evidence["noise_epochs"] == sum(strategy.noise_epochs)
    _, again, _ = setup(GumbelStrategy, real_mpii_root)
    again.load_checkpointables(strategy.get_checkpointables())
    assert again.noise_epochs == strategy.noise_epochs


def test_adam_decides_on_pure_noise():
    """Why decisiveness is not evidence (README, "Gradient evidence"): Adam at the demo's lr on
    zero-mean noise, 28 layers of 7 ops, 180 steps, ends near 0.5; 720 steps end far above."""
    figures = []
    for steps in (180, 720):
        generator = torch.Generator().manual_seed(0)
        alpha = torch.zeros(28, 7, requires_grad=True)
        adam = torch.optim.Adam([alpha], lr=0.1, betas=(0.5, 0.999))
        for _ in range(steps):
            alpha.grad = 1e-5 * torch.randn(28, 7, generator=generator)
            adam.step()
        figures.append(float(torch.softmax(alpha.detach(), -1).max(-1).values.mean()))
    assert 0.4 < figures[0] < 0.55 and figures[1] > 0.6


def test_derives_noise_advice_fits_the_strategy_its_checkpoint_records():
    """The temperature advice is gumbel's alone (binary_gates and darts have no temperature to
    keep high); a checkpoint without a config gets the advice every strategy can take."""
    from dnas.search.derive import evidence_warnings

    noisy = {"steps": 40, "significant": 0.05, "under_noise": 0.05, "p_value": 0.5,
             "noise": False, "arch_epochs": 4, "noise_epochs": 3}  # fmt: skip
    for strategy, temperature in (("gumbel", True), ("darts", False), ("binary_gates", False)):
        ckpt = {"gradient_evidence": noisy, "config": {"search": {"strategy": strategy}}}
        (line,) = evidence_warnings(ckpt)
        assert ("search.single_path.tau_min" in line) == temperature, strategy
    (line,) = evidence_warnings({"gradient_evidence": noisy})
    assert "temperature" not in line and line.endswith("a larger search.batch_size")
