"""Checking a latency table against this machine (``check_lut``): random architectures, the
nets a search would pick from the table, and some of its calibration nets (to gauge how the
machine's speed moved since the build) timed as whole networks and compared with the table's
predictions (Kendall tau, MAPE) and with the noise ceiling of those timings
(``cost_models.fidelity``).
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import numpy as np

from cost_models.fidelity import kendall_tau, mape, noise_ceiling, tau_vs_ceiling
from cost_models.flops import FlopsCostModel
from cost_models.latency import lut_cost_table, predict_ms
from cost_models.latency_build import (
    Bench,
    TimingPass,
    buildable_nets,
    fresh_passes,
    recorded_allocator,
    refit_scores,
    time_passes,
)
from dnas.allocator import KEPT
from dnas.config import band_around
from dnas.engine.runtime import device_name
from dnas.schema import is_finite_number
from dnas.search.budget import cheapest_within
from dnas.search.cost_model import CostTable
from dnas.space.choices import uniform_choices
from dnas.space.graph import SearchSpace

PICK_LEVELS = (0.25, 0.5, 0.75)  # MAC levels of the table's own picks (``picked_choices``)
PICK_BAND = 0.01
SPEED_NETS = 6  # calibration nets ``lut check`` times again to compare the machine's speed


def mac_bands(macs: CostTable) -> dict[float, tuple[float, float]]:
    """``{level: (low, high)}``: the MACs within ``PICK_BAND`` of each of ``PICK_LEVELS`` of
    the space's MAC range (``macs`` is its FLOPs table)."""
    low, high = macs.cost_range()
    goals = {level: low + level * (high - low) for level in PICK_LEVELS}
    return {level: band_around(g, PICK_BAND) for level, g in goals.items()}


def picked_choices(lut: dict, space: SearchSpace) -> dict[float, dict[str, str]]:
    """The nets a latency-aware search is drawn to: ``{level: choices}``, at each of the
    ``mac_bands`` the net the table predicts fastest among those of that many MACs (levels
    without a net are left out). An optimiser seeks out the nets whose entries err low,
    which random nets rarely are (the optimiser's curse), so ``lut check`` times these too."""
    meta = lut["meta"]
    macs = FlopsCostModel().build(space, tuple(meta["input"]), meta["num_outputs"])
    ms = lut_cost_table(lut, space)
    picks = {level: cheapest_within(ms, macs, *band) for level, band in mac_bands(macs).items()}
    return {level: c for level, c in picks.items() if c is not None}


def check_lut(table: dict, space: SearchSpace, samples: int, bench: Bench, seed: int = 1,
              what: str = "lut check") -> dict:  # fmt: skip
    """Predicted vs measured latency of ``samples`` random architectures and of the table's
    own picks (``picked_choices``), in the table's runtime, under the same noise guard as the
    build; a few of the build's calibration nets are timed again for the machine's speed
    (``machine_speed``); the random nets' passes give the check's ``noise_ceiling``. Nets are
    timed as the table's were: keeping freed memory or not (``dnas.allocator``)."""
    meta = table["meta"]
    bench = replace(bench, keep_memory=recorded_allocator(meta) == KEPT)
    rng = np.random.default_rng(seed)
    nets = [uniform_choices(space.searchable_layers, rng) for _ in range(samples)]
    picks = picked_choices(table, space)
    gauges = gauge_nets(meta, space)
    checked = [(f"network {i + 1}", c) for i, c in enumerate(nets)]
    checked += [(f"picked net at {100 * level:.0f} % of the MACs", c) for level, c in picks.items()]
    # all of them timed in turn (``NoiseGuard.run_interleaved``): the gauges share their speeds
    named = checked + [(f"calibration net {i + 1} again", n["choices"])
                       for i, n in enumerate(gauges)]  # fmt: skip
    plan = TimingPass(bench, space, tuple(meta["input"]), meta["num_outputs"], meta["batch"],
                      named, ops=False, what=what, warm_up_seed=seed + 1000)  # fmt: skip
    timings, noise, allocator = time_passes(plan, "lut check: timings")
    rows = [{"predicted_ms": predict_ms(table, c), "measured_ms": t.median_ms,
             "spread": round(t.spread, 4)}
            for (_, c), t in zip(named, timings, strict=True)]  # fmt: skip
    rows, gauge_rows = rows[: len(checked)], rows[len(checked) :]
    rows, picked = rows[:samples], rows[samples:]
    for row, (level, choices) in zip(picked, picks.items(), strict=True):
        row |= {"level": level, "choices": choices}
    pred = np.array([r["predicted_ms"] for r in rows])
    real = np.array([r["measured_ms"] for r in rows])
    tau = kendall_tau(pred, real)
    speed = machine_speed(meta, noise.start_ms, gauges, gauge_rows)
    # the same check with the machine's speed now expressed at its speed during the build:
    # what the table gets wrong, rather than the machine (no gauge: as measured)
    ratio = speed["ratio"] or 1.0
    steady = real / ratio
    picked_pred = np.array([r["predicted_ms"] for r in picked])
    picked_real = np.array([r["measured_ms"] for r in picked])
    picked_steady = picked_real / ratio
    ceiling = noise_ceiling([t.passes for t in timings[:samples]])
    return {"kendall_tau": tau, "mape": mape(pred, real),
            "noise_ceiling": ceiling.to_dict() if ceiling else None,
            "tau_vs_ceiling_sds": tau_vs_ceiling(tau, ceiling),
            "refit": refit_scores(table, space, nets, real, ceiling),
            # the machine's speed and MAPE "at build speed" are then against the last refit
            "recalibrated": bool(meta.get("recalibrations")),
            "mape_at_build_speed": mape(pred, steady),
            "samples": samples, "runtime": bench.runtime.name, "noise": noise.to_dict(),
            "allocator": {"table": recorded_allocator(meta), "check": allocator},
            "machine": {"table": meta.get("device_name"),
                        "check": device_name(bench.runtime.device)},
            "fresh_processes": fresh_passes(bench.policy),
            "speed_vs_build": speed["ratio"], "speed_from": speed["source"],
            "gauge_nets": [{"build_ms": n["measured_ms"], "measured_ms": r["measured_ms"],
                            "spread": r["spread"]}
                           for n, r in zip(gauges, gauge_rows, strict=True)],
            "reference_vs_build": speed["reference"], "rows": rows, "picked": picked,
            "picked_mape": mape(picked_pred, picked_real) if picked else None,
            "picked_mape_at_build_speed": (mape(picked_pred, picked_steady) if picked
                                           else None)}  # fmt: skip


def gauge_nets(meta: dict, space: SearchSpace) -> list[dict]:
    """Up to ``SPEED_NETS`` of the table's calibration nets that ``space`` can build
    (``buildable_nets``), spread over the build's order: timed again by ``lut check``, they
    gauge the machine's speed against the build."""
    usable = buildable_nets(meta, space)
    if len(usable) <= SPEED_NETS:
        return usable
    # spread over the list: builds before 2026-12-06 timed their nets one after the other
    return [usable[round(i * (len(usable) - 1) / (SPEED_NETS - 1))] for i in range(SPEED_NETS)]


def machine_speed(meta: dict, reference_now: float | None, gauges: list[dict],
                  gauge_rows: list[dict]) -> dict:  # fmt: skip
    """How many times as long nets take now as at the build: the median over the gauge nets
    (``gauge_nets``, timed again as ``gauge_rows``) of their time now over their time then,
    else (no such nets) the reference net's ratio. Measured: the reference net alone can move
    the other way (1.04-1.09x its build time while 12 calibration nets took 0.90-1.00x theirs,
    three fresh processes): each process's memory layout biases nets differently
    (``cost_models.processes``), and so do a shared machine's changes of speed."""
    noise = meta.get("noise") if isinstance(meta.get("noise"), dict) else {}
    built_at = noise.get("reference_start_ms")  # older tables: their one guard's first timing
    if not is_finite_number(built_at):
        built_at = noise.get("reference_ms")
        built_at = built_at[0] if isinstance(built_at, list) and built_at else None
    reference = (reference_now / built_at if reference_now and is_finite_number(built_at)
                 and built_at > 0 else None)  # fmt: skip
    if gauges:
        ratios = [r["measured_ms"] / n["measured_ms"]
                  for n, r in zip(gauges, gauge_rows, strict=True)]  # fmt: skip
        source = f"{len(ratios)} calibration net{'s' * (len(ratios) > 1)}"
        return {"ratio": statistics.median(ratios), "source": source, "reference": reference}
    return {"ratio": reference, "source": "the reference net" if reference else None,
            "reference": reference}  # fmt: skip
