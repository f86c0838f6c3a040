"""Real data, measured: EfficientPose-A trained on LSP-extended (first 1800 images) and scored
by PCK@0.2 on the last 200, on this machine; prints one JSON object with the wall time.

Run: ``make bench-lsp`` (about 30 minutes on the 2-core CPU). The data path defaults to
``../shared/data/lspet``; ``DNAS_TEST_DATA`` points at another ``data`` folder.
"""

from __future__ import annotations

import json

from real_data import REPO, data_folder, train_and_eval  # benchmarks/real_data.py

from dnas.config import load_experiment
from dnas.engine.runtime import machine_record, pick_device

CONFIG = REPO / "examples" / "lsp_efficientpose_a.yaml"


def main() -> None:
    exp = load_experiment(CONFIG, [f"task.root={data_folder('lspet')}"])
    results, seconds = train_and_eval(exp, "efficientpose-a")
    results.pop("table")
    print(json.dumps({
        "benchmark": "lsp_efficientpose_a",
        "machine": machine_record(pick_device(exp.device)),
        "config": str(CONFIG.relative_to(REPO)),
        **seconds,
        "pck@0.2": {k: round(v, 2) for k, v in results.items() if isinstance(v, float)},
        "params": results["params"],
        "macs": results["macs"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
