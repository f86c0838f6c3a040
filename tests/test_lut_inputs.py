"""Mistakes in what ``dnas lut`` is given, each refused in one line before any timing: an input
size the space's strides do not divide, options that contradict ``--config``, a table of
another space, a table timed on a device this machine lacks; and the build a coverage error
suggests writes a new file, never over the table."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_SPACE, quick_bench, write_experiment

from cost_models import lut_commands
from cost_models.latency import LatencyCostModel, LatencyOptions
from cost_models.latency_build import build_lut
from cost_models.lut_commands import Conditions, check_strides, experiment_conditions, settle
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.errors import ConfigError, DnasError
from dnas.space.graph import load_space

QUICK = ["--rounds", "1", "--calibration", "0", "--in-process", "--min-time", "0.001",
         "--allow-noise"]  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny space's table at 64x64, batch 1 (calibration 0: its entries as timed), timed
    keeping freed memory: the same whatever ran before in this process (runs keep it)."""
    bench = dataclasses.replace(quick_bench(), keep_memory=True)
    data = build_lut(load_space(TINY_SPACE), (64, 64), 16, 1, bench, calibration=0,
                     progress=False)  # fmt: skip
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    path.write_text(json.dumps(data))
    return data, path


@pytest.fixture
def builds(monkeypatch):
    """What ``lut build`` would time (space, input, outputs, batch, runtime), recorded instead
    of timed: the command stops there with one line."""
    seen = []

    def fake(space, input_hw, num_outputs, batch, bench, calibration):
        seen.append((space.name, input_hw, num_outputs, batch, bench.runtime.name))
        raise DnasError("stopped before timing")

    monkeypatch.setattr(lut_commands, "build_lut", fake)
    return seen


def one_line(args: list[str]) -> str:
    """The one-line error (exit 1) of the command ``args``."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_lut_build_refuses_an_input_the_space_strides_do_not_divide(tmp_path, builds):
    """A pose search refuses such a size; a build used to time it for minutes all the same."""
    out = tmp_path / "t.json"
    for size, near in (("33x33", "32x32"), ("64x41", "64x48")):
        line = one_line(["lut", "build", "--space", TINY_SPACE, "--input", size, *QUICK, "-o", out])
        assert (f"Invalid value for '--input': {size}: the strides of space tiny (16 in all) do "
                "not divide it") in line  # fmt: skip
        assert f"expected sides that 16 divides, such as {near}" in line
    assert not out.exists() and not builds  # refused before any timing
    check_strides(load_space(TINY_SPACE), (48, 96))  # multiples of 16: accepted
    one_line(["lut", "build", "--space", TINY_SPACE, "--input", "48x96", *QUICK, "-o", out])
    assert builds == [("tiny", (48, 96), 16, 1, "torch")]


def test_lut_build_checks_a_configs_input_size_as_its_search_does(tmp_path, builds):
    """With --config, the task's own check (``check_head_output``), the one ``dnas search``
    makes: the pose task's heatmaps must be the input / 4."""
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, input_size=[33, 33])
    line = one_line(["lut", "build", "--config", exp, *QUICK, "-o", tmp_path / "t.json"])
    assert (f"{exp}: input_size: 33x33: the head's output (16, 12, 12) does not match the "
            "heatmap targets (16, 8, 8)") in line  # fmt: skip
    assert not builds


def test_lut_build_refuses_options_that_contradict_its_config(tmp_path, builds):
    """--config builds the table that 'dnas search EXP' takes: an option that differs from the
    experiment's input size, or from what its latency cost_model asks, is refused naming both;
    the experiment's values are the options' defaults."""
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, cost_model={
        "type": "latency", "table": "t.json", "batch": 2, "runtime": "torch"})  # fmt: skip
    build = ["lut", "build", "--config", exp, *QUICK, "-o", tmp_path / "t.json"]
    assert (f"Error: {exp}: input_size: 64x64, but --input 32x32: 'dnas search {exp}' would "
            "refuse that table; leave out --input (it defaults to the experiment's), or give "
            "this build and the search --set 'input_size=[32,32]'"
            ) == one_line([*build, "--input", "32x32"])  # fmt: skip
    assert f"{exp}: cost_model.batch: 2, but --batch 1: " in one_line([*build, "--batch", "1"])
    assert f"{exp}: cost_model.runtime: torch, but --runtime onnxruntime: " in one_line(
        [*build, "--runtime", "onnxruntime"]
    )
    assert not builds
    one_line([*build, "--input", "64x64"])  # the experiment's own size: no conflict
    one_line([*build, "--set", "input_size=[32,32]", "--set", "cost_model.batch=3"])
    assert builds == [("tiny", (64, 64), 16, 2, "torch"), ("tiny", (32, 32), 16, 3, "torch")]
    assert experiment_conditions(load_experiment(exp)) == Conditions((64, 64), 2, None, "torch")
    assert settle(Conditions(threads=4), Conditions((64, 64), 2), "x") == Conditions(
        (64, 64), 2, None, None, 4
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_lut_build_names_the_experiments_device_where_this_machine_lacks_it(tmp_path, builds):
    """The device came from cost_model.device, not from the command line: name that key."""
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, cost_model={
        "type": "latency", "table": "t.json", "device": "cuda"})  # fmt: skip
    line = one_line(["lut", "build", "--config", exp, *QUICK, "-o", tmp_path / "t.json"])
    assert line == (f"Error: {exp}: cost_model.device: 'cuda', which this machine lacks: build "
                    "the table on a machine with it (or give this build and the search --set "
                    "cost_model.device=cpu)")  # fmt: skip
    assert not builds


def test_a_table_of_another_space_says_so_before_any_entry(table, tmp_path, synth_root):
    data, path = table
    other = load_space("mbv2_pose_small")
    with pytest.raises(ConfigError) as info:
        LatencyCostModel(LatencyOptions(str(path))).table(other, (64, 64), 16)
    message = str(info.value)
    assert message.startswith(
        f"{path}: meta.space: the table was built for space 'tiny' (meta.space_digest "
        f"{data['meta']['space_digest']}), not for this search's space 'mbv2_pose_small' "
        f"(digest {other.digest()}): its entries lack "
    )
    assert "missing" not in message and "\n" not in message
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, space="mbv2_pose_small")
    line = one_line(["search", exp, "--out", tmp_path / "s", "--cost-model", "latency",
                     "--cost-table", path])  # fmt: skip
    assert f"{path}: meta.space: the table was built for space 'tiny'" in line
    # the same space under another name: its entries fit, so it is the table's space
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(yaml.safe_dump(load_space(TINY_SPACE).to_dict() | {"name": "tiny2"}))
    LatencyCostModel(LatencyOptions(str(path))).table(load_space(renamed), (64, 64), 16)


def test_a_coverage_error_suggests_a_new_table_never_overwriting_this_one(table, tmp_path):
    """The table is right for what it was built for: the build the error suggests writes a file
    named after the search's settings, beside it, and never --force."""
    data, path = table
    space, threads = load_space(TINY_SPACE), data["meta"]["threads"]
    with pytest.raises(DnasError) as info:
        LatencyCostModel(LatencyOptions(str(path), batch=2)).table(space, (128, 128), 16)
    message = str(info.value)
    new = path.parent / f"lut-tiny-128x128-torch-cpu-b2-t{threads}.json"
    assert message.endswith(f"--batch 2 --device cpu --runtime torch --threads {threads} -o {new}")
    assert "--force" not in message
    # a table already named so, which still does not cover the search (another outputs count)
    named = tmp_path / f"lut-tiny-64x64-torch-cpu-b1-t{threads}.json"
    named.write_text(json.dumps(data))
    with pytest.raises(DnasError) as info:
        LatencyCostModel(LatencyOptions(str(named))).table(space, (64, 64), 17)
    assert str(info.value).endswith(
        f"-o {tmp_path}/lut-tiny-64x64-torch-cpu-b1-t{threads}-{space.digest()[:8]}.json"
    )


def test_check_and_recalibrate_name_the_tables_device_where_this_machine_lacks_it(
    table, tmp_path, monkeypatch
):
    """Nobody asked for CUDA on the command line: the table was timed there."""
    data, _ = table
    cuda = tmp_path / "cuda.json"
    cuda.write_text(json.dumps(data | {"meta": data["meta"] | {"device": "cuda"}}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out.json"
    for args, redo in ((["check"], "check it"), (["recalibrate", "-o", out], "recalibrate it")):
        assert one_line(["lut", *args, "--table", cuda]) == (
            f"Error: {cuda}: meta.device: the table was timed on 'cuda', which this machine "
            f"lacks; {redo} on a machine with CUDA"
        )
    assert not out.exists()
