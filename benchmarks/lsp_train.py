"""Real data, measured: EfficientPose-A trained on LSP-extended (first 1800 images) and scored
by PCK@0.2 on the last 200, on this machine; prints one JSON object with the wall time.

Run: ``make bench-lsp`` (about 30 minutes on the 2-core CPU). The data path defaults to
``../shared/data/lspet``; ``DNAS_TEST_DATA`` points at another ``data`` folder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from dnas.config import load_experiment
from dnas.engine.progress import Reporter
from dnas.engine.runtime import machine_record, pick_device
from dnas.engine.train import run_eval, run_train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "lsp_efficientpose_a.yaml"


def main() -> None:
    data = Path(os.environ.get("DNAS_TEST_DATA", REPO.parent / "shared" / "data")) / "lspet"
    exp = load_experiment(CONFIG, [f"task.root={data}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        report = Reporter(lambda line: print(line, flush=True))
        run_train(exp, "efficientpose-a", out / "train", report=report)
        trained = time.perf_counter()
        results = run_eval(exp, "efficientpose-a", out / "train" / "model.pt", out / "eval")
        done = time.perf_counter()
    results.pop("table")
    print(json.dumps({
        "benchmark": "lsp_efficientpose_a",
        "machine": machine_record(pick_device(exp.device)),
        "config": str(CONFIG.relative_to(REPO)),
        "train_s": round(trained - start, 1),
        "eval_s": round(done - trained, 1),
        "total_s": round(done - start, 1),
        "pck@0.2": {k: round(v, 2) for k, v in results.items() if isinstance(v, float)},
        "params": results["params"],
        "macs": results["macs"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
