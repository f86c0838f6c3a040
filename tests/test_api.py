"""The public Python API (``dnas/__init__.py``) and the example that uses it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dnas

ROOT = Path(__file__).parent.parent


def test_import_dnas_is_light_and_every_export_resolves():
    code = "import sys, dnas; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    for name in dnas.__all__:
        assert getattr(dnas, name) is not None, name
    assert set(dir(dnas)) == {*dnas.__all__, "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'search_space'"):
        dnas.search_space  # noqa: B018  (the old flat module is no public name)


def test_loading_every_plugin_leaves_the_slow_libraries_unimported():
    """Every CLI command loads every plugin first; scipy.stats alone took 2 s of a 7.5 s
    ``dnas --help`` on the AMD EPYC VM, so the statistics, the fitting and the plotting
    libraries are imported where they are used."""
    code = ("import sys; from dnas.registry import load_plugins; load_plugins(); "
            "print(sorted(m for m in ('scipy.stats', 'scipy.optimize', 'matplotlib') "
            "if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_api_example_searches_derives_and_trains(tmp_path):
    out = tmp_path / "api"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_search.py"), "--out",
                           str(out), "--steps", "2"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    target = float(re.search(r"target ([\d.]+) MMAC", done.stdout).group(1))
    derived = json.loads((out / "search" / "search.json").read_text())
    assert abs(derived["final_cost"] / target - 1) <= 0.03  # the budget search landed
    arch = dnas.load_space(str(out / "arch.yaml"))
    assert not arch.searchable_layers  # a fixed net
    assert (out / "train" / "model.pt").is_file()
    score = float(re.search(r"^Mean: ([\d.]+)$", done.stdout, re.M).group(1))
    assert 0 <= score <= 100


def test_wrong_api_inputs_are_dnas_errors_naming_what_was_wrong(tmp_path):
    from conftest import TINY_SPACE

    from dnas.search.oneshot import rank

    space = dnas.load_space(TINY_SPACE)
    table = dnas.cost_table(space, (64, 64), 16)
    choices = {layer.name: layer.candidates[0] for layer in space.searchable_layers}
    assert table.of_choices(choices) > table.fixed
    first = next(iter(choices))
    cases = [
        (lambda: table.of_choices({first: choices[first]}), "does not match its layers"),
        (lambda: table.of_choices(choices | {"stage9.0": "k3e3"}), "not in the table stage9.0"),
        (lambda: table.of_choices(choices | {first: "k9e9"}), f"layer {first} has no op 'k9e9'"),
        (lambda: dnas.Network(str(TINY_SPACE), 16), "expected a SearchSpace"),
        (lambda: dnas.Network(space, 0), "expected num_outputs >= 1"),
        (lambda: dnas.decisiveness({"a": []}), "at least one op per layer"),
        (lambda: dnas.decisiveness({"a": [-1.0, 2.0]}), "are not op probabilities (each in 0..1"),
        (lambda: dnas.decisiveness({"a": [float("nan")]}), "the search diverged"),
        (lambda: dnas.compare_runs(str(tmp_path)), "a list of at least two search runs"),
        # the bounds of the CLI's --band and --samples (dnas.search.bounds), checked first
        (lambda: dnas.compare_runs(["a", "b"], band=5e-4), "agreement: expected band in 0.001..1"),
        (lambda: dnas.compare_runs(["a", "b"], band=float("nan")), "got nan"),
        (lambda: dnas.compare_runs(["a", "b"], samples=9), "agreement: expected samples >= 10"),
        (lambda: rank("a", [], band=1.5), "rank: expected band in 0.001..1"),
        (lambda: dnas.write_architecture(space, tmp_path), "a folder"),
        (lambda: dnas.CostTable.load(str(tmp_path / "none.json")), "cannot read cost table"),
    ]
    for call, message in cases:
        with pytest.raises(dnas.DnasError, match=re.escape(message)):
            call()
    (tmp_path / "other.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(dnas.DnasError, match="not a dnas cost table"):
        dnas.CostTable.load(str(tmp_path / "other.json"))
    dnas.write_architecture(space.with_choices(choices), tmp_path / "a.yaml", None)
    assert dnas.load_space(tmp_path / "a.yaml").is_fixed


def test_the_api_never_overwrites_a_run_without_force(tmp_path):
    from conftest import TINY_SPACE, write_experiment

    from tasks.pose.synth import write_synthetic_mpii

    write_synthetic_mpii(tmp_path / "data", n_train=16, n_val=4, seed=0, image_size=64)
    exp = dnas.load_experiment(write_experiment(tmp_path / "exp.yaml", tmp_path / "data",
                                                TINY_SPACE))  # fmt: skip
    run = tmp_path / "s"
    dnas.run_search(exp, run)
    logs = {name: (run / name).read_bytes() for name in ("log.txt", "metrics.jsonl")}
    with pytest.raises(dnas.DnasError, match="already holds an earlier run's checkpoints, "
                                             "search.pt, search.json; pass --force"):  # fmt: skip
        dnas.run_search(exp, run)
    assert {name: (run / name).read_bytes() for name in logs} == logs  # refused before clearing
    assert dnas.run_search(exp, run, force=True)["choices"]
    arch = tmp_path / "arch.yaml"
    dnas.write_architecture(dnas.derive(run)[0], arch)
    dnas.run_train(exp, str(arch), tmp_path / "t")
    with pytest.raises(dnas.DnasError, match="already holds an earlier run's checkpoints, "
                                             "last.pt, best.pt, model.pt"):  # fmt: skip
        dnas.run_train(exp, str(arch), tmp_path / "t")
    with pytest.raises(dnas.DnasError, match="kind: expected one of weight, target, got 'targte'"):
        dnas.run_sweep(exp, "targte", [1.2], tmp_path / "sweep")


def test_a_corrupt_cached_table_is_measured_again(tmp_path, monkeypatch):
    from conftest import TINY_SPACE

    monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path))
    space = dnas.load_space(TINY_SPACE)
    first = dnas.cost_table(space, (64, 64), 16)
    (cached,) = (tmp_path / "cost_tables").glob("*.json")
    cached.write_text("{half a fil")
    assert dnas.cost_table(space, (64, 64), 16).layers == first.layers
    assert json.loads(cached.read_text())["layers"] == first.layers  # written again


def test_overrides_are_taken_from_any_iterable_and_checked():
    exp = dnas.load_experiment(ROOT / "examples" / "demo.yaml", (o for o in ["seed=5"]))
    assert exp.seed == 5
    with pytest.raises(dnas.DnasError, match="overrides: expected a list"):
        dnas.load_experiment(ROOT / "examples" / "demo.yaml", "seed=5")


def test_entry_points_name_a_wrong_kind_of_argument():
    from conftest import TINY_SPACE

    space = dnas.load_space(TINY_SPACE)
    cases = [
        (lambda: dnas.load_space(None), "load_space: expected a shipped name or a YAML path"),
        (lambda: dnas.cost_table(str(TINY_SPACE), (64, 64), 16), "cost_table: expected a "),
        (lambda: dnas.cost_table(space, 64, 16), "cost_table: expected input_hw"),
        (lambda: dnas.cost_table(space, (64, 64), 16, {"type": "flops"}), "a CostConfig"),
        (lambda: dnas.build_task("x"), "build_task: expected an Experiment"),
    ]
    for call, message in cases:
        with pytest.raises(dnas.DnasError, match=re.escape(message)):
            call()
