"""One-shot evaluation (dnas.search.oneshot, ``dnas rank``): sub-nets cut from a super net
compute its function on their paths, batch norm is recalibrated to the plain batch average,
shipped architectures map into their space, and the CLI ranks real nets of a real search."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment
from scipy.stats import kendalltau
from torch import nn

from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.engine.runtime import load_optimizer_state
from dnas.engine.train import run_train
from dnas.errors import DnasError
from dnas.nn.network import Network
from dnas.search.cost_model import get_cost_model
from dnas.search.derive import write_architecture
from dnas.search.gap import one_hot_weights
from dnas.search.oneshot import Candidate, choices_in, merge, recalibrate_batch_norm, subnet
from dnas.search.run import run_search
from dnas.space.choices import uniform_choices
from dnas.space.graph import load_space


def randomised_supernet(space, outputs: int = 5) -> Network:
    """A super net with random weights and random batch-norm running statistics."""
    torch.manual_seed(0)
    net = Network(space, outputs)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return net.eval()


def test_a_subnet_is_the_super_net_restricted_to_its_paths():
    space = load_space(TINY_SPACE)
    supernet = randomised_supernet(space)
    x = torch.randn(2, 3, 64, 64)
    outputs = []
    for seed in range(3):
        choices = uniform_choices(space.searchable_layers, np.random.default_rng(seed))
        active = [[list(layer.candidates).index(choices[layer.name])]
                  for layer in space.searchable_layers]  # fmt: skip
        with torch.no_grad():
            expected = supernet(x, one_hot_weights(supernet, choices), active)
            got = subnet(space, 5, supernet.state_dict(), choices).eval()(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        outputs.append(got)
    assert not torch.allclose(outputs[0], outputs[1])  # the choices matter


def test_recalibration_is_the_plain_average_of_each_batch_statistics():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.1))
    net[1].running_mean.fill_(5.0)
    batches = [{"input": torch.randn(6, 3, 8, 8) * (i + 1)} for i in range(4)]
    recalibrate_batch_norm(net, batches, torch.device("cpu"))
    with torch.no_grad():
        feats = [net[0](b["input"]) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1) for f in feats])
    torch.testing.assert_close(net[1].running_mean, means.mean(0))
    torch.testing.assert_close(net[1].running_var, variances.mean(0))
    assert not net.training and net[1].momentum is None


def test_efficientpose_a_maps_into_the_small_space_with_stage_3_cut_short():
    space, arch = load_space("mbv2_pose_small"), load_space("efficientpose-a")
    choices = choices_in(space, arch)
    assert choices["stage3.8"] == choices["stage3.9"] == "skip"
    assert choices["stage1.1"] == "k7e3" and len(choices) == len(space.searchable_layers)
    flops = get_cost_model("flops")
    cost = flops.table(space, (64, 64), 14).of_choices(choices)
    assert cost == pytest.approx(flops.table(arch, (64, 64), 14).of_choices({}), rel=1e-9)
    with pytest.raises(DnasError, match="a search space, not an architecture"):
        choices_in(space, space)
    with pytest.raises(DnasError, match="is not a layer of"):
        choices_in(load_space(TINY_SPACE), arch)
    wider = arch.replace_head(dataclasses.replace(arch.head, options={"deconv_widths": [32, 32]}))
    with pytest.raises(DnasError, match="input channels or head differ"):
        choices_in(space, wider)


def test_repeated_names_are_numbered_and_repeated_nets_pooled():
    a, b = {"l1": "k3e3"}, {"l1": "skip"}
    merged = merge([Candidate("net", a, [1.0]), Candidate("net", b), Candidate("x", a, [3.0]),
                    Candidate("net", {"l1": "k5e6"})])  # fmt: skip
    assert [(c.name, c.standalone) for c in merged] == [("net", [1.0, 3.0]), ("net#2", []),
                                                         ("net#3", [])]  # fmt: skip


def test_the_weight_optimiser_of_a_checkpoint_must_be_the_configs():
    params = [nn.Parameter(torch.ones(2))]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = torch.ones(2)
    sgd.step()
    adam = torch.optim.Adam(params, lr=1e-3)
    with pytest.raises(DnasError, match="another optimiser than Adam"):
        load_optimizer_state(adam, sgd.state_dict(), "search.weight_optimizer.type")
    again = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    older = sgd.state_dict()
    older["param_groups"][0].pop("foreach", None)  # a group key another torch may lack
    load_optimizer_state(again, older, "search.weight_optimizer.type")
    torch.testing.assert_close(again.state[params[0]]["momentum_buffer"], torch.ones(2))


def test_rank_scores_real_nets_of_a_real_search(tmp_path, real_mpii_root):
    exp_path = write_experiment(tmp_path / "exp.yaml", real_mpii_root, TINY_SPACE,
                                search={"strategy": "gumbel"})  # fmt: skip
    exp = load_experiment(exp_path)
    quiet = Reporter(lambda _: None)
    run_search(exp, tmp_path / "search", quiet)
    space = load_space(TINY_SPACE)
    runs = []
    for seed in range(3):
        arch = tmp_path / f"arch{seed}.yaml"
        choices = uniform_choices(space.searchable_layers, np.random.default_rng(10 + seed))
        write_architecture(space.with_choices(choices, f"net{seed}"), arch)
        run_train(exp, str(arch), tmp_path / f"train{seed}", report=quiet)
        runs.append(str(tmp_path / f"train{seed}"))
    args = ["rank", str(tmp_path / "search"), *runs, "--random", "2", "--calibration-batches", "2"]
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [c["name"] for c in report["candidates"]]
    assert names[:4] == ["derived", "net0", "net1", "net2"] and report["trained"] == 3
    distinct = {tuple(sorted(c["choices"].items())) for c in report["candidates"]}
    assert len(distinct) == len(names) in (5, 6)  # a random draw equal to another is merged
    trained = [c for c in report["candidates"] if c["standalone"]]
    for c in trained:
        results = json.loads((tmp_path / f"train{c['name'][-1]}" / "results.json").read_text())
        assert c["standalone"] == [results[results["primary_metric"]]]
    tau, _ = kendalltau([c["oneshot"] for c in trained], [c["standalone_mean"] for c in trained])
    assert report["kendall_tau"] == (None if np.isnan(tau) else pytest.approx(tau))
    derived = report["candidates"][0]["oneshot"]
    others = [c["oneshot"] for c in report["candidates"][1:]]
    above = sum((derived > o) + 0.5 * (derived == o) for o in others) / len(others)
    assert report["derived_above"] == above  # ties count half
    target = report["candidates"][0]["cost"]  # the derived net's
    within = [c for c in report["candidates"] if abs(c["cost"] - target) <= 0.03 * target]
    best = max(within, key=lambda c: c["oneshot"])
    assert report["best"] == best["name"]
    text = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "best.yaml")])
    assert text.exit_code == 0 and "Kendall tau, one-shot vs standalone over 3" in text.output
    assert choices_in(space, load_space(tmp_path / "best.yaml")) == best["choices"]
    again = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "best.yaml")])
    assert again.exit_code == 1 and "--force" in again.output
    # the same nets in another super net: itself ranks them alike, another space is refused
    run_search(load_experiment(exp_path, ["seed=1"]), tmp_path / "search1", quiet)
    compared = CliRunner().invoke(cli, [*args, "--compare", str(tmp_path / "search"),
                                        "--compare", str(tmp_path / "search1"),
                                        "--format", "json"])  # fmt: skip
    assert compared.exit_code == 0, compared.output
    itself, other = json.loads(compared.stdout)["compared"]
    assert itself["kendall_tau"] == pytest.approx(1.0)
    assert itself["oneshot"] == {c["name"]: c["oneshot"] for c in report["candidates"]}
    assert set(other["oneshot"]) == set(names) and other["oneshot"] != itself["oneshot"]
    tau, _ = kendalltau([c["oneshot"] for c in report["candidates"]],
                        [other["oneshot"][n] for n in names])  # fmt: skip
    assert other["kendall_tau"] == (None if np.isnan(tau) else pytest.approx(tau))
    small = tmp_path / "small.yaml"
    small.write_text(TINY_SPACE.read_text().replace("ops: [k3e3, k3e6]", "ops: [k3e3, k5e3]"))
    run_search(load_experiment(write_experiment(tmp_path / "exp2.yaml", real_mpii_root, small,
                                                search={"strategy": "gumbel"})),
               tmp_path / "search2", quiet)  # fmt: skip
    refused = CliRunner().invoke(cli, [*args, "--compare", str(tmp_path / "search2")])
    assert refused.exit_code == 1 and "searched another space" in refused.output
    broken = tmp_path / "train0" / "results.json"
    for text, words in ((json.dumps({"Mean": 1.0}), "primary_metric: expected"),
                        (json.dumps([1]), "primary_metric: expected"),
                        ("{", "not valid JSON")):  # fmt: skip
        broken.write_text(text)
        bad = CliRunner().invoke(cli, ["rank", str(tmp_path / "search"), runs[0]])
        assert bad.exit_code == 1 and f"{broken}: {words}" in bad.output
    bad = CliRunner().invoke(cli, ["rank", str(tmp_path / "search"), str(TINY_SPACE)])
    assert bad.exit_code == 1 and "a search space, not an architecture" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
