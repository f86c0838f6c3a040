"""Every plugin kind declares its YAML keys as an ``Options`` dataclass: a third-party strategy
or cost model is configured through them with no edit of ``dnas/config.py``, and configs of
the built-in ones keep their keys, their ``config.yaml`` layout and their resume hashes."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from dnas.checkpoint import check_resumable
from dnas.cli import cli
from dnas.config import config_hash, load_experiment
from dnas.engine.progress import Reporter
from dnas.errors import ConfigError, DnasError
from dnas.nn.slim_deconv import SlimDeconvHead
from dnas.registry import COST_MODELS, HEADS, STRATEGIES, TASKS
from dnas.schema import from_dict, to_dict
from dnas.search.cost_model import CostModel, CostTable, get_cost_model
from dnas.search.darts import DartsStrategy
from dnas.search.run import run_search
from dnas.search.strategy import Strategy
from dnas.space.graph import SearchSpace, load_space
from tasks.pose.task import PoseTask

ARCH = Path(__file__).parent / "data" / "tiny_arch.yaml"


@dataclass
class ScaledOptions:
    arch_lr_scale: float = field(default=1.0, metadata={"min": 0.0})


class ScaledDarts(DartsStrategy):
    """DARTS with its architecture lr scaled by its own option (a third-party strategy)."""

    Options, options_key = ScaledOptions, "scaled"

    def adapt_search_space(self, network, task, table, device) -> None:
        super().adapt_search_space(network, task, table, device)
        for group in self.a_opt.param_groups:
            group["lr"] *= self.options.arch_lr_scale

    def result_extras(self) -> dict:
        return {"arch_lr": self.a_opt.param_groups[0]["lr"]}


@dataclass
class ConstantOptions:
    per_op: float = field(default=1.0, metadata={"min": 0.0})


class ConstantCost(CostModel):
    """Every candidate op costs ``per_op`` units; the stem and head cost nothing."""

    metric, unit, Options = "constant", "units", ConstantOptions

    def build(self, space: SearchSpace, input_hw, num_outputs) -> CostTable:
        layers = {
            lay.name: {op: self.options.per_op * (1 + i) for i, op in enumerate(lay.candidates)}
            for lay in space.searchable_layers
        }
        return CostTable(self.metric, self.unit, 0.0, layers, key={})


@pytest.fixture
def plugins():
    STRATEGIES.register("scaled_darts")(ScaledDarts)
    COST_MODELS.register("constant")(ConstantCost)
    yield
    STRATEGIES._items.pop("scaled_darts")
    COST_MODELS._items.pop("constant")


def test_third_party_plugins_are_configured_through_their_options(plugins, tmp_path,
                                                                   real_mpii_root):  # fmt: skip
    path = write_experiment(
        tmp_path / "exp.yaml", real_mpii_root,
        search={"strategy": "scaled_darts", "scaled": {"arch_lr_scale": 4.0},
                "warmup_epochs": 0},
        cost_model={"type": "constant", "per_op": 2.5},
    )  # fmt: skip
    exp = load_experiment(path)
    assert exp.search.options["scaled"].arch_lr_scale == 4.0
    assert exp.cost_model.options.per_op == 2.5
    written = to_dict(exp)  # inline, as the user wrote them
    assert written["cost_model"]["per_op"] == 2.5
    assert written["search"]["scaled"] == {"arch_lr_scale": 4.0}
    result = run_search(exp, tmp_path / "run")
    assert result["cost_unit"] == "units" and result["arch_lr"] == pytest.approx(4 * 3e-4)
    cheapest = {lay.name: lay.candidates[0] for lay in exp_space(exp).searchable_layers}
    assert result["final_cost"] >= 2.5 * len(cheapest)
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["arch_lr"] == result["arch_lr"]
    # the run's config.yaml feeds back in with the plugins' keys
    again = load_experiment(tmp_path / "run" / "config.yaml")
    assert config_hash(again) == config_hash(exp)


def test_a_cost_models_options_key_its_cached_tables(plugins):
    """Two settings of a cost model's own keys are two tables, not one cached under both."""
    from dnas.space.graph import load_space

    space = load_space(TINY_SPACE)
    costs = [ConstantCost(ConstantOptions(per_op)).table(space, (64, 64), 16).cost_range()[0]
             for per_op in (2.0, 5.0, 2.0)]  # fmt: skip
    assert costs[1] == pytest.approx(2.5 * costs[0]) and costs[2] == costs[0]


def exp_space(exp) -> SearchSpace:
    from dnas.space.graph import load_space

    return load_space(exp.space)


@pytest.mark.parametrize(
    ("sections", "key", "words"),
    [
        ({"cost_model": {"type": "constant", "per_op": "many"}}, "cost_model.per_op", "number"),
        ({"cost_model": {"type": "constant", "table": "x"}}, "cost_model.table", "per_op"),
        ({"cost_model": {"type": "flops", "table": "x"}}, "cost_model.table", "unknown key"),
        ({"cost_model": {"type": "nope"}}, "cost_model.type", "unknown cost model"),
        ({"search": {"scaled": {"arch_lr_scale": -1}}}, "search.scaled.arch_lr_scale", ">= 0"),
        ({"search": {"nope": {}}}, "search.nope", "scaled"),
        ({"search": {"random": {"samples": 0}}}, "search.random.samples", ">= 1"),
    ],
)
def test_option_mistakes_name_the_file_and_key(plugins, tmp_path, sections, key, words):
    path = write_experiment(tmp_path / "exp.yaml", tmp_path, **sections)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == key and words in info.value.detail
    assert info.value.source == str(path)


LEGACY = Path(__file__).parent / "data" / "legacy_run_config.yaml"


def test_a_config_yaml_of_the_earlier_layout_loads_and_resumes_unchanged(tmp_path):
    exp = load_experiment(LEGACY)  # 'source' and the inline keys of that version load
    assert exp.cost_model.options.table == "lut.json" and exp.cost_model.options.batch == 8
    assert exp.search.options["random"].samples == 3
    assert exp.search.options["single_path"].tau_start == 2.0
    written = to_dict(exp)
    assert {"table", "batch", "device"} <= written["cost_model"].keys()
    assert {"random", "single_path"} <= written["search"].keys()
    # a checkpoint of that run (its recorded config and digest) resumes without --force
    state = {"config": yaml.safe_load(LEGACY.read_text()), "config_hash": "10afeed004d728b9"}
    check_resumable(state, exp, tmp_path / "step.pt", force=False)
    changed = load_experiment(LEGACY, ["cost_model.target=13.0"])
    with pytest.raises(DnasError, match=r"\(cost_model.target; see"):
        check_resumable(state, changed, tmp_path / "step.pt", force=False)


def test_a_run_recorded_before_the_move_resumes_and_a_real_change_is_named(tmp_path):
    exp = load_experiment(write_experiment(tmp_path / "exp.yaml", tmp_path))
    recorded = to_dict(exp)
    recorded["cost_model"].update(table=None, batch=None, device=None)  # the old layout
    del recorded["train"]["schedule"], recorded["train"]["warmup_steps"]  # keys added since
    state = {"config": recorded, "config_hash": "0" * 16}  # the old digest differs
    check_resumable(state, exp, tmp_path / "step.pt", force=False)
    recorded["search"]["epochs"] = 7
    recorded["cost_model"]["weight"] = 0.5
    with pytest.raises(DnasError) as info:
        check_resumable(state, exp, tmp_path / "step.pt", force=False)
    message = str(info.value)
    assert "cost_model.weight, search.epochs" in message and "--force" in message
    check_resumable(state, exp, tmp_path / "step.pt", force=True)


def test_a_plugin_that_fails_on_import_is_skipped_and_the_rest_load(tmp_path, monkeypatch):
    """Third-party code may raise anything on import (a ValueError from a bad op kind, ...):
    the plugin is skipped with a warning naming it, and every other plugin still registers."""
    from importlib.metadata import EntryPoint

    from dnas import registry

    (tmp_path / "broken_dnas_plugin.py").write_text("raise ValueError('bad op kind pattern')\n")
    (tmp_path / "later_dnas_plugin.py").write_text(
        "from dnas.registry import COST_MODELS\nCOST_MODELS.register('later_probe')(object)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = [EntryPoint(name, f"{name}_dnas_plugin", registry.PLUGIN_GROUP)
               for name in ("broken", "later")]  # fmt: skip
    monkeypatch.setattr(registry, "entry_points", lambda group: plugins)
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.warns(UserWarning, match=r"'broken' \(broken_dnas_plugin\) not loaded: "
                                         r"ValueError: bad op kind pattern"):  # fmt: skip
        registry.load_plugins()
    assert "later_probe" in registry.COST_MODELS.names()  # the plugin after it still loaded
    registry.COST_MODELS._items.pop("later_probe")


class WideHead(SlimDeconvHead):
    """A head plugin that ignores the task's number of outputs."""

    def __init__(self, in_channels, num_outputs, options) -> None:
        super().__init__(in_channels, num_outputs + 2, options)


class RenamedInputs(PoseTask):
    """A task plugin whose items carry ``image`` instead of ``input``."""

    name = "renamed_inputs"

    def dataset(self, split, augment, seed=0):
        data = super().dataset(split, augment, seed)
        return [{("image" if k == "input" else k): v for k, v in data[i].items()}
                for i in range(len(data))]  # fmt: skip


class PerSampleLoss(PoseTask):
    """A task plugin whose loss is one value per sample, not the batch's mean."""

    name = "per_sample_loss"

    def loss(self, output, batch):
        return super().loss(output, batch).expand(len(output))


class DoubleInputs(PoseTask):
    """A task plugin whose inputs are float64 arrays: the float32 nets cannot take them."""

    name = "double_inputs"

    def dataset(self, split, augment, seed=0):
        data = super().dataset(split, augment, seed)
        return [{**data[i], "input": data[i]["input"].numpy().astype("float64")}
                for i in range(len(data))]  # fmt: skip


class ArrayInputs(PoseTask):
    """A task plugin whose inputs are arrays and whose loss has shape (1,): both valid."""

    name = "array_inputs"

    def dataset(self, split, augment, seed=0):
        data = super().dataset(split, augment, seed)
        if split != "train":
            return data  # scored by the pose evaluation, which reads the dataset's own methods
        return [{k: (v.numpy() if k == "input" else v) for k, v in data[i].items()}
                for i in range(len(data))]  # fmt: skip

    def loss(self, output, batch):
        return super().loss(output, batch).reshape(1)


class Incomplete(Strategy):
    """A strategy plugin that implements none of the lifecycle."""


class MissingLayer(CostModel):
    """A cost model whose table leaves out the first searchable layer."""

    metric, unit = "partial", "units"

    def build(self, space: SearchSpace, input_hw, num_outputs) -> CostTable:
        layers = {lay.name: dict.fromkeys(lay.candidates, 1.0)
                  for lay in space.searchable_layers[1:]}  # fmt: skip
        return CostTable(self.metric, self.unit, 0.0, layers, key={})


class TenfoldConstant(ConstantCost):
    """A subclass with the same metric and options: its tables must not be the parent's."""

    def build(self, space: SearchSpace, input_hw, num_outputs) -> CostTable:
        table = super().build(space, input_hw, num_outputs)
        table.layers = {n: {op: 10 * c for op, c in ops.items()} for n, ops in table.layers.items()}
        return table


@pytest.fixture
def broken_plugins():
    added = {HEADS: {"wide": WideHead}, STRATEGIES: {"incomplete": Incomplete},
             TASKS: {"renamed_inputs": RenamedInputs, "per_sample_loss": PerSampleLoss,
                     "array_inputs": ArrayInputs, "double_inputs": DoubleInputs},
             COST_MODELS: {"missing_layer": MissingLayer, "constant": ConstantCost,
                           "tenfold": TenfoldConstant}}  # fmt: skip
    for registry, items in added.items():
        for name, obj in items.items():
            registry.register(name)(obj)
    yield
    for registry, items in added.items():
        for name in items:
            registry._items.pop(name)


def test_a_plugins_broken_contract_is_one_line_before_the_run_writes(
    broken_plugins, tmp_path, synth_root
):
    """Each of these once passed set-up and failed with a traceback at the first step, after
    config.yaml and the logs were written (the wide head even trained, on a broadcast loss)."""
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    out = tmp_path / "run"
    for args, message in (
        (["--set", "head={type: wide}"], "head 'wide' gives 18 output channels, the pose task "
                                         "has 16"),
        (["--set", "task.name=renamed_inputs"], "task renamed_inputs: item 0 of its 'train' split "
                                                "must be a mapping with an 'input' of 3 x H x W, "
                                                "got keys ['center', 'image', "),
        (["--set", "task.name=double_inputs"], "task double_inputs: item 0 of its 'train' split "
                                               "has an 'input' of float64; expected float32"),
        (["--strategy", "incomplete"], "strategy 'incomplete' (test_plugin_options.Incomplete) "
                                       "does not implement adapt_search_space, arch_probs, "),
        (["--cost-model", "missing_layer"], "cost model test_plugin_options.MissingLayer: its "
                                            "partial table of space 'tiny' misses layers "),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, ["search", str(exp), "--out", str(out), *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and not out.exists(), result.output
    train = ["train", str(exp), "--arch", str(ARCH), "--out", str(out)]
    result = CliRunner().invoke(cli, [*train, "--set", "task.name=per_sample_loss"])
    assert result.exit_code == 1 and "Error: task 'per_sample_loss' (test_plugin_options." \
        "PerSampleLoss): loss() must return one value (the " \
        "batch's mean), got (4,)" in result.output, result.output  # fmt: skip
    # what the loader collates is fine: an array input, a (1,) loss
    result = CliRunner().invoke(cli, [*train, "--set", "task.name=array_inputs"])
    assert result.exit_code == 0 and (out / "model.pt").exists(), result.output


def test_cost_tables_are_cached_per_cost_model_class(broken_plugins):
    space = load_space(TINY_SPACE)
    parent = get_cost_model("constant").table(space, (64, 64), 16)
    child = get_cost_model("tenfold").table(space, (64, 64), 16)  # same metric and options
    assert child.uniform_cost() == pytest.approx(10 * parent.uniform_cost())
    with patch.object(ConstantCost, "build", side_effect=AssertionError("rebuilt")):
        assert get_cost_model("constant").table(space, (64, 64), 16) == parent  # the cache


def test_a_half_loaded_plugin_leaves_nothing_registered_and_is_named(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from dnas import registry

    (tmp_path / "kept_dnas_helper.py").write_text(  # imports fine: keeps what it registers
        "from dnas.registry import COST_MODELS\n"
        "class Kept: pass\n"
        "COST_MODELS.register('kept_probe')(Kept)\n"
    )  # fmt: skip
    (tmp_path / "half_dnas_plugin.py").write_text(
        "import click\n"
        "import kept_dnas_helper\n"
        "from dnas.registry import COMMANDS, COST_MODELS, STRATEGIES, Registry\n"
        "COMMANDS.register('half-cmd')(click.command('half-cmd')(lambda: None))\n"
        "OWN = Registry('own kind')  # a plugin's own registry, made while importing\n"
        "class Probe: pass\n"
        "COST_MODELS.register('half_probe')(Probe)\n"
        "STRATEGIES.register('darts')(Probe)  # a clash: raises\n"
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_registries", list(registry._registries))
    plugin = EntryPoint("half", "half_dnas_plugin", registry.PLUGIN_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin, plugin])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_failed", [])
    with pytest.warns(UserWarning) as caught:
        registry.load_plugins()
    assert [str(w.message) for w in caught] == [
        "dnas plugin 'half' (half_dnas_plugin) not loaded: ValueError: strategy 'darts' is "
        "registered twice: by dnas.search.darts and half_dnas_plugin"
    ] * 2  # the same cause both times, not a clash with its own first attempt
    assert "half_probe" not in registry.COST_MODELS.names()
    assert "half-cmd" not in registry.COMMANDS.names()  # a click command: by its callback
    assert "kept_probe" in registry.COST_MODELS.names() and "darts" in registry.STRATEGIES.names()
    registry.COST_MODELS._items.pop("kept_probe")
    with pytest.raises(DnasError, match=r"unknown task 'x' \(registered: pose, segmentation; "
                                        r"plugins not loaded: half \(ValueError: "):  # fmt: skip
        registry.TASKS.get("x")


def test_a_plugin_command_hidden_by_a_built_in_is_named(monkeypatch):
    import click

    from dnas.registry import COMMANDS

    monkeypatch.setitem(COMMANDS._items, "train", click.Command("train"))
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "warning: a plugin's command 'train' is hidden by the built-in 'dnas train'" in \
        result.output  # fmt: skip


def test_a_run_directory_loads_without_the_plugins_installed_when_it_ran(tmp_path, synth_root):
    """A run's config.yaml leaves out other strategies' sections at their defaults: a plugin
    strategy's section once made every run of that machine unloadable without the plugin."""
    search = {"strategy": "gumbel", "darts": {"temperature_end": 0.5}}
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, search=search)
    STRATEGIES.register("scaled_darts")(ScaledDarts)
    try:
        run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    finally:
        STRATEGIES._items.pop("scaled_darts")
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["search"]
    assert "scaled" not in recorded and "random" not in recorded  # idle, at their defaults
    assert recorded["darts"]["temperature_end"] == 0.5 and "single_path" in recorded  # kept
    again = load_experiment(tmp_path / "run" / "config.yaml")  # no 'unknown key: scaled'
    assert config_hash(again) == config_hash(load_experiment(exp))  # the same experiment


def test_the_readmes_plugin_block_registers_as_written(tmp_path, monkeypatch):
    """README's "Extending" block, pasted into a module as a user would: its imports suffice
    and both plugins register and parse their options (its method bodies are elided there)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    block = next(b.split("```")[0] for b in blocks if 'STRATEGIES.register("scaled_darts")' in b)
    (tmp_path / "readme_plugin.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))
    monkeypatch.setattr(COST_MODELS, "_items", dict(COST_MODELS._items))
    try:
        importlib.import_module("readme_plugin")
    finally:
        sys.modules.pop("readme_plugin", None)
    strategy, cost = STRATEGIES.get("scaled_darts"), COST_MODELS.get("constant")
    assert issubclass(strategy, DartsStrategy) and issubclass(cost, CostModel)
    options = from_dict(strategy.Options, {"arch_lr_scale": 4}, "e.yaml", "search.scaled")
    assert options.arch_lr_scale == 4.0
    with pytest.raises(ConfigError, match=r"e.yaml: cost_model.per_op: .*-1"):
        from_dict(cost.Options, {"per_op": -1}, "e.yaml", "cost_model")


def test_a_task_subclass_registered_under_its_own_name_is_that_task(tmp_path, synth_root,
                                                                    monkeypatch):  # fmt: skip
    """Subclassing another plugin's task keeps its class name; the name it is registered and
    written under is the one its weights record, so eval of its own weights is not refused."""
    from conftest import TINY_ARCH

    from dnas.task import build_task

    class Renamed(PoseTask):
        pass

    monkeypatch.setitem(TASKS._items, "pose_renamed", Renamed)
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, train={"epochs": 1})
    renamed = ["--set", "task.name=pose_renamed"]
    assert build_task(load_experiment(exp, renamed[1:])).name == "pose_renamed"
    runner = CliRunner()
    done = runner.invoke(cli, ["train", str(exp), "--arch", str(TINY_ARCH), "-o",
                               str(tmp_path / "t"), *renamed])  # fmt: skip
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["eval", str(exp), "--weights", str(tmp_path / "t" / "model.pt"),
                               "-o", str(tmp_path / "e"), *renamed])  # fmt: skip
    assert done.exit_code == 0, done.output


def test_a_plugin_whose_options_default_breaks_its_own_choices_is_named(monkeypatch, tmp_path,
                                                                       synth_root):  # fmt: skip
    """A default no YAML could write (outside its own choices) is the plugin's mistake, named
    when the plugin is built, not silently used."""

    @dataclass
    class OddOptions:
        mode: str = field(default="a", metadata={"choices": ["b", "c"]})

    class OddTask(PoseTask):
        Options = OddOptions

    monkeypatch.setitem(TASKS._items, "odd_task", OddTask)
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    from dnas.task import build_task

    match = r"task 'odd_task' \(.*OddTask\): Options: the default of mode, 'a': expected one of"
    with pytest.raises(DnasError, match=match):
        build_task(load_experiment(exp, ["task.name=odd_task"]))
