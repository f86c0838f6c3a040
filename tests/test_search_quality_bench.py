"""The search-quality benchmark (make bench-quality) runs end to end in its quick profile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import DATA, REPO, need


def test_quick_profile_runs_every_net_and_reports_the_verdict(tmp_path):
    need(DATA / "lspet" / "joints.mat")
    out = tmp_path / "q"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_quality.py"),
                          "--quick", "--train-epochs", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "search_quality.json").read_text())
    assert result["profile"]["train_epochs"] == 1 and result["profile"]["milestones"] == []
    names = [r["net"] for r in result["rows"]]
    assert names[:3] == ["efficientpose-a", "searched-darts", "searched-gumbel"]
    assert sum(n.startswith("random-") for n in names) == 4
    budget = result["budget_mmac"]
    for row in result["rows"][1:]:  # every searched and random net within 3 % of the budget
        assert abs(row["macs"] / 1e6 / budget - 1) <= 0.03, row
        assert set(row["pck@0.2"]) == {"0", "1"} and row["cpu_latency_ms"] > 0
        assert set(row["pck@0.2_strict"]) == {"0", "1"} and row["spread_strict"] >= 0
    for key in ("", "_strict"):
        assert set(result[f"searched_beat_random_by_more_than_spread{key}"]) == {
            "searched-darts",
            "searched-gumbel",
        }
        assert result[f"seed_sd{key}"] >= 0 and result[f"architecture_sd{key}"] >= 0
    assert "| searched-darts |" in (out / "search_quality.md").read_text()
    darts = result["searches"]["darts"]  # how the DARTS search ended: temperature, gap
    start, end = result["profile"]["darts_temperature"]
    assert darts["mixture_temperature"] == (start if result["profile"]["search_epochs"] == 1
                                            else end)  # fmt: skip
    gap = darts["discretisation_gap"]
    assert gap["gap"] == pytest.approx(gap["derived_loss"] / gap["mixture_loss"] - 1)
    assert "discretisation_gap" not in result["searches"]["gumbel"]
    # a strategy's own overrides (the quick profile: gumbel warms up 2 epochs, darts 1)
    assert result["profile"]["search_overrides"] == {"gumbel": ["search.warmup_epochs=2"]}
    warmups = {s: yaml.safe_load((out / f"search-{s}" / "config.yaml").read_text())["search"]
               ["warmup_epochs"] for s in ("darts", "gumbel")}  # fmt: skip
    assert warmups == {"darts": 1, "gumbel": 2}
    optimisers = {s: yaml.safe_load((out / f"search-{s}" / "config.yaml").read_text())["search"]
                  ["weight_optimizer"] for s in ("darts", "gumbel")}  # fmt: skip
    assert all(o["type"] == "adam" and o["lr"] == 2e-3 for o in optimisers.values())
    assert result["profile"]["rank_batches"] == 2  # the quick profile's batch-norm batches
    for strategy, ranks in result["oneshot_rankings"].items():  # each super net ranks the nets
        assert set(ranks["oneshot"]) >= {"derived", "efficientpose-a"}, strategy
        assert ranks["kendall_tau"] is None or -1 <= ranks["kendall_tau"] <= 1


def test_variance_components_separate_seed_noise_from_architecture():
    """Two nets scoring 1, 3 and 5, 7: seed variance 2; the net means 2 and 6 vary by 8, of
    which 2 / 2 is seed noise, so the architecture's variance is 7."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from search_quality import variance_components
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    seed_sd, arch_sd = variance_components([[1.0, 3.0], [5.0, 7.0]])
    assert seed_sd == pytest.approx(2**0.5) and arch_sd == pytest.approx(7**0.5)
    assert variance_components([[1.0, 3.0], [2.0, 2.0]])[1] == 0.0  # means differ by noise only


def test_a_rerun_into_the_same_folder_rewrites_its_random_draws(tmp_path, monkeypatch):
    """The random architectures are drawn from fixed seeds, so a rerun (or --reuse) writes the
    same files again rather than stopping at the first one that exists."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import search_quality
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    monkeypatch.setattr(search_quality, "STRATEGIES", ())  # the draws alone: no search
    profile = search_quality.PROFILES["quick"]
    size = (profile.input_size,) * 2
    budget = search_quality.cost_report("efficientpose-a", size, 14)["macs"] / 1e6  # as main's
    first, _ = search_quality.architectures(profile, None, budget, tmp_path, None, False)
    texts = {name: (tmp_path / f"{name}.yaml").read_text() for name in first if "random" in name}
    again, _ = search_quality.architectures(profile, None, budget, tmp_path, None, True)
    assert again == first and len(texts) == 4
    assert texts == {name: (tmp_path / f"{name}.yaml").read_text() for name in texts}
