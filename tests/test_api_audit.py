"""Mistakes found by the 2026-12-07 audit of the Python API, the space YAML and plugins: an
Experiment changed in code, spaces that built silently wrong nets, plugins that clashed with
built-ins or each other. Each is a one-line error (or, for a broken plugin, a warning naming it)
before any run starts."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_ARCH, TINY_SPACE, write_experiment
from torch import nn

import dnas
from dnas import checkpoint, registry
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.errors import ConfigError, DnasError
from dnas.registry import COST_MODELS, OP_KINDS, STRATEGIES
from dnas.schema import parse_yaml
from dnas.search.cost_model import CostModel, CostTable, coverage_problem
from dnas.search.darts import DartsStrategy
from dnas.space.graph import load_space
from dnas.space.ops import OpKind, parse_op, register_op_kind


@pytest.mark.parametrize("key,value,message", [
    ("search.steps_per_epoch", 0, "search.steps_per_epoch: expected a value >= 1, got 0"),
    ("cost_model.weight", -1.0, "cost_model.weight: expected a value >= 0.0, got -1.0"),
    ("train.schedule", "cosin", "train.schedule: expected one of step, cosine, got 'cosin'"),
    ("search.epochs", "2", "search.epochs: expected an integer, got str '2'"),
    ("input_size", 64, "input_size: expected a list, got int 64"),
    ("head", "fpn_lite", "head: expected a mapping, got str 'fpn_lite'"),
])  # fmt: skip
def test_an_experiment_changed_in_code_is_checked_as_its_file_is(tmp_path, finished, key, value,
                                                                 message):  # fmt: skip
    exp = load_experiment(finished["exp"])
    owner, _, name = key.rpartition(".")
    setattr(exp if not owner else getattr(exp, owner), name, value)
    with pytest.raises(ConfigError, match=f"exp.yaml: {message}"):
        dnas.run_search(exp, tmp_path / "s")
    with pytest.raises(ConfigError, match=f"exp.yaml: {message}"):
        dnas.run_train(exp, str(TINY_ARCH), tmp_path / "t")
    assert list(tmp_path.iterdir()) == []  # refused before a folder was made


def test_a_run_is_given_an_experiment_and_a_folder(tmp_path, finished):
    with pytest.raises(DnasError, match=r"expected an Experiment \(dnas.load_experiment\(PATH\)"
                                        r"\), got str 'exp.yaml'"):  # fmt: skip
        dnas.run_search("exp.yaml", tmp_path / "s")
    with pytest.raises(DnasError, match="out_dir: expected a folder path, got None"):
        dnas.run_search(load_experiment(finished["exp"]), None)


def space_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(TINY_SPACE.read_text())
    edit(data)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_space_mistakes_that_built_wrong_nets_are_refused(tmp_path):
    def float_stride(d):
        d["stages"][0]["stride"] = 2.0

    with pytest.raises(ConfigError, match=r"stages\[0\].stride: expected stride 1 or 2, got 2.0"):
        load_space(space_with(tmp_path, float_stride))

    def leading_zero(d):
        d["stages"][0]["ops"] = ["k3e3", "k03e3", "skip"]

    with pytest.raises(ConfigError, match="op 'k03e3': write its numbers without leading zeros"):
        load_space(space_with(tmp_path, leading_zero))

    def dead_stem_layer(d):  # stage 1 reads stem.0, so stem.1 would be built and costed unread
        d["stem"].append({"op": "conv3", "width": 64, "stride": 1})
        d["stages"][0]["input"] = "stem.0"

    with pytest.raises(ConfigError, match=r"stem\[1\]: the output of stem layer 'stem.1' "
                                          r"never reaches the head"):  # fmt: skip
        load_space(space_with(tmp_path, dead_stem_layer))


def test_yaml_merge_keys_work_and_duplicates_are_still_refused():
    assert parse_yaml("a: &b {x: 1, y: 2}\nc: {<<: *b, y: 3}") == {
        "a": {"x": 1, "y": 2}, "c": {"x": 1, "y": 3}}  # fmt: skip
    with pytest.raises(yaml.YAMLError, match="duplicate key 'y'"):
        parse_yaml("a: &b {x: 1}\nc: {<<: *b, y: 3, y: 4}")


def test_a_cost_table_with_a_negative_cost_is_refused():
    space = load_space(TINY_SPACE)
    layers = {lay.name: dict.fromkeys(lay.candidates, 1.0) for lay in space.searchable_layers}
    assert coverage_problem(CostTable("macs", "MMAC", 0.5, layers, {}), space) is None
    first = space.searchable_layers[0]
    negative = {**layers, first.name: {**layers[first.name], first.candidates[0]: -2.0}}
    assert coverage_problem(CostTable("macs", "MMAC", 0.5, negative, {}), space) == (
        f"layer {first.name}: a negative cost -2"
    )
    assert "cheapest net a negative cost" in coverage_problem(
        CostTable("macs", "MMAC", -100.0, layers, {}), space)  # fmt: skip


def test_derive_of_a_folder_that_holds_no_search_says_what_it_is(tmp_path, finished):
    with pytest.raises(DnasError, match=f"a train run, not a search; its architecture is "
                                        f"{finished['train'] / 'arch.yaml'}"):  # fmt: skip
        dnas.derive(finished["train"])
    with pytest.raises(DnasError, match="no search.pt in this folder"):
        dnas.derive(tmp_path)
    with pytest.raises(DnasError, match="expected a search run folder or its search.pt, got 3"):
        dnas.derive(3)


def test_a_plugin_that_registers_a_built_in_name_is_refused_not_the_built_in(
        tmp_path, monkeypatch):  # fmt: skip
    (tmp_path / "clash_dnas_plugin.py").write_text(
        "from dnas.registry import COST_MODELS\n"
        "class Mine: pass\n"
        "COST_MODELS.register('clash_probe')(Mine)\n"
    )  # fmt: skip
    (tmp_path / "own_dnas_module.py").write_text(
        "from dnas.registry import COST_MODELS\n"
        "class Own: pass\n"
        "COST_MODELS.register('clash_probe')(Own)\n"
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    third = SimpleNamespace(name="clash", value="clash_dnas_plugin", dist=None)
    own = SimpleNamespace(name="own", value="own_dnas_module", dist=SimpleNamespace(name="dnas"))
    monkeypatch.setattr(registry, "entry_points", lambda group: [third, own])  # third first
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_failed", [])
    with pytest.warns(UserWarning, match=r"'clash' \(clash_dnas_plugin\) not loaded: ValueError: "
                                         r"cost model 'clash_probe' is registered twice: by "
                                         r"own_dnas_module and clash_dnas_plugin"):  # fmt: skip
        registry.load_plugins()
    assert COST_MODELS.get("clash_probe").__module__ == "own_dnas_module"
    COST_MODELS._items.pop("clash_probe")


def test_a_script_that_registers_a_built_in_name_is_refused_at_its_own_line():
    """Code run directly (a script, a notebook) registers before any plugin loads: the built-ins
    load first, so its clash is a ValueError at its registration, and the built-in plugin
    (segmentation, its head and data command with it) is never dropped."""
    script = (
        "from dnas.registry import HEADS, TASKS\n"
        "try:\n    TASKS.register('segmentation')(type('Mine', (), {}))\n"
        "except ValueError as exc:\n    print(exc)\n"
        "print(TASKS.get('segmentation').__module__, 'fpn_lite' in HEADS.names())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "task 'segmentation' is registered twice: by tasks.segmentation.task and __main__",
        "tasks.segmentation.task True",
    ]
    assert "not loaded" not in done.stderr


@dataclasses.dataclass
class ClashingOptions:
    target: float = 1.0  # a key of cost_model: itself, which the plugin could never receive


class ClashingCost(CostModel):
    metric, unit, Options = "clash", "units", ClashingOptions

    def build(self, space, input_hw, num_outputs) -> CostTable:
        raise AssertionError("never built")


@dataclasses.dataclass
class MyRandomOptions:
    samples: int = 3


class OwnSection(DartsStrategy):
    options_key, Options = "random", MyRandomOptions  # the built-in random search's section


def test_plugin_options_that_clash_with_core_keys_or_sections_name_the_plugin(
        tmp_path, finished, monkeypatch):  # fmt: skip
    monkeypatch.setitem(COST_MODELS._items, "clashing", ClashingCost)
    with pytest.raises(DnasError, match=r"cost model 'clashing' \(test_api_audit\): its options "
                                        r"target are keys of cost_model: itself"):  # fmt: skip
        load_experiment(finished["exp"], ["cost_model.type=clashing"])
    monkeypatch.delitem(COST_MODELS._items, "clashing")
    monkeypatch.setitem(STRATEGIES._items, "a_own_section", OwnSection)  # sorts before random
    match = (
        r"strategy 'a_own_section' \(test_api_audit\): search.random is already the "
        r"section of other options \(dnas.search.random_search.RandomSearchOptions\)"
    )
    with pytest.raises(DnasError, match=match):
        load_experiment(finished["exp"])


def test_an_op_kind_that_overlaps_another_is_named_when_an_op_matches_both(monkeypatch):
    assert parse_op("k3e3").kind == "mbconv"
    monkeypatch.setattr(OP_KINDS, "_items", dict(OP_KINDS._items))
    register_op_kind(dataclasses.replace(OP_KINDS.get("mbconv"), name="aa_mb"))
    match = "op 'k3e3' matches the patterns of op kinds 'aa_mb' and 'mbconv': a plugin's op kind"
    with pytest.raises(ValueError, match=match):
        parse_op("k3e3")
    assert parse_op("conv3").kind == "conv"  # ops of other kinds still parse
    assert isinstance(OP_KINDS.get("mbconv"), OpKind)


class NoOptionsHead:
    """A head plugin that forgot its Options."""


class TableAsDict(CostModel):
    metric, unit = "dicty", "units"

    def build(self, space, input_hw, num_outputs):
        return {"stage1.0": {}}


def test_a_plugin_that_breaks_its_contract_is_named_in_one_line(tmp_path, monkeypatch):
    from dnas.registry import check_concrete

    with pytest.raises(DnasError, match=r"head 'h' \(test_api_audit.NoOptionsHead\): Options "
                                        r"must be a dataclass of its YAML keys"):  # fmt: skip
        check_concrete(NoOptionsHead, "head", "h", needs_options=True)
    check_concrete(NoOptionsHead, "strategy", "s")  # no Options: fine where none is needed
    with pytest.raises(DnasError, match=r"\(test_api_audit.NoOptionsHead\) does not set metric, "
                                        r"unit \(a string each\)"):  # fmt: skip
        check_concrete(NoOptionsHead, "cost model", "c", attributes=("metric", "unit"))
    monkeypatch.setattr(NoOptionsHead, "Options", dict, raising=False)  # not a dataclass
    with pytest.raises(DnasError, match="Options must be a dataclass"):
        check_concrete(NoOptionsHead, "strategy", "s")
    monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path))
    with pytest.raises(DnasError, match=r"cost model test_api_audit.TableAsDict: build\(\) "
                                        r"returned a dict, not a CostTable"):  # fmt: skip
        TableAsDict().table(load_space(TINY_SPACE), (64, 64), 16)


class Scored:
    """A task whose evaluate() returns what it is given: a plugin's possible results."""

    name = "scored"

    def __init__(self, result) -> None:
        self.result = result

    def evaluate(self, model, loader, device, out_dir, save_vis=0):
        return self.result


def test_a_tasks_malformed_evaluation_is_named_before_it_is_used():
    from dnas.task import Metrics, evaluate

    ok = Metrics({"mIoU": 41.5}, "mIoU")
    assert evaluate(Scored(ok), None, None, None, None) is ok
    where = r"task 'scored' \(test_api_audit.Scored\): evaluate\(\)"
    cases = [({"mIoU": 1.0}, f"{where} returned a dict, not a dnas.Metrics"),
             (Metrics({"miou": 1.0}, "mIoU"), f"{where}: its primary 'mIoU' is not among its "
                                              r"values \(miou\)"),
             (Metrics({"mIoU": float("nan")}, "mIoU"), f"{where}: mIoU is nan, not a finite "
                                                       "number")]  # fmt: skip
    for result, message in cases:
        with pytest.raises(DnasError, match=message):
            evaluate(Scored(result), None, None, None, None)


def test_a_plugin_command_that_is_not_a_click_command_is_skipped_and_named(monkeypatch):

    from dnas.registry import COMMANDS

    def hello() -> None:
        """Registered without @click.command."""

    monkeypatch.setitem(COMMANDS._items, "hello", hello)
    result = CliRunner().invoke(cli, ["hello"])
    assert result.exit_code == 1
    assert "warning: command 'hello' (test_api_audit) is not a click command" in result.output
    assert "No such command 'hello'" in result.output


def test_an_input_below_the_spaces_total_stride_is_refused_with_the_stride(tmp_path,
                                                                         synth_root):  # fmt: skip
    """Once advised task.heatmap_stride: 2, and the search then ran on 1x1 maps."""

    assert load_space(TINY_SPACE).total_stride() == 16
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, input_size=[8, 8])
    result = CliRunner().invoke(cli, ["search", str(exp), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1 and result.output.strip() == (
        f"Error: {exp}: input_size: 8x8: smaller than the 16 that the strides of space tiny "
        "divide it by; expected sides of at least 16")  # fmt: skip


def test_a_search_space_object_given_for_a_path_says_how_to_pass_it(tmp_path, finished):
    arch, _ = dnas.derive(finished["search"])
    match = rf"got the SearchSpace '{arch.name}'; write it with dnas.write_architecture\(arch, PATH"
    with pytest.raises(DnasError, match=match):
        dnas.run_train(load_experiment(finished["exp"]), arch, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    dnas.write_architecture(arch, tmp_path / "arch.yaml")  # cost_report takes either
    assert dnas.cost_report(arch, (64, 64), 16) == dnas.cost_report(str(tmp_path / "arch.yaml"),
                                                                    (64, 64), 16)  # fmt: skip


@dataclasses.dataclass
class NoOptions:
    """A head plugin's (empty) options."""


class TypeErrorHead:
    Options = NoOptions

    def __init__(self, in_channels, num_outputs, options) -> None:
        raise TypeError("unsupported operand type(s) for %: 'list' and 'int'")


def test_a_head_plugin_that_raises_type_error_is_named_not_the_space(monkeypatch):
    from dnas.nn.heads import build_head
    from dnas.registry import HEADS

    monkeypatch.setitem(HEADS._items, "typeerror_head", TypeErrorHead)
    space = load_space(TINY_SPACE)
    space = space.replace_head(dataclasses.replace(space.head, type="typeerror_head", options={}))
    with pytest.raises(DnasError, match=r"head 'typeerror_head' \(test_api_audit.TypeErrorHead\)"
                                        r": __init__\(in_channels, num_outputs, options\) failed: "
                                        r"unsupported operand"):  # fmt: skip
        build_head(space, 16)


class ChannelOffHead(nn.Module):
    Options = NoOptions

    def __init__(self, in_channels, num_outputs, options) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels[0] + 1, num_outputs, 1)  # one channel off

    def forward(self, features):
        return self.conv(features[0])


class PairHead(ChannelOffHead):
    def forward(self, features):
        return features[0], features[0]


@pytest.mark.parametrize(("head", "problem"), [
    (ChannelOffHead, r"its forward fails on the meta device on inputs of 16x4x4: RuntimeError: "),
    (PairHead, r"its forward returns a tuple, not one tensor"),
])  # fmt: skip
def test_a_head_plugin_whose_forward_fails_is_named_in_one_line(monkeypatch, head, problem):
    """Found on the meta device when the cost table or the output shape is computed, as one
    line naming the head, not a traceback from inside the profiler."""
    from dnas.nn.profile import head_output_shape

    monkeypatch.setitem(registry.HEADS._items, "odd_head", head)
    space = load_space(TINY_SPACE)
    space = space.replace_head(dataclasses.replace(space.head, type="odd_head", options={}))
    match = rf"^head 'odd_head' \(test_api_audit\.{head.__name__}\): {problem}"
    with pytest.raises(DnasError, match=match):
        dnas.cost_table(space, (64, 64), outputs=16)
    with pytest.raises(DnasError, match=match):
        head_output_shape(space, (64, 64), 16)


def test_cost_functions_name_the_argument_they_were_given_wrong():
    space = load_space(TINY_SPACE)
    for outputs in (16.5, None, 0):
        match = rf"cost_table: expected outputs, .* \(an integer >= 1\), got {outputs}"
        with pytest.raises(DnasError, match=match):
            dnas.cost_table(space, (64, 64), outputs=outputs)
    with pytest.raises(
        DnasError, match=r"cost_report: expected input_hw \(height, width\), got 64"
    ):
        dnas.cost_report(str(TINY_ARCH), 64, 16)
    with pytest.raises(DnasError, match="cost_report: expected num_outputs, an integer >= 1"):
        dnas.cost_report(str(TINY_ARCH), (64, 64), 0)
    assert dnas.cost_report(str(TINY_ARCH), (64, 64), 16)["macs"] > 0


@dataclasses.dataclass
class SetOptions:
    tags: set = dataclasses.field(default_factory=set)  # no YAML type: the reader cannot check it


def test_a_plugin_options_field_of_a_type_the_reader_cannot_check_is_named():
    from dnas.schema import from_dict

    assert from_dict(SetOptions, {}, "exp.yaml", "search.mine").tags == set()
    with pytest.raises(DnasError, match=r"test_api_audit.SetOptions.tags: its type <class 'set'> "
                                        r"is none the YAML reader checks"):  # fmt: skip
        from_dict(SetOptions, {"tags": ["a"]}, "exp.yaml", "search.mine")


class ShortProbs(DartsStrategy):
    """A strategy plugin whose probabilities miss each layer's last candidate."""

    def arch_probs(self):
        return {name: probs[:-1] for name, probs in super().arch_probs().items()}


def test_a_strategys_probabilities_off_the_space_are_named_before_the_search(
    tmp_path, synth_root, monkeypatch
):
    monkeypatch.setitem(STRATEGIES._items, "shortprobs", ShortProbs)
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    out = tmp_path / "s"
    args = ["search", str(exp), "-o", str(out), "--set", "search.strategy=shortprobs"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output.strip() == (
        "Error: strategy 'shortprobs' (test_api_audit.ShortProbs): arch_probs(): layer stage1.0: "
        "1 values for 2 candidate ops"
    )  # fmt: skip
    assert not out.exists()  # refused at set-up, before an epoch


def test_op_probabilities_are_checked_as_distributions_over_a_spaces_ops():
    from dnas.space.choices import probability_problem

    space = load_space(TINY_SPACE)
    sizes = [len(lay.candidates) for lay in space.searchable_layers]
    uniform = {lay.name: [1 / len(lay.candidates)] * len(lay.candidates)
               for lay in space.searchable_layers}  # fmt: skip
    assert probability_problem(uniform, space) is None
    assert dnas.decisiveness(uniform) == pytest.approx(sum(1 / n for n in sizes) / len(sizes))
    first = space.searchable_layers[0].name
    cases = [({}, r"expected \{layer: \[op probabilities\]\}, got \{\}"),
             ({"a": [0.9, 0.9]}, r"layer a: \[0.9, 0.9\] are not op probabilities \(each in "
                                 r"0..1, summing to 1\)"),
             ({"a": [float("nan"), 1.0]}, "layer a: .* are not op probabilities"),
             ({"a": ["x"]}, r"layer a: expected a list of numbers, got \['x'\]")]  # fmt: skip
    for probs, message in cases:
        with pytest.raises(DnasError, match=f"decisiveness: {message}"):
            dnas.decisiveness(probs)
    assert probability_problem({**uniform, "nowhere": [1.0]}, space) == (
        "names 'nowhere', not a searchable layer of tiny"
    )
    assert probability_problem({k: v for k, v in uniform.items() if k != first}, space) == (
        f"has no probabilities for layer {first} of tiny"
    )
    rounded = {"a": [0.333, 0.333, 0.333], "b": [0.143] * 7}  # three digits, as bf16 keeps
    assert dnas.decisiveness(rounded) == pytest.approx(0.238)


def test_random_search_reports_uniform_probabilities_before_its_first_draw():
    from dnas.search.random_search import RandomSearchStrategy

    layers = load_space(TINY_SPACE).searchable_layers
    strategy = SimpleNamespace(best=None, choices={}, layers=layers)
    probs = RandomSearchStrategy.arch_probs(strategy)
    assert [probs[lay.name] for lay in layers] == [[1 / len(lay.candidates)] * len(lay.candidates)
                                                   for lay in layers]  # fmt: skip
    strategy.choices = {lay.name: lay.candidates[1] for lay in layers}
    probs = RandomSearchStrategy.arch_probs(strategy)
    assert all(probs[lay.name].index(1.0) == 1 and sum(probs[lay.name]) == 1 for lay in layers)


@pytest.mark.parametrize("head, message", [
    ({"type": "unet"}, r"head.type: unknown head 'unet' \(registered: .*slim_deconv"),
    ({"type": "slim_deconv", "bogus": 1}, "head.bogus: unknown key"),
    ({"type": "slim_deconv", "inputs": ["nowhere"]}, "head.inputs"),
    (["slim_deconv"], r"expected a head section with a 'type', got \['slim_deconv'\]"),
])  # fmt: skip
def test_a_tasks_default_head_mistake_names_the_task_not_the_space(
    tmp_path, synth_root, monkeypatch, head, message
):
    from tasks.pose.task import PoseTask

    space = yaml.safe_load(TINY_SPACE.read_text())
    del space["head"]
    (tmp_path / "nohead.yaml").write_text(yaml.safe_dump(space))
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, space=tmp_path / "nohead.yaml")
    monkeypatch.setattr(PoseTask, "default_head", lambda self: head)
    result = CliRunner().invoke(cli, ["search", str(exp), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(
        "Error: task 'pose' (tasks.pose.task.PoseTask): default_head()"
    ), result.output
    assert re_search(message, result.output), result.output


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_write_architecture_replaces_a_file_only_with_force(tmp_path):
    arch = load_space(TINY_ARCH)
    path = tmp_path / "arch.yaml"
    path.write_text("earlier: result\n")
    with pytest.raises(DnasError, match=rf"{path} exists; pass force=True to replace it"):
        dnas.write_architecture(arch, path)
    assert path.read_text() == "earlier: result\n"
    dnas.write_architecture(arch, path, force=True)
    assert load_space(path).to_dict() == arch.to_dict()


def test_derive_refuses_a_checkpoints_non_probabilities_before_writing(tmp_path, finished):
    import shutil

    from dnas import checkpoint

    run = tmp_path / "run"
    shutil.copytree(finished["search"], run)
    ckpt = checkpoint.load(run / "search.pt")
    ckpt["arch_probs"] = {k: [1.6 * p for p in v] for k, v in ckpt["arch_probs"].items()}
    checkpoint.save_atomic(ckpt, run / "search.pt")
    out = tmp_path / "arch.yaml"
    result = CliRunner().invoke(cli, ["derive", str(run), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith(f"Error: {run / 'search.pt'}: arch_probs: layer stage1.0: ")
    assert "are not op probabilities (each in 0..1, summing to 1)" in result.output


def test_an_experiments_head_of_another_type_replaces_a_tasks_default_head(
    tmp_path, synth_root, monkeypatch
):
    """Only the default's inputs are kept then, so its type need not even be installed."""
    from dnas.task import build_space, build_task
    from tasks.pose.task import PoseTask

    space = yaml.safe_load(TINY_SPACE.read_text())
    del space["head"]
    inputs = ["stage2", "stage3"]
    (tmp_path / "nohead.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setattr(PoseTask, "default_head", lambda self: {"type": "unet", "inputs": inputs,
                                                                "depth": 4})  # fmt: skip
    exp = load_experiment(write_experiment(
        tmp_path / "exp.yaml", synth_root, space=tmp_path / "nohead.yaml",
        head={"type": "slim_deconv", "deconv_widths": [8, 8]}))  # fmt: skip
    built = build_space(str(tmp_path / "nohead.yaml"), build_task(exp), exp)
    assert built.head.type == "slim_deconv" and built.head.options == {"deconv_widths": [8, 8]}
    assert list(built.head.inputs) == ["stage2.1", "stage3.0"]  # the stages, resolved to layers


class LaterNanProbs(DartsStrategy):
    """A strategy plugin whose probabilities turn NaN after its third step."""

    taken = 0

    def step(self, batch, val):
        self.taken += 1
        return super().step(batch, val)

    def arch_probs(self):
        probs = super().arch_probs()
        return {n: [math.nan] * len(p) for n, p in probs.items()} if self.taken >= 3 else probs


def test_a_step_checkpoint_never_records_probabilities_that_are_none(tmp_path, synth_root,
                                                                     monkeypatch):  # fmt: skip
    """derive trusts a checkpoint's probabilities: a mid-epoch one is checked as an epoch's."""
    monkeypatch.setitem(STRATEGIES._items, "laternan", LaterNanProbs)
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, search={"steps_per_epoch": 8},
                           checkpoint={"every_steps": 1})  # fmt: skip
    out = tmp_path / "s"
    args = ["search", str(exp), "-o", str(out), "--set", "search.strategy=laternan"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith(
        "Error: strategy 'laternan' (test_api_audit.LaterNanProbs): arch_probs(): layer stage1.0: "
        "[nan, nan] are not op probabilities")  # fmt: skip
    saved = sorted((out / "checkpoints").glob("step-*.pt"))
    assert saved  # steps 1 and 2
    for path in saved:
        probs = checkpoint.load(path)["arch_probs"]
        assert all(math.isfinite(p) for values in probs.values() for p in values), path


def test_a_plugin_module_imported_directly_lets_its_sibling_entry_point_import_it(
    tmp_path, monkeypatch
):
    """A script imports one module of a third-party plugin: registering there loads dnas's own
    plugins only; a sibling entry point that imports from the first module waits for the first
    lookup, when that module is whole (else it would import it half-made and be dropped)."""
    from importlib.metadata import EntryPoint

    (tmp_path / "sib_first_plugin.py").write_text(
        "from dnas.registry import COST_MODELS\n"
        "class First: pass\n"
        "COST_MODELS.register('sib_first')(First)\n"
        "SHARED = 'defined after the registration'\n"
    )  # fmt: skip
    (tmp_path / "sib_second_plugin.py").write_text(
        "from dnas.registry import COST_MODELS\n"
        "from sib_first_plugin import SHARED\n"
        "class Second: pass\n"
        "COST_MODELS.register('sib_second')(Second)\n"
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(registry.entry_points(group=registry.PLUGIN_GROUP))
    mine = [EntryPoint(n, f"sib_{n}_plugin", registry.PLUGIN_GROUP) for n in ("first", "second")]
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real, *mine])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_failed", [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            import sib_first_plugin  # noqa: F401  the script's own import

            assert COST_MODELS.get("sib_second").__module__ == "sib_second_plugin"
        assert COST_MODELS.get("sib_first").__module__ == "sib_first_plugin"
    finally:
        for name in ("sib_first", "sib_second"):
            COST_MODELS._items.pop(name, None)
        for module in ("sib_first_plugin", "sib_second_plugin"):
            sys.modules.pop(module, None)
