"""User mistakes found by auditing the CLI as a new user: each is one line with exit code 1,
names the option or key, and leaves every earlier result and no empty folder behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_ARCH, write_experiment

from dnas.cli import cli
from dnas.config import load_experiment
from dnas.errors import ConfigError, DnasError
from dnas.space.graph import load_space

ARCH = str(TINY_ARCH)


def one_line_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert len(result.output.strip().splitlines()) == 1, result.output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_run(src: Path, dst: Path) -> Path:
    for file in src.rglob("*"):
        if file.is_file():
            (dst / file.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / file.relative_to(src)).write_bytes(file.read_bytes())
    return dst


def test_a_resume_without_its_checkpoints_never_starts_afresh_over_results(tmp_path, finished):
    exp = str(finished["exp"])
    search = copy_run(finished["search"], tmp_path / "search")
    for ckpt in (search / "checkpoints").iterdir():
        ckpt.unlink()
    (search / "checkpoints" / ".step-000000004.pt.tmp").write_bytes(b"")  # a killed write
    before = digest(search / "search.pt")
    one_line_error(["search", exp, "--out", str(search), "--resume"],
                   "no search checkpoint to resume from, and it holds an earlier run's "
                   "search.pt, search.json; pass --force")  # fmt: skip
    assert digest(search / "search.pt") == before
    train = copy_run(finished["train"], tmp_path / "train")
    for ckpt in (train / "checkpoints").iterdir():
        ckpt.unlink()
    one_line_error(["train", exp, "--arch", "efficientpose-a", "--out", str(train), "--resume"],
                   "holds an earlier run's last.pt, best.pt, model.pt")  # fmt: skip
    assert "tiny-arch" in (train / "arch.yaml").read_text()
    other = copy_run(finished["train"], tmp_path / "other")  # another kind's checkpoints
    result = CliRunner().invoke(cli, ["search", exp, "--out", str(other), "--resume"])
    assert result.exit_code == 1 and "holds an earlier run's checkpoints" in result.output
    assert not (other / "search.pt").exists()
    into_search = copy_run(finished["search"], tmp_path / "into-search")
    result = CliRunner().invoke(cli, ["train", exp, "--arch", ARCH, "--out", str(into_search),
                                      "--resume"])  # fmt: skip
    assert result.exit_code == 1 and not (into_search / "arch.yaml").exists()
    forced = CliRunner().invoke(cli, ["search", exp, "--out", str(search), "--resume", "--force"])
    assert forced.exit_code == 0 and "starting afresh" in forced.output


def test_run_mistakes_name_the_option_and_leave_no_folder(tmp_path, finished):
    exp, out = str(finished["exp"]), tmp_path / "out"
    no_epochs = ["--set", "search.epochs=0", "--set", "search.warmup_epochs=0"]
    one_line_error(["search", exp, "--out", str(out), *no_epochs],
                   "search.epochs: the search would run no epoch")  # fmt: skip
    one_line_error(["train", exp, "--arch", str(tmp_path / "no.yaml"), "--out", str(out)],
                   f"--arch {tmp_path / 'no.yaml'}: no such file")  # fmt: skip
    one_line_error(["train", exp, "--arch", ARCH, "--out", str(out), "--init", exp],
                   "exp.yaml: not a PyTorch checkpoint")  # a YAML given as weights  # fmt: skip
    one_line_error(["eval", exp, "--weights", str(finished["search"] / "search.pt"), "-o",
                    str(out)], "search.pt: a search checkpoint (its super net holds every "
                   "candidate op)")  # once: "record no architecture; pass --arch"  # fmt: skip
    assert not out.exists()
    odd = ["--out", str(tmp_path / "odd"), "--set", "input_size=[72, 72]"]
    for command in (["search", exp], ["train", exp, "--arch", ARCH]):
        # found in set-up on the meta device, before config.yaml or a log is written
        one_line_error([*command, *odd], "--set: input_size: 72x72: the head's output "
                       "(16, 20, 20) does not match the heatmap targets (16, 18, 18)")  # fmt: skip
        assert not (tmp_path / "odd").exists()
    run = finished["search"]
    for pair in ([run, run], [run, run / "search.pt"]):
        one_line_error(["agreement", *map(str, pair)], "the same search run given twice")


def test_option_values_are_checked_where_they_are_given(tmp_path, finished, synth_root):
    image = str(next((synth_root / "images").iterdir()))
    weights = str(finished["train"])
    predict = ["predict", image, "--weights", weights]
    one_line_error([*predict, "--box", "nan,0,10,10", "-o", str(tmp_path / "p.png")],
                   "Invalid value for '--box': expected finite numbers")  # fmt: skip
    one_line_error(
        [*predict, "-o", str(tmp_path / "p")],
        "Invalid value for '-o' / '--out': expected an image path such as pose.png",
    )
    one_line_error([*predict, "--min-score", "nan", "-o", str(tmp_path / "p.png")],
                   "Invalid value for '--min-score': expected a finite number")  # fmt: skip
    one_line_error([*predict, "--dataset", "cocoo", "-o", str(tmp_path / "p.png")],
                   "Invalid value for '--dataset': unknown pose dataset 'cocoo'")  # fmt: skip
    one_line_error(["plot", str(tmp_path / "runs" / "search"), "-o", str(tmp_path / "plots")],
                   "search: no such run directory or file; expected a search or train")  # fmt: skip
    search = str(finished["search"] / "search.pt")
    for command in (["export", "-o", str(tmp_path / "s.onnx")],
                    ["predict", image, "-o", str(tmp_path / "s.png")]):  # fmt: skip
        one_line_error([*command, "--weights", search], "search.pt: a search checkpoint (its "
                       "super net holds every candidate op); derive an architecture")  # fmt: skip
    export = ["export", "--weights", weights, "-o", str(tmp_path / "n.onnx")]
    one_line_error([*export, "--opset", "99"], "--opset 99: this torch")
    one_line_error([*export, "--input-size", "0x64"], "Invalid value for '--input-size'")
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    one_line_error(["export", "--weights", weights, "-o", str(occupied / "n.onnx")],
                   "a-file is a file, not a folder")  # fmt: skip
    one_line_error(["data", "synth-mpii", str(occupied / "d")], "a-file is a file, not a folder")
    one_line_error(["data", "synth-mpii", str(tmp_path / "d"), "--seed", "-1"],
                   "Invalid value for '--seed'")  # fmt: skip
    assert not (tmp_path / "d").exists() and not (tmp_path / "n.onnx").exists()


def test_a_sweep_checks_its_values_and_targets_before_the_first_run(tmp_path, finished):
    exp, out = str(finished["exp"]), str(tmp_path / "sweep")
    for values, message in (
        ("0.1,0.10", "--weights: two values name one run directory (weight_0.1, weight_0.1)"),
        ("nan", "expected finite non-negative numbers"),
        ("", "expected finite non-negative numbers"),
        ("0.1,5000", "--weights 5000: cost_model.weight: expected a value <= 1000.0"),
    ):
        one_line_error(["sweep", exp, "--out", out, "--weights", values], message)
    one_line_error(["sweep", exp, "--out", out, "--targets", "1.2,1e6"],
                   "--targets 1e+06: cost_model.target: 1e+06 MMAC is outside this space's "
                   "range")  # fmt: skip
    # forms that need a target load without one: --targets gives each point's (the errors
    # below come after the experiment loaded, where "required by form budget" came before)
    budget = ["--targets", "1.2,1e6", "--set", "cost_model.form=budget"]
    one_line_error(["sweep", exp, "--out", out, *budget], "--targets 1e+06: cost_model.target: ")
    hinge = ["--targets", "1.2,1.20", "--set", "cost_model.form=hinge"]  # hinge: outside warns
    one_line_error(["sweep", exp, "--out", out, *hinge], "--targets: two values name one run")
    one_line_error(["sweep", exp, "--out", out, "--targets", "0"],  # the value, not the file
                   "--targets 0: cost_model.target: expected a value >= 1e-12")  # fmt: skip
    assert not (tmp_path / "sweep" / "target_1.2").exists()


def test_a_group_run_without_its_command_prints_its_help():
    result = CliRunner().invoke(cli, ["lut"])
    assert result.exit_code in (0, 2) and "Error" not in result.output  # click 8.1: 0; 8.2: 2
    assert "build" in result.output and "check" in result.output


def test_set_without_a_key_and_an_absent_device_name_what_was_given(tmp_path, finished):
    exp, out = str(finished["exp"]), str(tmp_path / "out")
    one_line_error(["search", exp, "--out", out, "--set", "=3"],
                   "--set: =3: expected key.path=value with a key on the left")  # fmt: skip
    if not torch.cuda.is_available():
        one_line_error(
            ["search", exp, "--out", out, "--set", "device=cuda"],
            "--set: device: 'cuda' requested but CUDA is not available",
        )


def test_a_value_set_on_the_command_line_is_blamed_on_it_after_loading_too(tmp_path, finished):
    """Checks that run after the config is read (the task's data, the input size against the
    strides) name --set when --set gave the value, for a config file or a run directory, and
    dnas cost --config names --input-size."""
    exp, out = str(finished["exp"]), str(tmp_path / "out")
    one_line_error(["search", exp, "--out", out, "--set", f"task.root={tmp_path / 'none'}"],
                   f"Error: --set: task.root: no such directory '{tmp_path / 'none'}'")  # fmt: skip
    wrong_size = "input_size: 100x100: the head's output"
    one_line_error(["train", str(finished["train"]), "--out", out, "--arch", ARCH,
                    "--set", "input_size=[100, 100]"], f"Error: --set: {wrong_size}")  # fmt: skip
    one_line_error(["cost", "--config", exp, "--input-size", "100x100"],
                   "Error: --input-size: 100x100: the head's output")  # fmt: skip
    one_line_error(["cost", "--config", exp, "--set", "input_size=[100, 100]"],
                   f"Error: --set: {wrong_size}")  # fmt: skip
    assert not Path(out).exists()
    run = str(finished["search"])  # dnas rank lays --set over the config its checkpoint holds
    one_line_error(["rank", run, "--set", f"task.root={tmp_path / 'none'}"],
                   f"Error: --set: task.root: no such directory '{tmp_path / 'none'}'")  # fmt: skip
    one_line_error(
        ["rank", f"{run}/search.pt", "--set", "search.batch_size=abc"],
        "Error: --set: search.batch_size: expected an integer, got str 'abc'",
    )


def test_wrong_names_blame_the_option_that_gave_them_and_a_super_net_keeps_its_space(
    tmp_path, finished
):
    exp, out = str(finished["exp"]), str(tmp_path / "out")
    one_line_error(["search", exp, "--out", out, "--strategy", "foo"],
                   "--strategy foo: unknown strategy 'foo' (registered: ")  # fmt: skip
    one_line_error(["search", exp, "--out", out, "--cost-model", "foo"],
                   "--cost-model foo: unknown cost model 'foo'")  # fmt: skip
    one_line_error(
        ["train", exp, "--arch", ARCH, "--out", out, "--set", "task.name=bar"],
        "--set: task.name: unknown task 'bar'",
    )  # at load, before any set-up
    with pytest.raises(ConfigError, match="search.strategy: unknown strategy 'foo'"):
        load_experiment(exp, ["search.strategy=foo"])
    run = str(finished["search"])
    for key in ("space=mbv2_pose_large", "head.sic=false"):  # once silently ignored
        one_line_error(
            ["rank", run, ARCH, "--set", key],
            f"--set {key.split('=')[0]}: a search run's super net is its own space",
        )
    assert not Path(out).exists()


def test_a_budget_search_says_when_no_net_lies_in_its_band(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, cost_model={
        "form": "budget", "target": 1.2, "tolerance": 0})  # fmt: skip
    result = CliRunner().invoke(cli, ["search", str(exp), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s" / "search.json").read_text())
    assert record["band"] == [1.2, 1.2] and record["final_cost"] != 1.2
    assert "no net of this space costs within the band 1.2..1.2 MMAC" in result.output
    assert "the nearest" in result.output and abs(record["final_cost"] / 1.2 - 1) < 0.03
    assert "cost: macs (flops), form budget, target 1.2 MMAC; the space spans" in result.output
    derived = CliRunner().invoke(cli, ["derive", str(tmp_path / "s"), "-o", str(tmp_path / "a")])
    assert derived.exit_code == 0, derived.output
    warning = f"warning: the derived net costs {record['final_cost']:.6g} MMAC ("
    assert warning in derived.output and "outside the budget band 1.2..1.2 MMAC" in derived.output
    moved = [line for line in derived.output.splitlines() if line.startswith("stage") and
             line.split()[2].endswith("*")]  # fmt: skip
    assert len(moved) == record["projected_layers"]


def test_an_empty_split_a_damaged_checkpoint_and_another_tasks_run_are_refused(tmp_path, finished):
    from dnas.search.oneshot import same_task

    root = copy_run(Path(yaml.safe_load(finished["exp"].read_text())["task"]["root"]),
                    tmp_path / "data")  # fmt: skip
    (root / "annot" / "valid.json").write_text("[]")
    one_line_error(["eval", str(finished["exp"]), "--set", f"task.root={root}", "--weights",
                    str(finished["train"]), "-o", str(tmp_path / "e")],
                   "task.root: " + f"{root}: split 'valid' has no person")  # fmt: skip
    fake = tmp_path / "fake.pt"
    torch.save({"kind": "dnas-search"}, fake)
    one_line_error(["rank", str(fake)], "a damaged search checkpoint (no space, arch_probs)")
    with pytest.raises(DnasError, match="trained on segmentation, not the search's pose/lsp"):
        same_task("runs/seg", {"name": "segmentation"}, {"name": "pose", "dataset": "lsp"},
                  "trained")  # fmt: skip
    same_task("runs/t", {"name": "pose", "dataset": "mpii"}, {"name": "pose"}, "trained")  # default
    same_task("runs/t", {"name": "pose", "dataset": "lsp", "root": "elsewhere"},
              {"name": "pose", "dataset": "lsp"}, "trained")  # fmt: skip


def test_training_checkpoints_say_what_their_weights_are_as_model_pt_does(finished):
    """Export and predict read the preprocessing and outputs from best.pt and last.pt too."""
    from dnas.nn.weights import onnx_metadata, weights_info

    run = finished["train"]
    info = weights_info(run / "model.pt")
    assert info["num_outputs"] == 16 and info["preprocess"]["channels"] == "RGB"
    for name in ("best.pt", "last.pt"):
        assert weights_info(run / name) == info
    space = load_space(ARCH)
    assert "dnas.preprocess" in onnx_metadata(space, (64, 64), 16, weights_info(run / "best.pt"))
