"""benchmarks/gpu_check.sh end to end on the CPU (``--device cpu --quick``): every step runs,
the summary reads every step's figures, and the offline set-up installs the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    wheels = tmp_path / "no-wheels"  # the host's .whl/ holds wheels for the GPU's python
    wheels.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "DNAS_CHECK_INSTALL": "1",
           "DNAS_CHECK_WHEELS": str(wheels)}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu",
                           "--quick", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"]) == {"cuda_tests", "search_speed", "model_speed", "lut"}
    assert all(step["exit"] == 0 for step in summary["steps"].values()), summary["steps"]
    assert summary["tests"]["green"] and summary["tests"]["skipped"] == 0
    assert set(summary["search_samples_per_s"]) == {"darts", "gumbel", "binary_gates"}
    assert all(rate > 0 for rate in summary["search_samples_per_s"].values())
    assert -1 <= summary["lut"]["kendall_tau"] <= 1 and summary["lut"]["mape"] >= 0
    nets = summary["model_speed"]
    assert sorted(nets) == ["efficientpose-a", "efficientpose-b", "efficientpose-c"]
    assert all(len(rows) == 4 for rows in nets.values())  # inference and training, 2 modes
    assert (out / "site" / "dnas").is_dir()  # the offline install of the checkout ran
    assert "target single_path_search_fast:" in done.stdout
    assert (out / "log.txt").read_text().count("exit 0 after") == 4


def test_gpu_check_rejects_bad_arguments_in_one_line():
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    for args, words in ((["--device", "gpu"], "--device must be cuda or cpu"),
                        (["--device"], "--device needs a value"),
                        (["--only", "lut,speed"], "--only: unknown step 'speed'"),
                        (["--bogus"], "unknown argument '--bogus'")):  # fmt: skip
        done = subprocess.run(["bash", script, *args], capture_output=True, text=True)
        assert done.returncode == 1
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_gpu_check_only_reruns_the_steps_named(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu",
                           "--quick", "--only", "lut", "--out", str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["steps"]) == ["lut"]  # the cheapest step (the others take minutes here)
    assert summary["steps"]["lut"]["exit"] == 0
    assert -1 <= summary["lut"]["kendall_tau"] <= 1
    assert not (out / "model_speed.json").exists()  # the steps not named did not run
    assert not (out / "cuda_tests.xml").exists()
