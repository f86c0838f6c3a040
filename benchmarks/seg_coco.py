"""Real data, measured: person vs background on COCO (coco-mini: 80 train, 79 val images),
EfficientPose-A's backbone with the fpn_lite head trained from scratch with
``examples/seg_coco.yaml`` and scored on val2017; prints one JSON object with the wall time.

Run: ``make bench-seg`` (under 10 minutes on the 2-core CPU). The data path defaults to
``../shared/data/coco-mini``; ``DNAS_TEST_DATA`` points at another ``data`` folder.
"""

from __future__ import annotations

import json

from real_data import REPO, data_folder, train_and_eval  # benchmarks/real_data.py

from dnas.config import load_experiment
from dnas.engine.runtime import machine_record, pick_device

CONFIG = REPO / "examples" / "seg_coco.yaml"
ARCH = "efficientpose-a"


def main() -> None:
    exp = load_experiment(CONFIG, [f"task.root={data_folder('coco-mini')}"])
    results, seconds = train_and_eval(exp, ARCH)
    print(results.pop("table"))
    print(json.dumps({
        "benchmark": "seg_coco_person",
        "machine": machine_record(pick_device(exp.device)),
        "config": str(CONFIG.relative_to(REPO)),
        "architecture": f"{ARCH} backbone + fpn_lite head",
        "input_size": results["input_size"],
        **seconds,
        "mIoU": round(results["mIoU"], 2),
        "pixel_acc": round(results["pixel_acc"], 2),
        "IoU": {k.removeprefix("IoU/"): round(v, 2) for k, v in results.items()
                if k.startswith("IoU/")},
        "params": results["params"],
        "macs": results["macs"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
