"""Do searches that differ only in their seed derive the same ops? The reproducibility test of
a search (Li & Talwalkar, UAI 2019, "Random Search and Reproducibility for NAS").

The figure is the share of searchable layers on which two derived nets pick the same op. What
it means depends on the space and the budget: a budget alone makes some ops likelier, so
chance is the same share between pairs of random architectures drawn within ``band`` of the
runs' mean derived cost (:class:`dnas.search.budget.BandSampler`). A search whose decisions
come from the data agrees above chance; one whose decisions come from its seed does not,
however decided each run ends.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnas.config import FORM_KEYS, band_around
from dnas.errors import DnasError
from dnas.search.bounds import DEFAULT_BAND, check_band, check_chance_samples
from dnas.search.budget import DRAW_TRIES, BandSampler
from dnas.search.cost_model import CostTable
from dnas.search.derive import find_checkpoint, load_search
from dnas.search.evidence import noise_warning


def op_agreement(a: dict[str, str], b: dict[str, str]) -> float:
    """The share of layers on which ``a`` and ``b`` pick the same op (same layers required)."""
    if a.keys() != b.keys():
        raise DnasError("the two architectures have different searchable layers")
    return sum(a[name] == b[name] for name in a) / len(a)


def mean_agreement(archs: list[dict[str, str]]) -> float:
    """The mean of :func:`op_agreement` over every pair of ``archs``."""
    return statistics.mean(op_agreement(a, b) for a, b in itertools.combinations(archs, 2))


def chance_agreement(table: CostTable, cost: float, band: float = DEFAULT_BAND, samples: int = 200,
                     seed: int = 0, runs: int = 2) -> tuple[float, float]:  # fmt: skip
    """Mean and standard deviation, over ``samples`` sets of ``runs`` random architectures
    within ``band`` (relative) of ``cost``, of their :func:`mean_agreement`: the null
    distribution of the figure that ``runs`` searches give."""
    rng = np.random.default_rng(seed)
    low, high = band_around(cost, band)
    sampler = BandSampler(table, low, high)
    shares = []
    for _ in range(samples):
        archs = [sampler.draw(rng, DRAW_TRIES) for _ in range(runs)]
        if any(a is None for a in archs):
            raise DnasError(f"no random architecture of the space costs {low:.4g}-{high:.4g} "
                            f"{table.unit} (widen --band)")  # fmt: skip
        shares.append(mean_agreement(archs))
    return statistics.mean(shares), statistics.pstdev(shares)


SEARCH_SETTINGS = ("dual_lr", "tolerance")  # how a budget search gets there, not where to


@dataclass
class SearchOutcome:
    """What one search run derived, the cost table it searched with and its config."""

    run: str
    choices: dict[str, str]
    cost: float
    table: CostTable
    digest: str
    config: dict[str, Any]
    noisy: bool = False  # its architecture gradient never rose above noise (dnas derive warns)

    @property
    def objective(self) -> dict[str, Any]:
        """The cost form and the keys of it that say what the search traded for
        (``FORM_KEYS``), less the budget's step size and band (settings, as an lr is)."""
        cost = self.config.get("cost_model") or {}
        form = cost.get("form", "relative")
        return {"form": form, **{k: cost.get(k) for k in FORM_KEYS.get(form, ())
                                 if k not in SEARCH_SETTINGS}}  # fmt: skip


def load_outcome(ref: Path | str) -> SearchOutcome:
    """The derived ops of a search run (directory or ``search.pt``) and their cost under the
    run's own cost model, input size and head."""
    record = load_search(ref)
    config = {k: v for k, v in record.ckpt["config"].items() if k != "source"}
    return SearchOutcome(str(ref), record.choices, record.table.of_choices(record.choices),
                         record.table, record.space.digest(), config,
                         bool(noise_warning(record.ckpt.get("gradient_evidence"))))  # fmt: skip


def comparable(first: SearchOutcome, other: SearchOutcome) -> str | None:
    """A warning when two runs share their seed (what differs then is their config, not the
    seed); a one-line error when they do not compare: another space, task, cost table or cost
    objective, or one config run twice with one seed (a search agrees with itself)."""
    if other.digest != first.digest or other.table.digest() != first.table.digest():
        tasks = [(r.config.get("task") or {}).get("name") for r in (first, other)]
        why = f" (task {tasks[1]} vs {tasks[0]})" if tasks[0] != tasks[1] else ""
        raise DnasError(f"{other.run}: searched another space or cost table than {first.run}"
                        f"{why}; only searches of one space and cost model compare")  # fmt: skip
    if other.objective != first.objective:
        raise DnasError(f"{other.run}: searched for another cost objective than {first.run} "
                        f"(cost_model {shown(other.objective)} vs {shown(first.objective)}); "
                        "only searches of one objective compare")  # fmt: skip
    seed = first.config.get("seed")
    if other.config.get("seed") != seed:
        return None
    if other.config == first.config:
        raise DnasError(f"{first.run} and {other.run}: one config run twice with one seed "
                        f"({seed}), which agrees with itself; compare searches that differ in "
                        "their seed")  # fmt: skip
    return (f"{first.run} and {other.run} share seed {seed}: their agreement measures what "
            "their configs' other differences change, not the seed")  # fmt: skip


NOISE_ONLY = ("every run's architecture gradient never rose above noise (dnas derive warns of "
              "each): their agreement can come from the cost term alone, which steers every "
              "search to the same cheap ops, while chance draws nets of their cost at random; "
              "an agreement above chance then says nothing of the task")  # fmt: skip


def shown(objective: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in objective.items())


def compare_runs(refs: list[Path | str], band: float = DEFAULT_BAND, samples: int = 200,
                 seed: int = 0) -> dict:  # fmt: skip
    """Pairwise agreement of the derived ops of search runs (at least two, of one space and
    cost model), their mean, and chance for that mean (as many random architectures as runs,
    at the runs' mean derived cost) with the z-score of the mean against it."""
    if isinstance(refs, str | Path) or len(refs) < 2:
        raise DnasError("agreement needs a list of at least two search runs")
    check_band(band, "agreement")
    check_chance_samples(samples, "agreement")
    files = [find_checkpoint(ref).resolve() for ref in refs]  # RUN and RUN/search.pt alike
    if twice := sorted({str(f) for f in files if files.count(f) > 1}):
        raise DnasError(f"{twice[0]}: the same search run given twice (it agrees with itself)")
    runs = [load_outcome(ref) for ref in refs]
    warnings = [w for a, b in itertools.combinations(runs, 2) if (w := comparable(a, b))]
    if all(r.noisy for r in runs):
        warnings.append(NOISE_ONLY)
    first = runs[0]
    pairwise = [{"runs": [a.run, b.run], "agreement": op_agreement(a.choices, b.choices)}
                for a, b in itertools.combinations(runs, 2)]  # fmt: skip
    mean = mean_agreement([r.choices for r in runs])
    cost = statistics.mean(r.cost for r in runs)
    chance, sd = chance_agreement(first.table, cost, band, samples, seed, len(runs))
    return {"runs": [{"run": r.run, "cost": r.cost} for r in runs], "unit": first.table.unit,
            "layers": len(first.choices), "pairwise": pairwise, "mean": mean,
            "chance": chance, "chance_sd": sd, "z": (mean - chance) / sd if sd > 0 else None,
            "band": band, "samples": samples, "seed": seed, "warnings": warnings}  # fmt: skip


def format_report(report: dict) -> str:
    """The report of :func:`compare_runs` as text: one line per pair, then the verdict."""
    lines = [f"{p['agreement']:.3f}  {p['runs'][0]} vs {p['runs'][1]}" for p in report["pairwise"]]
    z = report["z"]
    above = z is not None and z > 2
    lines.append(
        f"mean agreement {report['mean']:.3f} over {report['layers']} layers; chance "
        f"{report['chance']:.3f} +- {report['chance_sd']:.3f} (random architectures within "
        f"{report['band']:.0%} of {statistics.mean(r['cost'] for r in report['runs']):.4g} "
        f"{report['unit']}, {report['samples']} draws of {len(report['runs'])})"
        + (f"; z = {z:.1f}: {'above' if above else 'not above'} chance" if z is not None else "")
    )
    return "\n".join(lines)
