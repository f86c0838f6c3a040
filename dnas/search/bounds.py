"""Bounds that the CLI's options and the Python API share (``--band`` of ``dnas rank`` and
``dnas agreement``, ``--samples`` of ``dnas agreement``), in one place so that what one accepts
the other accepts too; free of torch, because ``dnas.cli`` reads them at start."""

from __future__ import annotations

from numbers import Integral, Real

from dnas.errors import DnasError

BAND = (0.001, 1.0)  # a share of a cost: random nets are drawn within it of the cost
DEFAULT_BAND = 0.03  # --band's default (dnas rank, dnas agreement), and the API's
CHANCE_SAMPLES = 10  # the fewest sets of random nets that estimate chance and its spread


def check_band(band: float, caller: str) -> None:
    """A one-line error unless ``band`` is a share of a cost within :data:`BAND`."""
    ok = isinstance(band, Real) and not isinstance(band, bool)  # numpy's scalars too
    if not (ok and BAND[0] <= band <= BAND[1]):  # NaN fails the comparison too
        raise DnasError(f"{caller}: expected band in {BAND[0]:g}..{BAND[1]:g} (a share of the "
                        f"cost), got {band!r}")  # fmt: skip


def check_chance_samples(samples: int, caller: str) -> None:
    """A one-line error unless ``samples`` is an integer of at least :data:`CHANCE_SAMPLES`."""
    if isinstance(samples, bool) or not isinstance(samples, Integral) or samples < CHANCE_SAMPLES:
        raise DnasError(f"{caller}: expected samples >= {CHANCE_SAMPLES} (sets of random nets "
                        f"that estimate chance), got {samples!r}")  # fmt: skip
