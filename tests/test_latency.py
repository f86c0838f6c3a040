"""Latency lookup tables: build, check, the latency cost model and its coverage errors."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import statistics

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_SPACE, quick_bench, write_experiment

from cost_models import latency_build
from cost_models.fidelity import NoiseCeiling, noise_ceiling
from cost_models.flops import FlopsCostModel
from cost_models.latency import LatencyCostModel, LatencyOptions, group_of, group_parts, predict_ms
from cost_models.latency_build import (
    Bench,
    TimingPass,
    build_lut,
    calibration_nets,
    calibration_text,
    entries_as_timed,
    reference_choices,
    refit_scores,
    time_forwards,
    time_pass,
    warm_up_seconds,
)
from cost_models.latency_check import (
    PICK_BAND,
    PICK_LEVELS,
    SPEED_NETS,
    gauge_nets,
    machine_speed,
    picked_choices,
)
from cost_models.lut_commands import machine_warning
from cost_models.runtimes import get_runtime
from cost_models.timing import NoiseGuard, NoisePolicy, Timing
from dnas.allocator import keep_freed_memory
from dnas.cli import cli
from dnas.engine.runtime import device_name
from dnas.errors import DnasError
from dnas.space.choices import uniform_choices
from dnas.space.graph import load_space


@pytest.fixture(scope="module")
def lut(tmp_path_factory):
    space = load_space(TINY_SPACE)
    # in this process, keeping freed memory: the same whatever ran before in it (runs keep it)
    bench = dataclasses.replace(quick_bench(), keep_memory=True)
    table = build_lut(space, (64, 64), 16, 1, bench, calibration=8, progress=False)
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    path.write_text(json.dumps(table))
    return space, table, path


def test_a_pass_warms_up_for_twenty_timings_and_at_most_two_seconds():
    assert warm_up_seconds(0.1) == pytest.approx(2.0)  # the CLI's default --min-time
    assert warm_up_seconds(0.01) == pytest.approx(0.2)
    assert warm_up_seconds(1.0) == pytest.approx(2.0)


def test_table_covers_every_op_and_records_its_conditions(lut):
    space, table, _ = lut
    for layer in space.searchable_layers:
        assert set(table["layers"][layer.name]) == set(layer.candidates)
        assert all(v > 0 for v in table["layers"][layer.name].values())
    assert {"stem.0", "stem.1", "head"} <= set(table["fixed"])
    meta = table["meta"]
    assert meta["batch"] == 1 and meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["torch"] == torch.__version__ and meta["threads"] >= 1 and meta["date"]
    assert meta["runtime"] == "torch" and meta["calibration"] == 8
    assert meta["allocator"] == keep_freed_memory()  # what the timings ran under (the fixture)
    assert table["scale"] == 1.0  # the calibration is folded into the entries
    fit, noise = meta["calibration_fit"], meta["noise"]
    assert fit["heldout_mape"] is not None and fit["fit_mape"] >= 0
    assert fit["heldout_nets"] == 2  # the last quarter of the 8
    assert fit["noise_ceiling"] is None  # one round: no pass-to-pass noise to simulate
    assert set(noise) >= {"worst_spread", "drift", "reference_ms", "remeasured", "kept_noisy"}
    # every entry is its isolated timing times its group's scale (its input resolution)
    for layer in space.searchable_layers:
        _, h, w = table["shapes"][layer.name]
        for op, ms in table["layers"][layer.name].items():
            scale = fit["scales"].get(f"{h}x{w}", 1.0)
            assert ms == pytest.approx(scale * table["isolated"]["layers"][layer.name][op],
                                       rel=1e-3)  # fmt: skip


def test_calibration_nets_alternate_uniform_draws_and_draws_across_the_mac_range():
    """Uniform draws of 28 layers all cost about the space's mean; every other calibration net
    comes from the maximum-entropy distribution at one of evenly spread MAC levels."""
    space = load_space("mbv2_pose_small")
    nets = calibration_nets(space, (64, 64), 16, 40, np.random.default_rng(0))
    macs = FlopsCostModel().build(space, (64, 64), 16)
    low, high = macs.cost_range()
    share = [(macs.of_choices(n) - low) / (high - low) for n in nets]
    names = {layer.name for layer in space.searchable_layers}
    assert len(nets) == 40 and all(n.keys() == names for n in nets)
    uniform, spread = np.array(share[0::2]), np.sort(share[1::2])
    assert np.std(uniform) < 0.1  # about the mean
    # each level's draw lands near it: sorted, the 20 nets follow the evenly spread levels
    assert np.abs(spread - (np.arange(20) + 0.5) / 20).max() < 0.15
    assert nets == calibration_nets(space, (64, 64), 16, 40, np.random.default_rng(0))
    for count in (0, 1, 3):
        assert len(calibration_nets(space, (64, 64), 16, count, np.random.default_rng(0))) == count
    fixed = load_space("efficientpose_a")  # no searchable layer: the one net, count times
    assert calibration_nets(fixed, (64, 64), 16, 3, np.random.default_rng(0)) == [{}] * 3


def test_a_build_records_the_noise_ceiling_of_its_held_out_nets(monkeypatch):
    seen = []

    def spy(passes, **kwargs):
        seen.append([list(p) for p in passes])
        return noise_ceiling(passes, **kwargs)

    monkeypatch.setattr(latency_build, "noise_ceiling", spy)
    policy = NoisePolicy(rounds=2, strict=False, fresh_processes=False)
    bench = Bench(get_runtime("torch", torch.device("cpu"), 1), min_time=0.01, policy=policy)
    table = build_lut(load_space(TINY_SPACE), (64, 64), 16, 1, bench, calibration=8,
                      progress=False)  # fmt: skip
    [passes] = seen  # the 2 held-out nets (the last quarter of 8), 2 passes each
    assert len(passes) == 2 and all(len(p) == 2 for p in passes)
    held_out = [n["measured_ms"] for n in table["meta"]["calibration_nets"][-2:]]
    assert [statistics.median(p) for p in passes] == pytest.approx(held_out, rel=1e-3)
    recorded = table["meta"]["calibration_fit"]["noise_ceiling"]
    assert recorded == noise_ceiling(passes).to_dict()


def test_the_build_line_names_the_held_out_error_and_its_noise_ceiling():
    ceiling = {"kendall_tau": 0.8, "mape": 2.1, "pass_sd": 3.0, "kendall_tau_sd": 0.08}
    fit = {"fit_mape": 1.5, "heldout_mape": 2.41, "heldout_tau": 0.867, "noise_ceiling": ceiling}
    assert calibration_text(fit, 40) == (
        "calibrated on 40 networks (fit MAPE 1.50 %, held-out MAPE 2.41 % tau 0.867; noise "
        "ceiling tau 0.800 +- 0.080, MAPE 2.10 %)"
    )
    few = calibration_text({**fit, "heldout_tau": None}, 12)  # too few held out to rank
    assert few.endswith("held-out MAPE 2.41 %; noise ceiling MAPE 2.10 %)")
    assert "noise ceiling" not in calibration_text({**fit, "noise_ceiling": None}, 40)
    assert calibration_text({**fit, "heldout_mape": None}, 4) == (
        "calibrated on 4 networks (fit MAPE 1.50 %)"
    )
    assert calibration_text(fit, 0) == "not calibrated (--calibration 0)"


def test_cost_model_expected_cost_equals_the_prediction(lut):
    space, table, path = lut
    cost_table = LatencyCostModel(LatencyOptions(str(path))).table(space, (64, 64), 16)
    choices = {lay.name: lay.candidates[-1] for lay in space.searchable_layers}
    probs = [torch.tensor([float(op == choices[lay.name]) for op in lay.candidates])
             for lay in space.searchable_layers]  # fmt: skip
    expected = float(cost_table.expected(list(choices), probs))
    assert expected == pytest.approx(predict_ms(table, choices), rel=1e-5)


def test_the_tables_own_picks_are_its_fastest_nets_at_each_mac_level(lut):
    """Each pick is, among all 72 nets of the tiny space with MACs within 1 % of its level,
    the one the table predicts fastest (by enumeration)."""
    space, table, _ = lut
    macs = FlopsCostModel().build(space, (64, 64), 16)
    names = list(macs.layers)
    every = [dict(zip(names, ops, strict=True))
             for ops in itertools.product(*(list(macs.layers[n]) for n in names))]  # fmt: skip
    low, high = macs.cost_range()
    picks = picked_choices(table, space)
    assert list(picks) == list(PICK_LEVELS)
    for level, pick in picks.items():
        goal = low + level * (high - low)
        band = [c for c in every if abs(macs.of_choices(c) / goal - 1) <= PICK_BAND]
        assert pick in band and len(band) > 1
        assert predict_ms(table, pick) == pytest.approx(min(predict_ms(table, c) for c in band))


def test_machine_speed_gauges_on_calibration_nets_the_space_can_build(lut):
    """Nets the checked space cannot build, and malformed entries, are skipped; with none left
    the reference net's ratio stands in."""
    space, table, _ = lut
    meta = table["meta"]
    nets = meta["calibration_nets"]
    assert len(nets) == 8 and SPEED_NETS == 6  # spread over the build's order, ends included
    assert gauge_nets(meta, space) == [nets[i] for i in (0, 1, 3, 4, 6, 7)]
    assert gauge_nets(dict(meta, calibration_nets=nets[:5]), space) == nets[:5]
    bad = [{**nets[0], "choices": {**nets[0]["choices"], "stage1.0": "k9e9"}},
           {**nets[0], "choices": {**nets[0]["choices"], "stage1.0": ["k3e3"]}},
           {**nets[0], "measured_ms": 0}, {**nets[0], "measured_ms": "1"}, "net", None]  # fmt: skip
    for malformed in (bad, None, 3, "nets"):
        assert gauge_nets(dict(meta, calibration_nets=malformed), space) == []
    built_at = meta["noise"]["reference_ms"][0]
    speed = machine_speed(meta, 1.1 * built_at, [], [])
    assert speed["ratio"] == pytest.approx(1.1) and speed["source"] == "the reference net"
    for noise in (None, {"reference_ms": 5}, {"reference_ms": ["a"]}, {"reference_ms": [-1.0]}):
        assert machine_speed(dict(meta, noise=noise), 1.0, [], [])["ratio"] is None
    again = [{"measured_ms": 0.9 * nets[0]["measured_ms"]},
             {"measured_ms": 1.0 * nets[1]["measured_ms"]}]  # fmt: skip
    speed = machine_speed(meta, 1.3 * built_at, nets[:2], again)
    assert speed["ratio"] == pytest.approx(0.95) and speed["reference"] == pytest.approx(1.3)


def test_missing_ops_batch_and_shape_are_one_error_with_the_build_command(lut, tmp_path):
    space, _, path = lut
    data = space.to_dict()
    data["stages"][2]["blocks"][0] = ["k3e3", "k3e6", "k7e3"]
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump(data))
    with pytest.raises(DnasError) as info:
        LatencyCostModel(LatencyOptions(str(path))).table(load_space(wider), (64, 64), 16)
    message = str(info.value)
    assert "missing stage3.0/k7e3" in message and "dnas lut build --config EXPERIMENT" in message
    assert "\n" not in message
    with pytest.raises(DnasError, match=r"missing batch 32 \(table has 1\)"):
        LatencyCostModel(LatencyOptions(str(path), batch=32)).table(space, (64, 64), 16)
    with pytest.raises(DnasError, match=r"input \[128, 128\] \(table has \[64, 64\]\)"):
        LatencyCostModel(LatencyOptions(str(path))).table(space, (128, 128), 16)
    with pytest.raises(DnasError, match="needs a table"):
        LatencyCostModel()


def test_cli_build_check_and_a_latency_search(tmp_path, real_mpii_root):
    table = tmp_path / "t.json"
    # two rounds, each in a fresh process (the default)
    result = CliRunner().invoke(cli, ["lut", "build", "--space", str(TINY_SPACE), "--input",
                                      "64x64", "--min-time", "0.01", "--allow-noise",
                                      "--rounds", "2", "--calibration", "3",
                                      "-o", str(table)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "calibrated on 3 networks" in result.output and "torch batch 1, cpu" in result.output
    assert "noise: worst spread" in result.output
    assert "\r" not in result.output  # no progress bar into a pipe
    meta = json.loads(table.read_text())["meta"]
    noise = meta["noise"]
    assert meta["fresh_processes"] and meta["rounds"] == 2 and len(noise["passes"]) == 2
    assert sum(noise["passes"]) == len(noise["reference_ms"])  # each pass with its own start
    firsts = [noise["reference_ms"][0], noise["reference_ms"][noise["passes"][0]]]
    assert noise["reference_start_ms"] == pytest.approx(statistics.median(firsts), abs=1e-4)
    # no --space: the table built from a space file finds that file again by its path
    check = CliRunner().invoke(cli, ["lut", "check", "--table", str(table), "--samples", "3",
                                     "--min-time", "0.01", "--allow-noise", "--in-process",
                                     "--format", "json"])  # fmt: skip
    assert check.exit_code == 0, check.output
    report = json.loads(check.stdout)  # progress lines go to stderr
    assert not report["fresh_processes"] and len(report["noise"]["passes"]) == 1
    assert -1.0 <= report["kendall_tau"] <= 1.0 and report["mape"] >= 0
    ceiling = report["noise_ceiling"]  # from the 3 nets' 5 passes
    assert -1.0 <= ceiling["kendall_tau"] <= 1.0 and ceiling["mape"] >= 0
    assert ceiling["pass_sd"] > 0  # real timings of a pass never repeat exactly
    if ceiling["kendall_tau_sd"] > 0:  # 3 nets: every simulated check may rank them alike
        gap = (report["kendall_tau"] - ceiling["kendall_tau"]) / ceiling["kendall_tau_sd"]
        assert report["tau_vs_ceiling_sds"] == pytest.approx(gap, abs=0.01)
    else:
        assert report["tau_vs_ceiling_sds"] is None
    # the machine's speed: 3 calibration nets timed again, their median time now over then
    assert report["speed_from"] == "3 calibration nets" and len(report["gauge_nets"]) == 3
    speed = report["speed_vs_build"]
    assert speed == pytest.approx(statistics.median(
        n["measured_ms"] / n["build_ms"] for n in report["gauge_nets"]))  # fmt: skip
    built = json.loads(table.read_text())["meta"]["calibration_nets"]
    assert [n["build_ms"] for n in report["gauge_nets"]] == [n["measured_ms"] for n in built]
    assert report["reference_vs_build"] > 0  # the reference net's ratio is still reported
    assert report["refit"] is None  # 3 nets: too few to refit the table's scales to
    errors = [abs(r["predicted_ms"] - r["measured_ms"] / speed) / (r["measured_ms"] / speed)
              for r in report["rows"]]  # fmt: skip
    expected = 100 * sum(errors) / len(errors)
    assert speed > 0 and report["mape_at_build_speed"] == pytest.approx(expected)
    assert len(report["rows"]) == 3 and report["runtime"] == "torch" and "noise" in report
    assert [r["level"] for r in report["picked"]] == list(PICK_LEVELS)  # the table's own picks
    assert report["picked_mape"] >= 0 and set(report["picked"][0]["choices"]) == {
        lay.name for lay in load_space(TINY_SPACE).searchable_layers
    }
    errors = [abs(r["predicted_ms"] - r["measured_ms"] / speed) / (r["measured_ms"] / speed)
              for r in report["picked"]]  # fmt: skip
    assert report["picked_mape_at_build_speed"] == pytest.approx(100 * sum(errors) / len(errors))
    here = device_name(torch.device("cpu"))  # the table names the CPU it was built on
    assert report["machine"] == {"table": here, "check": here} and "built on" not in check.stderr
    data = json.loads(table.read_text())
    data["meta"]["device_name"] = "Another CPU (cpu family 1, model 1)"
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    elsewhere = CliRunner().invoke(cli, ["lut", "check", "--table", str(moved), "--samples", "2",
                                         "--rounds", "1", "--min-time", "0.01", "--allow-noise",
                                         "--in-process"])  # fmt: skip
    assert elsewhere.exit_code == 0, elsewhere.output
    assert [x for x in elsewhere.stderr.splitlines() if "built on" in x] == [
        f"warning: {moved} was built on Another CPU (cpu family 1, model 1), this check runs on "
        f"{here}: the errors include the difference between the two devices (build a table "
        f"here to model this one)"
    ]
    other = CliRunner().invoke(cli, ["lut", "check", "--table", str(table), "--runtime",
                                     "onnxruntime"])  # fmt: skip
    assert other.exit_code == 1 and "measured in torch, not onnxruntime" in other.output
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


def test_mismatched_runtime_threads_and_unknown_runtime_are_one_line_errors(lut, tmp_path):
    space, table, path = lut
    with pytest.raises(DnasError, match=r"missing runtime onnxruntime \(table has torch\)"):
        LatencyCostModel(LatencyOptions(str(path), runtime="onnxruntime")).table(space, (64, 64),
                                                                                  16)  # fmt: skip
    threads = table["meta"]["threads"] + 1
    with pytest.raises(DnasError, match=rf"threads {threads} \(table has {threads - 1}\)"):
        LatencyCostModel(LatencyOptions(str(path), threads=threads)).table(space, (64, 64), 16)
    with pytest.raises(DnasError, match=r"unknown runtime 'tvm' \(registered: onnxruntime, torch"):
        LatencyCostModel(LatencyOptions(str(path), runtime="tvm"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(table | {"meta": table["meta"] | {"runtime": "tvm"}}))
    with pytest.raises(DnasError, match=r"bad.json: meta.runtime: expected one of onnxruntime, "
                                        r"torch, got 'tvm'"):  # fmt: skip
        LatencyCostModel(LatencyOptions(str(bad))).table(space, (64, 64), 16)
    old = tmp_path / "old.json"  # tables written before runtimes were eager PyTorch
    meta = {k: v for k, v in table["meta"].items() if k != "runtime"}
    old.write_text(json.dumps(table | {"meta": meta}))
    LatencyCostModel(LatencyOptions(str(old), runtime="torch")).table(space, (64, 64), 16)


def test_lut_build_needs_exactly_one_of_space_and_config(tmp_path):
    for args in ([], ["--space", str(TINY_SPACE), "--config", str(tmp_path / "exp.yaml")]):
        result = CliRunner().invoke(cli, ["lut", "build", *args, "-o", str(tmp_path / "t.json")])
        assert result.exit_code == 1 and "give one of --space and --config" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


class Tag(torch.nn.Module):
    """A module whose output names it, so a fake timer knows which one it is timing."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def forward(self, x: torch.Tensor) -> str:
        return self.tag


def test_a_pass_times_ops_in_chunks_and_whole_networks_in_turn(monkeypatch):
    """``time_pass`` sends the op entries to the chunked guard and the named networks to the
    timing in turn, and returns the ops' timings first."""
    seen: dict[str, list[str]] = {}

    def spy(method: str):
        real = getattr(NoiseGuard, method)

        def wrapped(self, jobs, done=None):
            seen[method] = [name for name, _ in jobs]
            return real(self, jobs, done)

        return wrapped

    for method in ("run", "run_interleaved"):
        monkeypatch.setattr(NoiseGuard, method, spy(method))
    space = load_space(TINY_SPACE)
    nets = [("network 1", reference_choices(space)), ("network 2", reference_choices(space))]
    plan = TimingPass(quick_bench(), space, (32, 32), 4, 1, nets, ops=True, what="t",
                      warm_up_seed=0)  # fmt: skip
    timings, _, _ = time_pass(plan, 1, None)
    assert seen["run_interleaved"] == ["network 1", "network 2"]
    assert seen["run"][-1] == "head" and "network 1" not in seen["run"]
    assert len(timings) == len(seen["run"]) + 2


def test_time_forwards_times_the_nets_in_turn_in_every_round(monkeypatch):
    calls: list[list[str]] = []

    def in_turn(self, fns, between=None) -> list[Timing]:  # each round 1 ms slower
        calls.append([fn() for fn in fns])
        return [Timing(10.0 + len(calls) + i, 0.0, 8) for i in range(len(fns))]

    monkeypatch.setattr(Bench, "time_in_turn", in_turn)
    bench = Bench(get_runtime("torch", torch.device("cpu"), 1), policy=NoisePolicy(rounds=3))
    ms = time_forwards(bench, {"a": Tag("a"), "b": Tag("b")}, [torch.zeros(1)])
    assert calls == [["a", "b"]] * 3
    assert ms == {"a": 12.0, "b": 13.0}  # medians of 11, 12, 13 and of 12, 13, 14


def test_a_table_of_other_widths_or_impossible_times_is_refused_in_one_line(lut, tmp_path):
    """Op names and input shapes alone do not fix an op's cost: a table of the same ops built
    for other widths is refused, and so are entries no timing gives."""
    space, table, path = lut
    data = space.to_dict()
    data["stages"][2]["width"] = 24  # stage3.0: same input, same ops, wider output
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump(data))
    with pytest.raises(DnasError, match=r"missing stage3.0 with output \[24, 4, 4\]"):
        LatencyCostModel(LatencyOptions(str(path))).table(load_space(wider), (64, 64), 16)
    edits = {
        r"overhead_ms: the table predicts -[0-9.e+]+ ms for this space's cheapest net":
            {"overhead_ms": -1e6},  # below any net's time, however slow the machine
        r"scale: expected a positive number, got 0": {"scale": 0},
        r"layers.stage1.0.k3e3: expected milliseconds in \[0, 1e\+09\], got 1e\+308":
            {"layers": table["layers"] | {"stage1.0": {"k3e3": 1e308}}},
        r"meta.head: expected null or a mapping with type and inputs, got 'x'":
            {"meta": table["meta"] | {"head": "x"}},
    }  # fmt: skip
    for message, edit in edits.items():
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(table | edit))
        with pytest.raises(DnasError, match=rf"bad.json: {message}"):
            LatencyCostModel(LatencyOptions(str(bad))).table(space, (64, 64), 16)
    older = tmp_path / "older.json"  # no recorded space: widths unchecked, still accepted
    older.write_text(json.dumps(table | {"meta": {k: v for k, v in table["meta"].items()
                                                  if k != "space_dict"}}))  # fmt: skip
    LatencyCostModel(LatencyOptions(str(older))).table(load_space(wider), (64, 64), 16)


def test_a_head_written_with_its_defaults_matches_the_same_head_left_at_them(lut, tmp_path):
    space, table, path = lut
    recorded = table["meta"]["head"]
    assert recorded["deconv_kernel"] == 4 and recorded["sic"] is True  # defaults recorded
    short = {"type": "slim_deconv", "inputs": recorded["inputs"], "deconv_widths": [8, 8]}
    older = tmp_path / "older.json"  # tables before 2026-12-05 recorded the head as written
    older.write_text(json.dumps(table | {"meta": table["meta"] | {"head": short}}))
    LatencyCostModel(LatencyOptions(str(older))).table(space, (64, 64), 16)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(table | {"meta": table["meta"] | {"head": short | {"sic": False}}}))
    with pytest.raises(DnasError, match="missing head slim_deconv"):
        LatencyCostModel(LatencyOptions(str(other))).table(space, (64, 64), 16)


def test_lut_cli_mistakes_are_one_line_before_any_timing(lut, tmp_path):
    _, _, path = lut
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    build = ["lut", "build", "--space", str(TINY_SPACE)]
    cases = {
        "a-file is a file, not a folder": [*build, "-o", str(occupied / "t.json")],
        "Invalid value for '--input': expected HxW such as 256x192, got '64x64x3'":
            [*build, "--input", "64x64x3", "-o", str(tmp_path / "t.json")],
        "Invalid value for '--batch'":
            [*build, "--batch", "99999999999", "-o", str(tmp_path / "t.json")],
        "--outputs (--joints) goes with --space":
            ["lut", "build", "--config", str(tmp_path / "exp.yaml"), "--outputs", "5", "-o",
             str(tmp_path / "t.json")],
        "Invalid value for '--runtime': unknown runtime 'tvm'":
            ["lut", "check", "--table", str(path), "--runtime", "tvm"],
        "Invalid value for '--max-drift': expected a finite number":
            ["lut", "check", "--table", str(path), "--max-drift", "nan"],
    }  # fmt: skip
    for message, args in cases.items():
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "t.json").exists()


def test_search_options_of_the_latency_model_name_their_key(lut, tmp_path, synth_root):
    _, _, path = lut
    exp = str(write_experiment(tmp_path / "exp.yaml", synth_root))
    out = ["--out", str(tmp_path / "s")]
    latency = ["--cost-model", "latency", "--cost-table", str(path)]
    cases = {
        "--cost-table goes with --cost-model latency": ["--cost-table", str(path)],
        "exp.yaml: cost_model.table: the latency cost model needs a table":
            ["--cost-model", "latency"],
        "--set: cost_model.runtime: unknown runtime 'tvm'":
            [*latency, "--set", "cost_model.runtime=tvm"],
        "--set: cost_model.device: expected one of cpu, cuda, got 'gpu'":
            [*latency, "--set", "cost_model.device=gpu"],
    }  # fmt: skip
    for message, args in cases.items():
        result = CliRunner().invoke(cli, ["search", exp, *out, *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    threads = json.loads(path.read_text())["meta"]["threads"] + 1
    result = CliRunner().invoke(cli, ["search", exp, *out, "--cost-model", "latency",
                                      "--cost-table", str(path), "--set",
                                      f"cost_model.threads={threads}"])  # fmt: skip
    fresh = path.parent / f"lut-tiny-64x64-torch-cpu-b1-t{threads}.json"  # beside the table
    assert f"--threads {threads} -o {fresh}" in result.output  # the fix it suggests
    assert "--force" not in result.output  # never over the table, right for its own settings


def test_a_resumed_search_refuses_a_table_whose_costs_changed(lut, tmp_path, synth_root):
    _, table, path = lut
    mine = tmp_path / "t.json"
    mine.write_text(json.dumps(table))
    exp = str(write_experiment(tmp_path / "exp.yaml", synth_root))
    args = ["search", exp, "--out", str(tmp_path / "s"), "--cost-model", "latency",
            "--cost-table", str(mine)]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    mine.write_text(json.dumps(table | {"overhead_ms": table["overhead_ms"] + 1.0}))
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 1
    assert f"cost_model: the costs of {mine} differ from those this search started" in result.output
    assert CliRunner().invoke(cli, [*args, "--resume", "--force"]).exit_code == 0


def test_a_check_elsewhere_says_so_unless_the_table_names_no_machine(tmp_path):
    """``machine_warning``: one line where the table's device differs from the check's; none
    for the same device, or for tables from before CPUs were named (device_name "cpu")."""
    path = tmp_path / "lut.json"
    assert machine_warning({"table": "cpu", "check": "AMD EPYC (cpu family 26, model 2)"},
                           path) is None  # fmt: skip
    assert machine_warning({"table": None, "check": "x"}, path) is None
    assert machine_warning({"table": "A", "check": "A"}, path) is None
    assert machine_warning({"table": "NVIDIA GeForce RTX 2080 Ti", "check": "NVIDIA H200"},
                           path).startswith(
        f"warning: {path} was built on NVIDIA GeForce RTX 2080 Ti, this check runs on NVIDIA H200"
    )  # fmt: skip


def test_device_name_reads_the_cpu_model_family_and_model(tmp_path, monkeypatch):
    """VMs that all say "AMD EPYC" differ in family and model (and 2x in speed), ARM boards
    only in implementer and part: the name keeps them (every distinct value, as big.LITTLE
    cores differ); without /proc/cpuinfo, the platform's processor."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
                    "model\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme\n\n"
                    "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
                    "model\t\t: 2\nmodel name\t: AMD EPYC\n")  # fmt: skip
    cpu = torch.device("cpu")
    assert device_name(cpu, info) == "AMD EPYC (cpu family 26, model 2)"
    monkeypatch.setattr("platform.processor", lambda: "")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    info.write_text("processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\n"
                    "CPU part\t: 0xd05\n\nprocessor\t: 4\nCPU implementer\t: 0x41\n"
                    "CPU part\t: 0xd0a\n")  # fmt: skip
    assert device_name(cpu, info) == "aarch64 (CPU implementer 0x41, CPU part 0xd05/0xd0a)"
    info.write_text("processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n"
                    "model\t\t: IBM,9009-42A\n")  # fmt: skip
    assert device_name(cpu, info) == "POWER9 (architected), altivec supported (model IBM,9009-42A)"
    info.write_bytes(b"model name\t: caf\xe9 CPU\n")  # not UTF-8: read, not raised
    assert device_name(cpu, info) == "caf\ufffd CPU"
    monkeypatch.setattr("platform.processor", lambda: "arm")
    assert device_name(cpu, tmp_path / "absent") == "arm"
    assert device_name(torch.device("mps"), info) == "mps"  # not the host CPU's name


def test_a_refit_to_the_checked_nets_tells_another_spell_from_wrong_entries(lut):
    """``refit_scores``: nets timed in a spell that moved each resolution's ops by its own
    factor (exactly the entries' sums, rescaled) are ranked and timed exactly once the scales
    are refitted to the other nets, whatever the table's own scales say; the tau is read in
    sds of the check's ceiling. Nothing to refit from: no entries as timed, or too few nets."""
    space, timed, _ = lut
    table = copy.deepcopy(timed)  # entries of fixed values: timing noise cannot tie nets here
    entries = np.random.default_rng(2)
    for ops in [table["isolated"]["fixed"], *table["isolated"]["layers"].values()]:
        ops.update({op: float(entries.uniform(0.05, 0.5)) for op in ops})
    raw = entries_as_timed(table)
    assert raw["layers"] == table["isolated"]["layers"] and raw["shapes"] == table["shapes"]
    rng = np.random.default_rng(3)
    nets = [uniform_choices(space.searchable_layers, rng) for _ in range(12)]
    groups = sorted({g for n in nets for g in group_parts(raw, space, n)} - {"fixed"})
    spell = {g: (1.6, 0.6)[i % 2] for i, g in enumerate(groups)}
    measured = np.array([sum(ms * spell.get(g, 1.0) for g, ms in group_parts(raw, space, n)
                             .items()) + 0.3 for n in nets])  # fmt: skip
    ceiling = NoiseCeiling(kendall_tau=0.9, mape=1.0, pass_sd=3.0, kendall_tau_sd=0.05)
    refit = refit_scores(table, space, nets, measured, ceiling)
    assert refit["mape"] < 1.0 and refit["kendall_tau"] > 0.95
    assert refit["tau_vs_ceiling_sds"] == pytest.approx((refit["kendall_tau"] - 0.9) / 0.05,
                                                        abs=0.01)  # fmt: skip
    assert refit_scores(table, space, nets, measured, None)["tau_vs_ceiling_sds"] is None
    assert refit["recalibratable"]  # 8 calibration nets the space builds
    # entries that do not know these nets' order: no refit of a few scales puts them right
    shuffled = np.random.default_rng(4).permutation(measured)
    wrong = refit_scores(table, space, nets, shuffled, ceiling)
    assert wrong["kendall_tau"] < 0.5 and wrong["tau_vs_ceiling_sds"] < -8
    bare = {k: v for k, v in table.items() if k != "isolated"}
    assert (
        entries_as_timed(bare) is None and refit_scores(bare, space, nets, measured, None) is None
    )
    assert refit_scores(table, space, nets[:7], measured[:7], ceiling) is None


def test_lut_recalibrate_refits_the_scales_to_the_calibration_nets_timed_now(lut, tmp_path):
    """The entries as timed and the calibration nets stay; the nets' times, the fit, the scaled
    entries and the noise are the refit's; the fit it replaced is kept, refit after refit."""
    _, table, path = lut
    out, again = tmp_path / "now.json", tmp_path / "again.json"
    args = ["--min-time", "0.01", "--rounds", "2", "--in-process", "--allow-noise"]
    result = CliRunner().invoke(cli, ["lut", "recalibrate", "--table", str(path), "-o", str(out),
                                      *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    new = json.loads(out.read_text())
    meta, old = new["meta"], table["meta"]
    done = meta["recalibrations"]
    assert len(done) == 1 and done[0]["fit_before"] == old["calibration_fit"]
    assert new["isolated"] == table["isolated"] and new["shapes"] == table["shapes"]
    before, now = old["calibration_nets"], meta["calibration_nets"]
    assert [n["choices"] for n in now] == [n["choices"] for n in before]
    ratios = [a["measured_ms"] / b["measured_ms"] for a, b in zip(now, before, strict=True)]
    assert done[0]["nets_vs_before"] == pytest.approx(statistics.median(ratios), abs=1e-3)
    fit = meta["calibration_fit"]
    assert fit["heldout_nets"] == 2 and new["overhead_ms"] == pytest.approx(
        fit["overhead_ms"], abs=1e-4
    )
    for name, ops in new["layers"].items():
        scale = fit["scales"][group_of(new, name)]
        for op, ms in ops.items():
            assert ms == pytest.approx(scale * table["isolated"]["layers"][name][op], rel=1e-4)
    assert meta["noise"] != old["noise"] and meta["date"] == old["date"]  # the entries' date
    # stdout's line (on a busy machine, stderr's progress lines come with it)
    line = next(text for text in result.output.splitlines() if text.startswith("wrote "))
    assert line.startswith(f"wrote {out}: its 8 calibration networks took ")
    assert "x their times at the last calibration; calibrated on 8 networks" in line
    second = CliRunner().invoke(cli, ["lut", "recalibrate", "--table", str(out), "-o",
                                      str(again), *args])  # fmt: skip
    assert second.exit_code == 0, second.output
    history = json.loads(again.read_text())["meta"]["recalibrations"]
    assert len(history) == 2 and history[1]["fit_before"] == fit
    assert meta["allocator"] == old["allocator"] == keep_freed_memory()  # timed as the table
    check = CliRunner().invoke(cli, ["lut", "check", "--table", str(out), "--samples", "2",
                                     "--rounds", "1", "--min-time", "0.01", "--allow-noise",
                                     "--in-process"])  # fmt: skip
    assert check.exit_code == 0, check.output
    assert "calibration nets took" in check.output  # gauged against the refit, and says so
    assert "x as long as at its last recalibration; MAPE at that speed" in check.output
    # the check's refit: its nets (seed 1) and their measured times, refitted leave-one-out
    check = CliRunner().invoke(cli, ["lut", "check", "--table", str(out), "--samples", "8",
                                     "--format", "json", *args])  # fmt: skip
    assert check.exit_code == 0, check.output
    report = json.loads(check.stdout)
    rng = np.random.default_rng(1)
    space = load_space(TINY_SPACE)
    checked = [uniform_choices(space.searchable_layers, rng) for _ in range(8)]
    real = np.array([r["measured_ms"] for r in report["rows"]])
    ceiling = NoiseCeiling(**report["noise_ceiling"]) if report["noise_ceiling"] else None
    expected = refit_scores(new, space, checked, real, ceiling)
    # recomputed from the JSON's rounded rows and ceiling: the MAPE may differ in its 4th
    # decimal and the distance from the ceiling (rounded to 0.01) by one in its last digit
    rounding = {"mape": 1e-3, "tau_vs_ceiling_sds": 0.011}
    assert report["refit"] == {k: pytest.approx(v, abs=rounding[k]) if k in rounding else v
                               for k, v in expected.items()}  # fmt: skip
    assert report["recalibrated"] and report["refit"]["recalibratable"]
    kept = CliRunner().invoke(cli, ["lut", "recalibrate", "--table", str(path), "-o", str(out)])
    assert kept.exit_code == 1 and "already exists; pass --force" in kept.output


def test_lut_recalibrate_refuses_a_table_it_cannot_refit_in_one_line(lut, tmp_path):
    _, table, path = lut
    nets = table["meta"]["calibration_nets"]
    first = next(iter(table["layers"]))
    odd = [*nets[:7], {**nets[7], "choices": {**nets[7]["choices"], first: "k9e9"}}]
    iso = table["isolated"]
    cases = {
        "isolated: expected a mapping with fixed and layers, the entries as timed":
            {"isolated": None},
        "meta.calibration_nets: expected a list of 8 or more networks (the build's "
        "--calibration), got 5": {"meta": table["meta"] | {"calibration_nets": nets[:5]}},
        "meta.calibration_nets: expected a list of 8 or more networks (the build's "
        "--calibration), got 0": {"meta": table["meta"] | {"calibration_nets": 5}},
        "meta.calibration_nets: expected networks this space can build, each with its choices "
        "and a positive measured_ms; 1 of 8 are not":
            {"meta": table["meta"] | {"calibration_nets": odd}},
        f"isolated.layers.{first}: expected timings of the same ops as layers.{first}":
            {"isolated": iso | {"layers": iso["layers"] | {first: {"k9e9": 1.0}}}},
        "isolated.fixed: expected timings of the same entries as fixed":
            {"isolated": iso | {"fixed": {k: v for k, v in iso["fixed"].items() if k != "head"}}},
        "isolated.fixed.head: expected milliseconds in [0, 1e+09], got -1.0":
            {"isolated": iso | {"fixed": iso["fixed"] | {"head": -1.0}}},
        "meta.recalibrations: expected the list that dnas lut recalibrate writes, got 'x'":
            {"meta": table["meta"] | {"recalibrations": "x"}},
    }  # fmt: skip
    for message, change in cases.items():
        data = {k: v for k, v in (table | change).items() if v is not None}
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        out = tmp_path / "out.json"
        result = CliRunner().invoke(cli, ["lut", "recalibrate", "--table", str(bad), "-o",
                                          str(out), "--rounds", "1", "--in-process"])  # fmt: skip
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    other = CliRunner().invoke(cli, ["lut", "recalibrate", "--table", str(path), "-o", str(out),
                                     "--runtime", "onnxruntime"])  # fmt: skip
    assert other.exit_code == 1 and "measured in torch, not onnxruntime" in other.output
