"""dnas sweep: one search per cost weight or budget, table and plot of score vs cost."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import write_experiment

from dnas.cli import cli


def test_sweep_over_cost_weights_writes_table_and_plot(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root,
                           search={"warmup_epochs": 0, "epochs": 3, "drop_path": 0.0,
                                   "arch_optimizer": {"lr": 0.3}},
                           train={"epochs": 1, "eval_every": 1})  # fmt: skip
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--weights",
                                      "0,50"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["weight"] for r in rows] == [0.0, 50.0]
    assert rows[1]["cost"] < rows[0]["cost"]  # a heavier cost term derives a cheaper net
    assert all(r["metric"] == "Mean" and 0 <= r["score"] <= 100 for r in rows)
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "sweep.md").read_text()
    assert "| weight | cost (MMAC) | params | MACs | score: PCKh@0.5, mean of joints (%) |" in table
    assert f"| {rows[0]['score']:.4g} |" in table


def test_the_sweep_table_keeps_four_digits_of_a_small_score(tmp_path):
    """A COCO AP is a fraction: 0.0034 printed to two decimals read 0.00."""
    from dnas.search.sweep import write_outputs

    row = {"target": 9.0, "cost": 8.92, "cost_unit": "MMAC", "params": 1234, "macs": 8920000,
           "metric": "AP", "score": 0.0034}  # fmt: skip
    paths = write_outputs([row, {**row, "target": 12.0, "score": 0.61237}], "target", tmp_path)
    lines = paths["table"].read_text().splitlines()
    assert lines[0] == "| target | cost (MMAC) | vs target | params | MACs | score: AP |"
    assert lines[2] == "| 9 | 8.920 | -0.9 % | 1,234 | 8,920,000 | 0.0034 |"
    assert lines[3].endswith("| 0.6124 |")


def test_sweep_over_budgets_and_usage_errors(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root,
                           train={"epochs": 1, "eval_every": 1})  # fmt: skip
    out = tmp_path / "budget"
    result = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--targets", "1.2"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())
    assert rows[0]["target"] == 1.2
    changed = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--targets", "1.2",
                                       "--resume", "--set", "train.epochs=2"])  # fmt: skip
    assert changed.exit_code == 1 and "ran with another config" in changed.output  # not reused
    assert "train.epochs" in changed.output
    again = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--targets", "1.2",
                                     "--resume", "--force", "--set", "train.epochs=2"])  # fmt: skip
    assert again.exit_code == 0 and "already done" not in again.output  # run again, replaced
    assert "epochs: 2" in (out / "target_1.2" / "search" / "config.yaml").read_text()
    # --set replacing the whole cost_model section with a budget form (no target): the
    # targets supply it, as a file's budget section without one (refused here for its range)
    section = ["--set", "cost_model={type: flops, form: budget}", "--targets", "1e9"]
    whole = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(tmp_path / "w"), *section])
    assert whole.exit_code == 1 and "required by form" not in whole.output, whole.output
    assert "1e+09" in whole.output or "1000000000" in whole.output, whole.output
    both = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--weights", "1",
                                    "--targets", "2"])  # fmt: skip
    assert both.exit_code == 1 and "exactly one of --weights and --targets" in both.output
    bad = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(out), "--weights", "a,b"])
    assert bad.exit_code == 1 and "comma-separated numbers" in bad.output
    flat = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(tmp_path / "flat"),
                                    "--weights", "0.01,1", "--set", "cost_model.form=budget",
                                    "--set", "cost_model.target=1.2"])  # fmt: skip
    assert flat.exit_code == 1 and flat.output.strip().count("\n") == 0
    assert "cost_model.form: budget adapts the cost weight itself" in flat.output
    assert not (tmp_path / "flat").exists()


def test_sweep_keeps_the_runs_of_a_partial_sweep(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    done = tmp_path / "sweep" / "weight_0.1"
    done.mkdir(parents=True)
    (done / "marker").write_text("finished run")
    result = CliRunner().invoke(cli, ["sweep", str(exp), "--out", str(tmp_path / "sweep"),
                                      "--weights", "0.1,1"])  # fmt: skip
    assert result.exit_code == 1 and "already holds an earlier sweep's weight_0.1" in result.output
    assert (done / "marker").read_text() == "finished run"
