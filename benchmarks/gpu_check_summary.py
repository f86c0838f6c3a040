"""The summary of ``benchmarks/gpu_check.sh``: each step's outcome and the issue's targets
(single-path search >= 500 samples/s at batch 32, 256x256; latency table Kendall tau >= 0.9 and
MAPE <= 10 %; every CUDA test green), written to ``summary.json`` and printed."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TARGETS = {"single_path_samples_per_s": 500.0, "lut_tau": 0.9, "lut_mape": 10.0}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests(out: Path) -> dict | None:
    """Counts from the junit file of the CUDA-marked tests."""
    try:
        suite = ET.parse(out / "cuda_tests.xml").getroot().find("testsuite")
    except (OSError, ET.ParseError):
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["green"] = counts["tests"] > 0 and not counts["failures"] and not counts["errors"]
    return counts


def summarise(out: Path) -> dict:
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, seconds = line.split("\t")
        steps[name] = {"exit": int(rc), "seconds": int(seconds), "timed_out": rc in ("124", "137")}
    search = (read_json(out / "search_speed.json") or {}).get("throughput", {})
    rates = {k: v["samples_per_s"] for k, v in search.get("strategies", {}).items()}
    lut = read_json(out / "lut_check.json") or {}
    speed = read_json(out / "model_speed.json") or {}
    single = [rates[k] for k in ("gumbel", "binary_gates") if k in rates]
    fast = bool(single) and min(single) >= TARGETS["single_path_samples_per_s"]
    checks = {
        "cuda_tests_green": (tests(out) or {}).get("green", False),
        "single_path_search_fast": fast,
        "lut_tau": "kendall_tau" in lut and lut["kendall_tau"] >= TARGETS["lut_tau"],
        "lut_mape": "mape" in lut and lut["mape"] <= TARGETS["lut_mape"],
    }
    return {"machine": read_json(out / "machine.json"), "steps": steps, "tests": tests(out),
            "search_samples_per_s": rates, "search_batch": search.get("batch"),
            "search_input": search.get("input"),
            "lut": {k: lut.get(k) for k in ("kendall_tau", "mape")},
            "model_speed": speed.get("nets"), "targets": TARGETS, "checks": checks}  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1])
    summary = summarise(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"gpu-check summary ({out}):")
    for name, step in summary["steps"].items():
        state = "timed out" if step["timed_out"] else ("ok" if step["exit"] == 0 else "FAILED")
        print(f"  step {name:13s} {state:9s} {step['seconds']} s")
    print(f"  CUDA tests: {summary['tests']}")
    print(f"  search samples/s: {summary['search_samples_per_s']}")
    print(f"  latency table: {summary['lut']}")
    for net, rows in (summary["model_speed"] or {}).items():
        print(f"  {net}: " + ", ".join(f"{k} {next(iter(v.values()))}" for k, v in rows.items()))
    for name, ok in summary["checks"].items():
        print(f"  target {name}: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
