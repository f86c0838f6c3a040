"""Derive the final architecture from a search checkpoint: the op the search chose per layer (the
most probable one; under a ``budget`` cost form, the most probable net within the band)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from dnas import checkpoint
from dnas.errors import DnasError
from dnas.search_space import SearchSpace, space_from_dict


@dataclass
class DerivedLayer:
    layer: str
    op: str
    prob: float
    probs: dict[str, float]


def find_checkpoint(ref: Path) -> Path:
    """A search run directory (its ``search.pt``) or a checkpoint file."""
    ref = Path(ref)
    return ref / "search.pt" if ref.is_dir() else ref


def derive(ref: Path, name: str | None = None) -> tuple[SearchSpace, list[DerivedLayer]]:
    """The architecture a search chose (its checkpoint's ``choices``; the argmax for checkpoints
    written before they were recorded), and per searchable layer the chosen op's probability."""
    path = find_checkpoint(ref)
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "dnas-search":
        raise DnasError(f"{path}: not a dnas search checkpoint (write one with 'dnas search')")
    space = space_from_dict(ckpt["space"], source=str(path))
    probs, chosen = ckpt["arch_probs"], ckpt.get("choices")
    chosen = chosen if isinstance(chosen, dict) else {}
    rows, choices = [], {}
    for layer in space.searchable_layers:
        p = probs.get(layer.name)
        if p is None or len(p) != len(layer.candidates):
            raise DnasError(f"{path}: arch_probs do not match layer {layer.name}")
        best = max(range(len(p)), key=p.__getitem__)
        if chosen.get(layer.name) in layer.candidates:
            best = layer.candidates.index(chosen[layer.name])
        choices[layer.name] = layer.candidates[best]
        rows.append(DerivedLayer(layer.name, layer.candidates[best], p[best],
                                 dict(zip(layer.candidates, p, strict=True))))  # fmt: skip
    arch = space.with_choices(choices, name or f"{space.name}-derived")
    return arch, rows


def write_architecture(arch: SearchSpace, path: Path, comment: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(
        header + yaml.safe_dump(arch.to_dict(), sort_keys=False, default_flow_style=None)
    )


UNDECIDED = 0.5  # mean top op probability below which a search has not decided


def decisiveness(probs: dict[str, list[float]]) -> float:
    """Mean over layers of the top op probability: 1 is fully decided, 1/#ops is uniform."""
    return sum(max(p) for p in probs.values()) / max(len(probs), 1)


def undecided_warning(rows: list[DerivedLayer]) -> str | None:
    """One line when the search ended undecided: the argmax then breaks near-ties."""
    mean = decisiveness({r.layer: list(r.probs.values()) for r in rows})
    if mean >= UNDECIDED:
        return None
    return (f"the search ended undecided (mean top op probability {mean:.3f} < {UNDECIDED}): "
            "the derived ops are near-ties; search longer or with a larger "
            "search.arch_optimizer.lr")  # fmt: skip


def format_rows(rows: list[DerivedLayer]) -> str:
    lines = [f"{'layer':<12} {'op':<6} {'prob':>6}   all candidates"]
    for r in rows:
        others = " ".join(f"{op}:{p:.3f}" for op, p in r.probs.items())
        lines.append(f"{r.layer:<12} {r.op:<6} {r.prob:6.3f}   {others}")
    return "\n".join(lines)
