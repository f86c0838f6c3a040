"""benchmarks/gpu_check.sh end to end on the CPU (``--device cpu --quick``): every step runs,
``--only`` runs just the steps named, the summary reads every step's figures, and the offline
set-up installs the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dnas.engine.runtime import device_name

REPO = Path(__file__).resolve().parents[1]


def check(out: Path, steps: str, **env: str) -> tuple[dict, str]:
    """``gpu_check.sh --device cpu --quick --only STEPS --out OUT``: its summary and stdout."""
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu",
                           "--quick", "--only", steps, "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, **env},
                          timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), done.stdout


def test_gpu_check_runs_every_step_end_to_end_on_the_cpu(tmp_path):
    """Every step, in two --only runs of two steps each (a run of all four costs as much, and
    each run shows that the steps not named do not run), each on the offline install."""
    wheels = tmp_path / "no-wheels"  # the host's .whl/ holds wheels for the GPU's python
    wheels.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    offline = {"DNAS_CHECK_INSTALL": "1", "DNAS_CHECK_WHEELS": str(wheels)}
    tests_speed, _ = check(first, "cuda_tests,model_speed", **offline)
    search_lut, stdout = check(second, "search_speed,lut", **offline)
    assert list(tests_speed["steps"]) == ["cuda_tests", "model_speed"]
    here = device_name(torch.device("cpu"))  # the machine, named by the installed checkout
    assert tests_speed["machine"]["device"] == here and tests_speed["machine"]["cpu"] == here
    assert list(search_lut["steps"]) == ["search_speed", "lut"]
    for summary in (tests_speed, search_lut):
        assert all(step["exit"] == 0 for step in summary["steps"].values()), summary["steps"]
    assert tests_speed["tests"]["green"] and tests_speed["tests"]["skipped"] == 0
    nets = tests_speed["model_speed"]
    assert list(nets) == ["efficientpose-a"]  # --quick times the one net
    assert all(len(rows) == 4 for rows in nets.values())  # inference and training, 2 modes
    for out in (first, second):  # the offline install of the checkout ran for every step
        assert (out / "site" / "dnas").is_dir()
    assert not (first / "lut.json").exists() and not (first / "search_speed.json").exists()
    assert set(search_lut["search_samples_per_s"]) == {"darts", "gumbel", "binary_gates"}
    assert all(rate > 0 for rate in search_lut["search_samples_per_s"].values())
    assert -1 <= search_lut["lut"]["kendall_tau"] <= 1 and search_lut["lut"]["mape"] >= 0
    assert search_lut["tests"] is None and search_lut["model_speed"] is None  # not run
    assert not (second / "model_speed.json").exists() and not (second / "cuda_tests.xml").exists()
    assert "target single_path_search_fast:" in stdout
    for out in (first, second):
        assert (out / "log.txt").read_text().count("exit 0 after") == 2


def test_gpu_check_rejects_bad_arguments_in_one_line():
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    for args, words in ((["--device", "gpu"], "--device must be cuda or cpu"),
                        (["--device"], "--device needs a value"),
                        (["--only"], "needs step names (cuda_tests,search_speed,model_speed,lut)"),
                        (["--only", "lut,speed"], "--only: unknown step 'speed'"),
                        (["--bogus"], "unknown argument '--bogus'")):  # fmt: skip
        done = subprocess.run(["bash", script, *args], capture_output=True, text=True)
        assert done.returncode == 1
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
