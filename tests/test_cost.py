"""Params/MACs of the published nets, and the cost model's expected cost (Eq. 4-6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_SPACE

from dnas.cli import cli
from dnas.config import load_experiment
from dnas.nn.network import Network
from dnas.nn.profile import count_macs, count_params
from dnas.search.cost_model import get_cost_model
from dnas.search.objective import cost_loss
from dnas.space.graph import load_space

PAPER = [  # net, input, joints, params, MACs (PAPER.md, from the official code)
    ("efficientpose-a", "256x256", 16, 1_299_360, 542_220_288),
    ("efficientpose-a", "256x192", 17, 1_299_393, 406_763_520),
    ("efficientpose-b", "256x256", 16, 3_252_912, 1_394_622_464),
    ("efficientpose-b", "256x192", 17, 3_252_945, 1_046_065_152),
    ("efficientpose-c", "256x256", 16, 5_002_312, 1_862_033_408),
    ("efficientpose-c", "256x192", 17, 5_002_345, 1_396_623_360),
]


@pytest.mark.parametrize(("net", "size", "joints", "params", "macs"), PAPER)
def test_dnas_cost_reproduces_paper_table(net, size, joints, params, macs):
    args = ["cost", net, "--input-size", size, "--joints", str(joints), "--format", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["params"], report["macs"]) == (params, macs)
    assert report["backbone_macs"] + report["head_macs"] == macs


def test_cost_outputs_option_and_its_earlier_name():
    def run(*extra):
        return CliRunner().invoke(cli, ["cost", "efficientpose-a", "--format", "json", *extra])

    new, old = run("--outputs", "17"), run("--joints", "17")
    assert new.exit_code == old.exit_code == 0, new.output + old.output
    assert json.loads(new.output) == json.loads(old.output)
    assert json.loads(run().output)["params"] != json.loads(new.output)["params"]  # default 16
    both = run("--outputs", "16", "--joints", "17")
    assert both.exit_code == 1 and "earlier name of --outputs" in both.output
    assert "--joints" not in CliRunner().invoke(cli, ["cost", "--help"]).output


def test_profiler_agrees_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    net = Network(load_space("efficientpose-a"), 16).eval()
    x = torch.zeros(1, 3, 128, 96)
    with FlopCounterMode(display=False) as counter:
        net(x)
    assert count_macs(net, x) * 2 == counter.get_total_flops()


def test_text_output_and_search_space_range():
    result = CliRunner().invoke(cli, ["cost", "efficientpose-a"])
    assert "542,220,288" in result.output and "1,299,360" in result.output
    report = json.loads(CliRunner().invoke(cli, ["cost", "mbv2_pose_small", "--format",
                                                 "json"]).output)  # fmt: skip
    assert report["min_macs"] < 542_220_288 < report["max_macs"]
    assert report["architectures"] == 6**4 * 7**24  # 4 reshaping layers, 24 with skip


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_expected_cost_of_one_hot_alphas_is_the_architecture_cost(metric):
    space = load_space(TINY_SPACE)
    table = get_cost_model(metric).table(space, (64, 64), 16)
    net = Network(space, 16)
    gen = torch.Generator().manual_seed(0)
    choices = {}
    with torch.no_grad():
        for layer, alpha in zip(space.searchable_layers, net.alphas, strict=True):
            k = int(torch.randint(len(layer.candidates), (1,), generator=gen))
            choices[layer.name] = layer.candidates[k]
            alpha.fill_(-1e4)
            alpha[k] = 1e4
    expected = float(table.expected(net.searchable, net.arch_probs()).detach())
    assert expected == pytest.approx(table.of_choices(choices), rel=1e-6)
    derived = Network(space.with_choices(choices), 16)
    exact = (
        count_macs(derived, torch.zeros(1, 3, 64, 64))
        if metric == "flops"
        else count_params(derived)
    )
    assert table.of_choices(choices) * 1e6 == pytest.approx(exact, abs=0.5)


def test_expected_cost_is_the_probability_weighted_sum():
    space = load_space(TINY_SPACE)
    table = get_cost_model("flops").table(space, (64, 64), 16)
    layers = space.searchable_layers
    probs = [torch.softmax(torch.randn(len(lay.candidates)), 0) for lay in layers]
    manual = table.fixed + sum(
        sum(float(p[i]) * table.layers[lay.name][op] for i, op in enumerate(lay.candidates))
        for lay, p in zip(layers, probs, strict=True)
    )
    got = table.expected([lay.name for lay in layers], probs)
    assert float(got) == pytest.approx(manual, rel=1e-6)


def test_cost_loss_formula_and_gradient():
    cost = torch.tensor(250.0, requires_grad=True)
    loss = cost_loss(cost, 0.3, 5.0)
    assert loss.item() == pytest.approx(0.3 * math.log(250.0) / math.log(5.0))
    loss.backward()
    assert float(cost.grad) == pytest.approx(0.3 / (250.0 * math.log(5.0)))


def test_cost_table_is_cached_and_keyed_by_input(tmp_path):
    space = load_space(TINY_SPACE)
    model = get_cost_model("flops")
    first = model.table(space, (64, 64), 16)
    files = list((tmp_path / "cache" / "cost_tables").glob("*.json"))
    assert len(files) == 1
    assert model.table(space, (64, 64), 16) == first
    bigger = model.table(space, (128, 128), 16)
    assert bigger.fixed > first.fixed
    assert len(list((tmp_path / "cache" / "cost_tables").glob("*.json"))) == 2


def test_budget_forms_penalise_only_above_the_target():
    from dnas.config import CostConfig
    from dnas.search.objective import budget_penalty as cost_penalty

    hinge = CostConfig(form="hinge", target=100.0, weight=2.0)
    power = CostConfig(form="power", target=100.0, weight=2.0, beta=3.0)
    for cfg in (hinge, power):
        below = torch.tensor(80.0, requires_grad=True)
        assert cost_penalty(below, cfg).item() == 0.0
        cost_penalty(below, cfg).backward()
        assert float(below.grad) == 0.0
    assert float(cost_penalty(torch.tensor(150.0), hinge)) == pytest.approx(2.0 * 0.5)
    assert float(cost_penalty(torch.tensor(150.0), power)) == pytest.approx(2.0 * (1.5**3 - 1))


def test_budget_form_needs_a_target(tmp_path):
    from dnas.config import load_experiment
    from dnas.errors import ConfigError

    path = tmp_path / "exp.yaml"
    path.write_text("task: {name: pose, root: x}\ncost_model: {form: hinge}\n")
    with pytest.raises(ConfigError, match=r"cost_model.target: required by form hinge"):
        load_experiment(path)


def test_a_headless_space_is_costed_with_its_tasks_head_from_a_config(tmp_path, synth_root):
    """A space without head: takes its task's default head in a search; dnas cost gives it
    that head (and the config's outputs and input size) with --config, and says so without."""
    from conftest import write_experiment

    from dnas.nn.profile import cost_report
    from dnas.task import build_space, build_task

    data = yaml.safe_load(Path(TINY_SPACE).read_text())
    data.pop("head")
    headless = tmp_path / "headless.yaml"
    headless.write_text(yaml.safe_dump(data))
    exp_path = write_experiment(tmp_path / "exp.yaml", synth_root, space=headless)
    bare = CliRunner().invoke(cli, ["cost", str(headless)])
    assert bare.exit_code == 1 and bare.output == (
        f"Error: {headless}: head: missing: this space has no head section (give --config "
        "EXPERIMENT to cost it with the head its task adds)\n")  # fmt: skip
    result = CliRunner().invoke(cli, ["cost", "--config", str(exp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    exp = load_experiment(exp_path)
    task = build_task(exp)
    assert json.loads(result.output) == cost_report(build_space(str(headless), task, exp),
                                                    (64, 64), task.num_outputs)  # fmt: skip
    wider = CliRunner().invoke(cli, ["cost", "--config", str(exp_path), "--input-size", "128x128",
                                     "--format", "json"])  # fmt: skip
    assert json.loads(wider.output)["min_macs"] > json.loads(result.output)["min_macs"]
    given = CliRunner().invoke(cli, ["cost", "--config", str(exp_path), "--outputs", "3"])
    assert given.exit_code == 1 and "with --config the task sets the outputs" in given.output
    overridden = CliRunner().invoke(cli, ["cost", "--config", str(exp_path), "--format", "json",
                                          "--set", "input_size=[128, 128]"])  # fmt: skip
    assert json.loads(overridden.output) == json.loads(wider.output)
    stray = CliRunner().invoke(cli, ["cost", "efficientpose-a", "--set", "seed=1"])
    assert stray.exit_code == 1 and "--set overrides keys of --config" in stray.output
