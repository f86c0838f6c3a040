"""Search, derive, train and eval end to end on tiny inputs (real MPII samples, synthetic data)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from dnas import checkpoint
from dnas.cli import cli
from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.errors import DnasError
from dnas.search.cost_model import get_cost_model
from dnas.search.run import run_search, split_indices
from dnas.space.graph import load_space


def test_split_is_seeded_disjoint_and_80_20():
    w, a = split_indices(100, 0.2, seed=3)
    assert len(w) == 80 and len(a) == 20 and not set(w) & set(a)
    assert (w, a) == split_indices(100, 0.2, seed=3)
    assert a != split_indices(100, 0.2, seed=4)[1]


def test_two_step_darts_search(tmp_path, real_mpii_root):
    search = {"warmup_epochs": 1, "epochs": 1, "steps_per_epoch": 2}
    path = write_experiment(tmp_path / "exp.yaml", real_mpii_root, search=search)
    result = run_search(load_experiment(path), tmp_path / "run", Reporter(lambda _: None))
    ckpt = checkpoint.load(tmp_path / "run" / "search.pt")
    assert ckpt["epoch"] == 2 and ckpt["kind"] == "dnas-search"
    alphas = [v for k, v in ckpt["strategy"]["model"].items() if k.startswith("alphas.")]
    assert len(alphas) == 5
    # the joint epoch updated the architecture: Adam moves every alpha by about its lr
    assert all(float(a.abs().max()) > 1e-4 for a in alphas)
    assert set(result["choices"]) == set(result["arch_probs"])
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["choices"] == result["choices"] and saved["final_cost"] > 0
    assert (tmp_path / "run" / "config.yaml").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_cost_term_pushes_the_search_to_cheaper_ops(tmp_path, real_mpii_root):
    """With a large lambda the architecture steps lower the expected cost."""
    costs = []
    for weight in (0.0, 50.0):
        path = write_experiment(
            tmp_path / f"exp{weight}.yaml", real_mpii_root,
            search={"warmup_epochs": 0, "epochs": 6, "steps_per_epoch": 1, "drop_path": 0.0,
                    "arch_optimizer": {"lr": 0.3}},
            cost_model={"type": "flops", "weight": weight},
        )  # fmt: skip
        run_search(load_experiment(path), tmp_path / f"run{weight}", Reporter(lambda _: None))
        ckpt = checkpoint.load(tmp_path / f"run{weight}" / "search.pt")
        from dnas.search.cost_model import get_cost_model
        from dnas.space.graph import space_from_dict

        space = space_from_dict(ckpt["space"], "x")
        table = get_cost_model("flops").table(space, (64, 64), 16)
        probs = [torch.tensor(ckpt["arch_probs"][n.name]) for n in space.searchable_layers]
        costs.append(float(table.expected([n.name for n in space.searchable_layers], probs)))
    uniform_cost = costs[0]
    assert costs[1] < 0.9 * uniform_cost


def test_random_search_keeps_the_best_of_n(tmp_path, real_mpii_root):
    path = write_experiment(
        tmp_path / "exp.yaml", real_mpii_root,
        search={"strategy": "random", "steps_per_epoch": 1,
                "random": {"samples": 3, "epochs_per_arch": 1}},
    )  # fmt: skip
    result = run_search(load_experiment(path), tmp_path / "run", Reporter(lambda _: None))
    history = checkpoint.load(tmp_path / "run" / "search.pt")["strategy"]["history"]
    assert len(history) == 3
    best = min(history, key=lambda h: h["val_loss"])
    assert result["choices"] == best["choices"]
    assert result["final_cost"] == pytest.approx(best["cost"])


def test_random_search_budget(tmp_path, real_mpii_root):
    base = {"strategy": "random", "steps_per_epoch": 1, "random": {"samples": 2,
            "epochs_per_arch": 1, "budget": 1.2}}  # fmt: skip
    path = write_experiment(tmp_path / "exp.yaml", real_mpii_root, search=base)
    run_search(load_experiment(path), tmp_path / "run", Reporter(lambda _: None))
    history = checkpoint.load(tmp_path / "run" / "search.pt")["strategy"]["history"]
    assert all(h["cost"] <= 1.2 for h in history)
    path = write_experiment(tmp_path / "exp2.yaml", real_mpii_root,
                            search={**base, "random": {**base["random"], "budget": 0.5,
                                                       "max_tries": 50}})  # fmt: skip
    message = (r"exp2.yaml: search.random.budget: 0.5 MMAC lies below the space's cheapest net "
               r"\(0.9669 MMAC\)")  # fmt: skip
    with pytest.raises(DnasError, match=message):
        run_search(load_experiment(path), tmp_path / "run2", Reporter(lambda _: None))
    # under a budget form both limits hold: the band of the target, below the cap
    band = {"form": "budget", "target": 1.3, "tolerance": 0.1}
    path = write_experiment(tmp_path / "exp3.yaml", real_mpii_root, search=base, cost_model=band)
    run_search(load_experiment(path), tmp_path / "run3", Reporter(lambda _: None))
    history = checkpoint.load(tmp_path / "run3" / "search.pt")["strategy"]["history"]
    assert all(1.17 <= h["cost"] <= 1.2 for h in history)
    path = write_experiment(tmp_path / "exp4.yaml", real_mpii_root, search=base,
                            cost_model={**band, "target": 1.5})  # fmt: skip
    below = r"search.random.budget: 1.2 MMAC lies below the band 1.35..1.65 of cost_model.target"
    with pytest.raises(DnasError, match=below):
        run_search(load_experiment(path), tmp_path / "run4", Reporter(lambda _: None))
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run4").exists()  # at set-up


def test_random_search_trains_each_architecture_once(tmp_path, real_mpii_root):
    """Candidates are drawn anew until they differ from those trained (NNI's dedup): under a
    cap that 3 of the tiny space's 72 nets meet, 3 samples train those 3; a 4th must repeat
    one, and the run says so before it starts."""
    space = load_space(TINY_SPACE)
    table = get_cost_model("flops").table(space, (64, 64), 16)
    names = [layer.name for layer in space.searchable_layers]
    nets = [
        dict(zip(names, ops, strict=True))
        for ops in itertools.product(*(layer.candidates for layer in space.searchable_layers))
    ]
    costs = sorted({table.of_choices(net) for net in nets})
    cap = costs[2]
    cheap = {tuple(n.values()) for n in nets if table.of_choices(n) <= cap}
    assert len(cheap) == 3  # three nets of three distinct costs
    for samples in (3, 4):
        search = {"strategy": "random", "steps_per_epoch": 1,
                  "random": {"samples": samples, "epochs_per_arch": 1, "budget": cap}}  # fmt: skip
        path = write_experiment(tmp_path / f"exp{samples}.yaml", real_mpii_root, search=search)
        lines = []
        result = run_search(load_experiment(path), tmp_path / f"run{samples}",
                            Reporter(lines.append))  # fmt: skip
        drawn = [tuple(c["choices"][n] for n in names) for c in result["candidates"]]
        assert set(drawn) == cheap and len(drawn) == samples
        notes = [line for line in lines if line.startswith("warning: search.random.samples")]
        assert notes == ([] if samples == 3 else [
            f"warning: search.random.samples: 4, but the draws find only 3 different "
            f"architectures costing {table.cost_range()[0]:.4g}..{cap:.4g} MMAC; some will be "
            "trained more than once"])  # fmt: skip


def test_random_search_widens_a_band_no_draw_lands_in(tmp_path, real_mpii_root):
    """tolerance 0 asks for the target exactly: no net of the tiny space costs 1.3, so the
    draws come from the narrowest band around it that they land in, the run says so, and the
    derived net is the best candidate as trained (no projection of it)."""
    search = {"strategy": "random", "steps_per_epoch": 1,
              "random": {"samples": 2, "epochs_per_arch": 1}}  # fmt: skip
    band = {"form": "budget", "target": 1.3, "tolerance": 0.0}
    path = write_experiment(tmp_path / "exp.yaml", real_mpii_root, search=search, cost_model=band)
    lines = []
    result = run_search(load_experiment(path), tmp_path / "run", Reporter(lines.append))
    notes = [line for line in lines if line.startswith("warning: cost_model.tolerance")]
    assert len(notes) == 1 and "too few random draws land within 1.3..1.3 MMAC" in notes[0]
    low, high = result["band"]
    assert low < 1.3 < high and high / 1.3 - 1 < 0.1 and 1.3 / low - 1 < 0.1
    costs = [h["cost"] for h in result["candidates"]]
    assert all(low <= c <= high for c in costs)
    assert result["final_cost"] in costs and result["projected_layers"] == 0
    assert "the nearest" not in lines[-1]  # the closing line: inside its (widened) band
    derived = CliRunner().invoke(cli, ["derive", str(tmp_path / "run"), "-o",
                                       str(tmp_path / "a.yaml")])  # fmt: skip
    off = 100 * (result["final_cost"] / 1.3 - 1)
    assert derived.exit_code == 0 and derived.stderr == ""  # inside the band it was held to
    assert (
        f"derived architecture cost: {result['final_cost']:.4g} MMAC (target 1.3 MMAC, "
        f"{off:+.1f} %); decisiveness (mean top op probability) 1.000"
    ) in derived.stdout


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_pipeline_on_a_tiny_config(tmp_path):
    """The demo commands on tiny synthetic data: synth -> search -> derive -> train -> eval."""
    data = tmp_path / "synth"
    out = invoke("data", "synth-mpii", data, "--train", 24, "--val", 6, "--size", 96)
    assert "wrote 24 train and 6 val images" in out
    assert "cached" in invoke("data", "synth-mpii", data, "--train", 24, "--val", 6, "--size", 96)
    exp = write_experiment(tmp_path / "exp.yaml", data)
    invoke("search", exp, "--out", tmp_path / "search")
    out = invoke("derive", tmp_path / "search", "-o", tmp_path / "arch.yaml")
    assert "stage1.0" in out
    invoke("train", exp, "--arch", tmp_path / "arch.yaml", "--out", tmp_path / "train")
    for name in ("model.pt", "best.pt", "last.pt", "config.yaml"):
        assert (tmp_path / "train" / name).exists()
    out = invoke("eval", exp, "--arch", tmp_path / "arch.yaml", "--weights",
                 tmp_path / "train" / "model.pt", "--out", tmp_path / "eval")  # fmt: skip
    assert "| | Head |" in out and "\n| PCKh@0.5 | " in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"):
        assert 0.0 <= results[key] <= 100.0
    assert results["architecture"] == str((tmp_path / "arch.yaml").resolve())
    assert results["params"] > 0 and results["macs"] > 0
    assert (tmp_path / "eval" / "pred.mat").exists()
    as_json = json.loads(invoke("eval", exp, "--arch", tmp_path / "arch.yaml", "--weights",
                                tmp_path / "train" / "best.pt", "--out", tmp_path / "eval2",
                                "--format", "json"))  # fmt: skip
    assert set(as_json) >= {"Mean", "Mean@0.1", "params", "macs", "architecture"}
    invoke("train", exp, "--arch", tmp_path / "arch.yaml", "--out", tmp_path / "train2",
           "--init", tmp_path / "train" / "model.pt", "--set", "train.epochs=1")  # fmt: skip
    random = ["--set", "search.random.samples=2", "--set", "search.random.epochs_per_arch=1"]
    invoke("search", exp, "--out", tmp_path / "random", "--strategy", "random", *random)
    assert json.loads((tmp_path / "random" / "search.json").read_text())["strategy"] == "random"
    again = CliRunner().invoke(cli, ["eval", str(exp), "--arch", str(tmp_path / "arch.yaml"),
                                     "--weights", str(tmp_path / "train" / "model.pt"),
                                     "--out", str(tmp_path / "eval")])  # fmt: skip
    assert again.exit_code == 1 and "results.json already exists" in again.output


def test_train_refuses_a_search_space(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", "mbv2_pose_small", "--out",
                                      str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 1
    assert "28 layers still have several candidate ops" in result.output


def test_demo_script_runs_its_five_commands(tmp_path):
    """examples/demo.sh itself (what `make demo` runs), on a tiny config and data set."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    data = tmp_path / "synth"
    exp = write_experiment(tmp_path / "exp.yaml", data)
    env = {
        **os.environ,
        "DNAS": f"{sys.executable} -m dnas",
        "DATA": str(data),
        "CONFIG": str(exp),
        "OUT": str(tmp_path / "demo"),
        "N_TRAIN": "16",
        "N_VAL": "4",
    }
    done = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| | Head | Shoulder |" in done.stdout
    assert "params " in done.stdout and "MACs " in done.stdout
    results = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())
    assert results["architecture"] == str((tmp_path / "demo" / "arch.yaml").resolve())
    assert str(tmp_path / "demo" / "eval" / "results.json") in done.stdout
    summary = done.stdout.split("\n== summary (", 1)[1].splitlines()  # what to read at the end
    assert summary[1].startswith("search: derived architecture cost: ")
    assert "decisiveness (mean top op probability)" in summary[1]
    assert [line for line in summary if line.startswith("| PCKh@0.5 | ")]
    for picture in ("plots/op_probs.png", "plots/architecture.png", "eval/vis/0000.png"):
        assert (tmp_path / "demo" / picture).is_file(), picture


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    checkpoint.save_atomic({"stem_0.0.weight": torch.zeros(3)}, tmp_path / "w.pt")
    args = ["eval", exp, "--arch", "efficientpose-a", "--weights", tmp_path / "w.pt", "--out",
            tmp_path / "e"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'w.pt'}: weights do not fit "
                                    "architecture 'efficientpose-a': ")  # fmt: skip
    assert len(result.output.strip().splitlines()) == 1
    # what does not fit follows, not torch's empty header line
    assert "Missing key(s) in state_dict" in result.output and "more problem" in result.output


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, real_mpii_root, monkeypatch):
    """A NaN in the second epoch stops the run; the epoch-1 checkpoint stays intact."""
    from tasks.pose.task import PoseTask

    calls = {"n": 0}
    real_loss = PoseTask.loss

    def loss(self, output, batch):
        calls["n"] += 1
        value = real_loss(self, output, batch)
        return value * float("nan") if calls["n"] >= 2 else value

    monkeypatch.setattr(PoseTask, "loss", loss)
    exp = write_experiment(
        tmp_path / "exp.yaml",
        real_mpii_root,
        search={"warmup_epochs": 2, "epochs": 0, "steps_per_epoch": 2},
    )
    with pytest.raises(DnasError, match=r"non-finite train/loss \(nan\) at step 1"):
        run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    assert checkpoint.load(tmp_path / "run" / "search.pt")["epoch"] == 1


def test_search_is_reproducible_with_a_cold_or_warm_cost_cache(tmp_path, real_mpii_root,
                                                               monkeypatch):  # fmt: skip
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    runs = []
    for name in ("cold", "warm"):  # the first run builds the cost table, the second reads it
        monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path / "cache"))
        run_search(load_experiment(exp), tmp_path / name, Reporter(lambda _: None))
        runs.append(checkpoint.load(tmp_path / name / "search.pt")["strategy"]["model"])
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_train_refuses_to_overwrite_an_interrupted_run(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    out = tmp_path / "train"
    out.mkdir()
    (out / "last.pt").write_bytes(b"epoch 7 of a run that was killed")
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", "efficientpose-a", "--out",
                                      str(out)])  # fmt: skip
    assert (
        result.exit_code == 1
        and "already holds an earlier run's last.pt; pass --force" in result.output
    )
    assert (out / "last.pt").read_bytes() == b"epoch 7 of a run that was killed"
