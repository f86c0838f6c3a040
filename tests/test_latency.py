"""Latency lookup tables: build, check, the latency cost model and its coverage errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from cost_models.latency import LatencyCostModel, LatencyOptions, build_lut, predict_ms
from dnas.cli import cli
from dnas.errors import DnasError
from dnas.space.graph import load_space


@pytest.fixture(scope="module")
def lut(tmp_path_factory):
    space = load_space(TINY_SPACE)
    table = build_lut(space, (64, 64), 16, 1, torch.device("cpu"), warmup=1, repeats=3,
                      calibration=4, progress=False)  # fmt: skip
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    path.write_text(json.dumps(table))
    return space, table, path


def test_table_covers_every_op_and_records_its_conditions(lut):
    space, table, _ = lut
    for layer in space.searchable_layers:
        assert set(table["layers"][layer.name]) == set(layer.candidates)
        assert all(v > 0 for v in table["layers"][layer.name].values())
    assert {"stem.0", "stem.1", "head"} <= set(table["fixed"])
    meta = table["meta"]
    assert meta["batch"] == 1 and meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["torch"] == torch.__version__ and meta["threads"] >= 1 and meta["date"]
    assert table["scale"] > 0


def test_cost_model_expected_cost_equals_the_prediction(lut):
    space, table, path = lut
    cost_table = LatencyCostModel(LatencyOptions(str(path))).table(space, (64, 64), 16)
    choices = {lay.name: lay.candidates[-1] for lay in space.searchable_layers}
    probs = [torch.tensor([float(op == choices[lay.name]) for op in lay.candidates])
             for lay in space.searchable_layers]  # fmt: skip
    expected = float(cost_table.expected(list(choices), probs))
    assert expected == pytest.approx(predict_ms(table, choices), rel=1e-5)


def test_missing_ops_batch_and_shape_are_one_error_with_the_build_command(lut, tmp_path):
    space, _, path = lut
    data = space.to_dict()
    data["stages"][2]["blocks"][0] = ["k3e3", "k3e6", "k7e3"]
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump(data))
    with pytest.raises(DnasError) as info:
        LatencyCostModel(LatencyOptions(str(path))).table(load_space(wider), (64, 64), 16)
    message = str(info.value)
    assert "missing stage3.0/k7e3" in message and "dnas lut build --space" in message
    assert "\n" not in message
    with pytest.raises(DnasError, match=r"missing batch 32 \(table has 1\)"):
        LatencyCostModel(LatencyOptions(str(path), batch=32)).table(space, (64, 64), 16)
    with pytest.raises(DnasError, match=r"input \[128, 128\] \(table has \[64, 64\]\)"):
        LatencyCostModel(LatencyOptions(str(path))).table(space, (128, 128), 16)
    with pytest.raises(DnasError, match="needs a table"):
        LatencyCostModel()


def test_cli_build_check_and_a_latency_search(tmp_path, real_mpii_root):
    table = tmp_path / "t.json"
    result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                      "64x64", "--repeats", "2", "--warmup", "1",
                                      "--calibration", "3", "-o", str(table)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "correction" in result.output and "batch 1, cpu" in result.output
    assert "\r" not in result.output  # no progress bar into a pipe
    # no --space: the table built from a space file finds that file again by its path
    check = CliRunner().invoke(cli, ["lut", "check", "--table", str(table), "--samples", "3",
                                     "--repeats", "2", "--format", "json"])  # fmt: skip
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert -1.0 <= report["kendall_tau"] <= 1.0 and report["mape"] >= 0
    assert len(report["rows"]) == 3
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    run = CliRunner().invoke(
        cli,
        [
            "search",
            str(exp),
            "--out",
            str(tmp_path / "s"),
            "--cost-model",
            "latency",
            "--cost-table",
            str(table),
        ],
    )
    assert run.exit_code == 0, run.output
    assert "ms" in run.output.splitlines()[-2]  # final architecture cost: ... ms


def test_correction_fit_never_inverts_the_ranking():
    from cost_models.latency import fit_correction

    scale, overhead = fit_correction([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
    assert scale == pytest.approx(2.0) and overhead == pytest.approx(0.5)
    # noisy timings whose fit slopes downwards: scale 1 and the median offset instead
    assert fit_correction([1.0, 2.0, 3.0], [5.0, 4.0, 3.5]) == (1.0, pytest.approx(2.0))
    assert fit_correction([], []) == (1.0, 0.0)
    # noisy timings of a few nets: a steep line whose offset makes the cheapest net (parts
    # 1.0 ms) cost less than nothing is not used
    steep = fit_correction([10.0, 10.5, 11.0], [5.0, 20.0, 35.0], lowest=1.0)
    assert steep[0] > 0 and steep[0] * 1.0 + steep[1] > 0
    assert steep == (1.0, pytest.approx(9.5))
    # ... and where the median offset is negative enough too: the proportional fit
    assert fit_correction([10.0, 11.0], [1.0, 1.5], lowest=1.0) == (pytest.approx(26.5 / 221), 0.0)
