"""Single-path strategies (Gumbel-softmax, binary gates): steps run one (or two) paths."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import TINY_SPACE, write_experiment

from dnas.config import CostConfig, SearchConfig, load_experiment
from dnas.engine.progress import Reporter
from dnas.nn.mixed_op import MixedOp
from dnas.nn.network import Network
from dnas.search.cost_model import get_cost_model
from dnas.search.run import run_search
from dnas.search.single_path import BinaryGateStrategy, GumbelStrategy, SinglePathOptions
from dnas.space.graph import load_space
from tasks.pose.task import PoseOptions, PoseTask


def setup(cls, real_mpii_root, warmup=0, options=None):
    torch.manual_seed(0)
    space = load_space(TINY_SPACE)
    net = Network(space, 16)
    task = PoseTask(PoseOptions(root=str(real_mpii_root)), (64, 64), "test")
    table = get_cost_model("flops").table(space, (64, 64), 16)
    cfg = SearchConfig(warmup_epochs=warmup, drop_path=0.0)
    cfg.options.update(options or {})
    strategy = cls(cfg, CostConfig())
    strategy.adapt_search_space(net, task, table, torch.device("cpu"))
    strategy.new_epoch(0)
    batch = {"input": torch.randn(2, 3, 64, 64), "target": torch.rand(2, 16, 16, 16),
             "target_weight": torch.ones(2, 16, 1)}  # fmt: skip
    return net, strategy, batch


def count_calls(net):
    calls = []
    for block in net.blocks.values():
        if isinstance(block, MixedOp):
            for i, op in enumerate(block.ops):
                op.register_forward_hook(lambda *_, b=block, i=i: calls.append((id(b), i))
                                         if torch.is_grad_enabled() else None)  # fmt: skip
    return calls


def test_both_optimisers_take_the_multi_tensor_kernels(tmp_path):
    _, strategy, _ = setup(GumbelStrategy, tmp_path)  # no data read
    assert strategy.w_opt.defaults["foreach"] and strategy.a_opt.defaults["foreach"]


@pytest.mark.parametrize(("cls", "arch_paths"), [(GumbelStrategy, 1), (BinaryGateStrategy, 2)])
def test_steps_run_one_path_per_layer(cls, arch_paths, real_mpii_root):
    net, strategy, batch = setup(cls, real_mpii_root)
    calls = count_calls(net)
    n_mixed = sum(isinstance(b, MixedOp) for b in net.blocks.values())
    weights, active = strategy.weight_paths()[0]
    strategy.network(batch["input"], weights, active)
    assert len(calls) <= n_mixed  # skip candidates run no module hook
    calls.clear()
    before = [a.detach().clone() for a in strategy.alphas]
    weights, active = strategy.relaxed_paths()
    assert all(len(a) == arch_paths for a in active)
    stats = strategy.arch_step(batch)
    assert len(calls) <= n_mixed * arch_paths  # paths that build a graph (gumbel probes the rest)
    assert stats["arch/cost_loss"] != 0
    moved = [float((a.detach() - b).abs().max()) for a, b in zip(strategy.alphas, before,
                                                                   strict=True)]  # fmt: skip
    assert all(m > 0 for m in moved)  # every layer's alpha got a gradient step


def test_gumbel_temperature_anneals(real_mpii_root):
    _, strategy, _ = setup(GumbelStrategy, real_mpii_root)
    taus = []
    for epoch in range(3):
        strategy.new_epoch(epoch)
        taus.append(strategy.tau)
    assert taus == pytest.approx([5.0, 5.0 * 0.956, 5.0 * 0.956**2])
    strategy.new_epoch(500)
    assert strategy.tau == 0.1
    assert strategy.end_epoch(500, None)["search/temperature"] == 0.1
    _, gates, _ = setup(BinaryGateStrategy, real_mpii_root)  # no relaxation: no temperature
    assert not hasattr(gates, "tau") and "search/temperature" not in gates.end_epoch(0, None)


def test_a_gumbel_subclass_with_options_of_its_own_keeps_search_single_path(real_mpii_root):
    """As README "Extending" subclasses DARTS: the temperature and weight sampling are read
    from search.single_path by section, not from the subclass's own Options."""

    @dataclass
    class MineOptions:
        scale: float = 1.0

    class Mine(GumbelStrategy):
        Options, options_key = MineOptions, "mine"

    options = {"single_path": SinglePathOptions(tau_start=2.0, weight_sampling="uniform"),
               "mine": MineOptions(scale=3.0)}  # fmt: skip
    _, strategy, _ = setup(Mine, real_mpii_root, options=options)
    assert strategy.tau == 2.0 and strategy.options.scale == 3.0
    assert strategy.single_path.weight_sampling == "uniform"


@pytest.mark.parametrize("name", ["gumbel", "binary_gates"])
def test_search_end_to_end(name, tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, search={"strategy": name})
    result = run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["strategy"] == name and set(saved["choices"]) == set(result["arch_probs"])


@pytest.mark.parametrize(
    ("strategy", "precision", "channels_last"),
    [("darts", "bf16", True), ("gumbel", "bf16", False), ("binary_gates", "fp16", True)],
)
def test_mixed_precision_and_channels_last_search(tmp_path, real_mpii_root, strategy, precision,
                                                  channels_last):  # fmt: skip
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, search={"strategy": strategy},
                           precision=precision, channels_last=channels_last)  # fmt: skip
    run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert all(abs(sum(p) - 1.0) < 1e-5 for p in saved["arch_probs"].values())


def test_autocast_really_runs_in_bf16_and_steps_stay_finite():
    from dnas.engine.runtime import Amp, weight_step

    torch.manual_seed(0)
    net = Network(load_space(TINY_SPACE.with_name("tiny_arch.yaml")), 16)
    amp = Amp(torch.device("cpu"), "bf16", channels_last=True)
    amp.model(net)
    seen = []
    net.head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batch = {"input": torch.randn(2, 3, 64, 64), "target": torch.rand(2, 16, 16, 16),
             "target_weight": torch.ones(2, 16, 1)}  # fmt: skip
    params = net.weight_parameters()
    opt = torch.optim.SGD(params, lr=0.01)
    before = [p.detach().clone() for p in params]
    loss = weight_step(net, batch, lambda out, b: ((out - b["target"]) ** 2).mean(), opt, params,
                       amp=amp)  # fmt: skip
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(params, before, strict=True))
    assert net.blocks["stem_0"][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fair_weight_step_trains_every_candidate_once():
    """FairNAS' strict fairness: the m paths of one step hold each candidate of each
    m-candidate layer exactly once; a layer with fewer candidates repeats its permutation."""
    from dnas.search.single_path import fair_paths

    torch.manual_seed(0)
    alphas = [torch.randn(7) * 5, torch.zeros(7), torch.zeros(3)]
    for _ in range(5):
        paths = fair_paths(alphas)
        assert len(paths) == 7
        picks = [[active[layer][0] for _, active in paths] for layer in range(3)]
        assert sorted(picks[0]) == sorted(picks[1]) == list(range(7))
        assert sorted(picks[2][:3]) == [0, 1, 2] and sorted(picks[2][3:6]) == [0, 1, 2]
        for weights, active in paths:
            for w, a in zip(weights, active, strict=True):
                assert w.tolist() == [float(i == a[0]) for i in range(len(w))]


@pytest.mark.parametrize("sampling", ["alpha", "uniform"])
def test_weight_sampling_draws_from_the_named_distribution(sampling, real_mpii_root):
    """``alpha``: weight steps draw from softmax(alpha) (FBNet, ProxylessNAS); ``uniform``:
    uniformly whatever alpha is (SPOS). Frequencies over 3000 draws within 4 sd of p."""
    _, strategy, _ = setup(GumbelStrategy, real_mpii_root)
    strategy.options.weight_sampling = sampling
    with torch.no_grad():
        for alpha in strategy.alphas:
            alpha.copy_(torch.linspace(-2.0, 2.0, len(alpha)))
    n = 3000
    counts = torch.zeros(len(strategy.alphas[0]))
    for _ in range(n):
        (paths,) = strategy.weight_paths()
        counts[paths[1][0][0]] += 1
    alpha = strategy.alphas[0].detach()
    p = torch.softmax(alpha, 0) if sampling == "alpha" else torch.full_like(alpha, 1 / len(alpha))
    sd = (p * (1 - p) / n).sqrt()
    assert bool(((counts / n - p).abs() < 4 * sd).all()), (counts / n, p)


def test_fair_weight_step_equals_the_mean_of_its_paths_gradients(real_mpii_root):
    """One ``fair`` step accumulates the gradient of the mean loss over its m paths: it is the
    SGD step of that mean, and every candidate op's weights receive a gradient."""
    net, strategy, batch = setup(GumbelStrategy, real_mpii_root)
    strategy.options.weight_sampling = "fair"
    torch.manual_seed(1)
    paths = strategy.weight_paths()
    net.train()
    net.zero_grad(set_to_none=True)
    losses = [strategy.task.loss(net(batch["input"], w, a), batch) for w, a in paths]
    torch.stack(losses).mean().backward()
    expected = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    trained = {n for n, g in expected.items() if g.abs().sum() > 0}
    for name, block in net.blocks.items():
        if isinstance(block, MixedOp):
            for i, op in enumerate(block.ops):
                params = [f"blocks.{name}.ops.{i}.{n}" for n, _ in op.named_parameters()]
                assert not params or set(params) & trained, (name, i)
    torch.manual_seed(1)
    state = {n: t.clone() for n, t in net.state_dict().items()}
    strategy.w_opt = torch.optim.SGD(strategy.weights, lr=1.0)
    strategy.step(batch, None)
    params = dict(net.named_parameters())
    for name, grad in expected.items():
        if "alpha" not in name:
            assert torch.allclose(state[name] - params[name].detach(), grad, atol=1e-6), name
