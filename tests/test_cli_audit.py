"""Mistakes found by the 2026-12-07 audit of every command: output paths that cannot be
written, NaN weights, root-level usage errors, runs given where an architecture is expected,
settings that silently did something else. Each is one line, exit 1, or a one-line warning."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, write_experiment

from dnas import files
from dnas.checkpoint import load, save_atomic, state_dict_of
from dnas.cli import cli
from dnas.config import TrainConfig, load_experiment
from dnas.engine.schedule import unreached_milestones
from dnas.errors import ConfigError, DnasError
from dnas.space.graph import load_space

ARCH = str(TINY_ARCH)


def one_line(args: list[str], message: str, code: int = 1) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code and message in result.output, (args, result.output)
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_found_before_the_work(tmp_path, finished):
    """/proc answers os.access as writable, even to root: only creating a file tells."""
    with pytest.raises(DnasError, match="/proc takes no new files"):
        files.check_writable("/proc/out/arch.yaml")
    one_line(["derive", str(finished["search"]), "-o", "/proc/arch.yaml"], "takes no new files")
    one_line(["search", str(finished["exp"]), "-o", "/proc/run"], "takes no new files")


def test_a_name_too_long_for_the_file_system_is_refused_before_the_work(tmp_path, finished):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = tmp_path / ("a" * (limit - 5))  # room for write_atomic's .NAME.tmp
    files.check_writable(fits)
    files.write_text_atomic(fits, "x")  # what the check lets through can be written
    with pytest.raises(DnasError, match=f"longer than the {limit - 5} bytes"):
        files.check_writable(tmp_path / "sub" / ("a" * (limit - 4)))
    one_line(["derive", str(finished["search"]), "-o", str(tmp_path / ("b" * 300))], "longer than")


def test_a_write_that_fails_during_the_work_is_one_line(tmp_path, finished, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # as a full disk fails write_atomic
    out = tmp_path / "arch.yaml"
    result = CliRunner().invoke(cli, ["derive", str(finished["search"]), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists() and list(tmp_path.iterdir()) == []
    assert result.output.strip().splitlines()[-1] == "Error: No space left on device"


def test_a_checkpoint_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    def cut_short(obj, fh):
        fh.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 19 vs 2")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(DnasError, match=r"ckpt.pt: could not be written, is the disk full\? "
                                        r"\(\[enforce fail"):  # fmt: skip
        save_atomic({"a": torch.zeros(1)}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary


def test_damaged_and_non_finite_weights_are_refused_in_one_line(tmp_path, finished):
    model = finished["train"] / "model.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(model.read_bytes()[:3000])
    with pytest.raises(DnasError, match=r"cut.pt: not a readable PyTorch checkpoint \(a "
                                        r"truncated or damaged zip archive\)$"):  # fmt: skip
        load(cut)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DnasError, match=r"not a readable PyTorch checkpoint \(empty or cut"):
        load(tmp_path / "empty.pt")
    state = state_dict_of(load(model), model)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    message = f"{name} holds NaN or infinite values"
    one_line(["export", "--weights", str(tmp_path / "nan.pt"), "-o", str(tmp_path / "n.onnx")],
             message)  # fmt: skip
    one_line(["eval", str(finished["exp"]), "--weights", str(tmp_path / "nan.pt"), "-o",
              str(tmp_path / "ev")], message)  # fmt: skip
    assert not (tmp_path / "n.onnx").exists() and not (tmp_path / "ev").exists()
    state[name] = torch.full_like(state[name], float("inf"))
    with pytest.raises(DnasError, match=message):
        state_dict_of({"model": state}, tmp_path / "inf.pt")


def test_root_options_are_checked_as_every_command_is_and_h_is_help():
    one_line(["--verbose", "search"], "No such option '--verbose'")
    for args in (["-h"], ["search", "-h"], ["lut", "build", "-h"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and result.output.startswith("Usage: "), result.output


def test_milestones_a_run_never_reaches_are_named():
    assert unreached_milestones(TrainConfig(epochs=20)) == [150, 170]
    assert unreached_milestones(TrainConfig(epochs=20, milestones=[15, 20])) == [20]
    assert unreached_milestones(TrainConfig(epochs=200)) == []
    assert unreached_milestones(TrainConfig(epochs=2, schedule="cosine")) == []


def test_a_training_warns_of_a_learning_rate_that_never_steps_down(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, train={"milestones": [2, 5]})
    result = CliRunner().invoke(cli, ["train", str(exp), "--arch", ARCH, "-o",
                                      str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ("warning: train.milestones [2, 5] lie at or past train.epochs 2: the learning rate "
            "never steps down there") in result.output  # fmt: skip


def test_set_cannot_reset_a_whole_section_to_the_defaults_by_mistake(tmp_path, synth_root):
    exp = write_experiment(tmp_path / "exp.yaml", synth_root, head={"deconv_widths": [16]})
    for value in ("null", "{}"):
        match = rf"--set: search: '{value}' would drop the 4 keys of search: in .*exp.yaml for"
        with pytest.raises(ConfigError, match=match):
            load_experiment(exp, [f"search={value}"])
    # sections a file did not set, and plain mappings whose null means "none", stay settable
    assert load_experiment(exp, ["checkpoint={}"]).checkpoint.keep_last == 3
    assert load_experiment(exp, ["head={}"]).head == {}
    assert load_experiment(exp, ["search.arch_optimizer=null"]).search.arch_optimizer.lr > 0


def test_a_sweep_is_not_written_into_a_search_run(tmp_path, finished):
    one_line(["sweep", str(finished["exp"]), "--weights", "0.1", "-o", str(finished["search"])],
             "holds a search or train run (")  # fmt: skip
    assert not (finished["search"] / "sweep.json").exists()


def test_a_run_or_a_checkpoint_given_as_an_architecture_says_what_to_give(tmp_path, finished):
    search, train = finished["search"], finished["train"]
    cases = {
        str(search): f"a search run folder, not an architecture; derive one from it first: "
        f"dnas derive {search} -o arch.yaml",
        str(search / "search.pt"): "a checkpoint, not a search space or architecture YAML",
        str(train): f"its architecture is {train / 'arch.yaml'}",
        str(tmp_path): "a folder, not a search space or architecture YAML",
        str(finished["exp"]): "an experiment config (it has task:), not a search space or "
        "architecture; give the space it names (",
    }
    for ref, message in cases.items():
        with pytest.raises(ConfigError, match=None) as caught:
            load_space(ref)
        assert message in str(caught.value), (ref, str(caught.value))
    one_line(["train", str(finished["exp"]), "--arch", str(search), "-o", str(tmp_path / "t")],
             "--arch " + str(search) + ": a search run folder")  # fmt: skip
    one_line(["cost", str(finished["exp"])], "an experiment config (it has task:)")


def test_a_cost_cache_that_cannot_be_written_costs_time_not_the_run(tmp_path, synth_root,
                                                                   monkeypatch):  # fmt: skip
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DNAS_CACHE_DIR", str(blocker))
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    message = "not-a-folder .* the macs table is not cached .*; it is built anew each run"
    with pytest.warns(UserWarning, match=message):
        result = CliRunner().invoke(cli, ["search", str(exp), "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
