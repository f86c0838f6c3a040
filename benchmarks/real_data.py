"""What the real-data benchmarks share: where the data is (``../shared/data``, or the ``data``
folder ``DNAS_TEST_DATA`` names, as for the tests), and one timed training and evaluation of a
fixed architecture."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from dnas.config import Experiment
from dnas.engine.progress import Reporter
from dnas.engine.train import run_eval, run_train

REPO = Path(__file__).resolve().parents[1]


def data_folder(name: str) -> Path:
    """The dataset ``name`` (``lspet``, ``coco-mini``) in the data folder."""
    return Path(os.environ.get("DNAS_TEST_DATA", REPO.parent / "shared" / "data")) / name


def train_and_eval(exp: Experiment, arch: str) -> tuple[dict, dict[str, float]]:
    """``arch`` trained with ``exp`` (progress printed) and scored on its validation split in a
    scratch folder: ``dnas eval``'s results and the seconds each part took."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        run_train(exp, arch, out / "train", report=Reporter(lambda line: print(line, flush=True)))
        trained = time.perf_counter()
        results = run_eval(exp, arch, out / "train" / "model.pt", out / "eval")
        done = time.perf_counter()
    seconds = {"train_s": trained - start, "eval_s": done - trained, "total_s": done - start}
    return results, {key: round(s, 1) for key, s in seconds.items()}
