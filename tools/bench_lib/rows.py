"""Figures and rows: samples of repeated runs, their median and spread, and the
ocifs/alternative ratio taken pair by pair (run i of ocifs against run i of the
alternative, so that drift of a noisy machine cancels out)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Figure", "Row", "Target", "pairwise"]

Unit = Literal["s", "ops/s", "bytes", "MiB", "x"]


@dataclass
class Figure:
    """Repeated samples of one thing, in ``unit``."""

    samples: list[float]
    unit: Unit = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def text(self) -> str:
        """``median (min-max) unit`` in a short human form."""
        fmt = _FORMATS[self.unit]
        if len(self.samples) == 1 or self.low == self.high:
            return fmt(self.median)
        return f"{fmt(self.median)} ({fmt(self.low)}-{fmt(self.high)})"

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "samples": self.samples,
        }


def _seconds(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _bytes(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


_FORMATS: dict[str, Callable[[float], str]] = {
    "s": _seconds,
    "ops/s": lambda v: f"{v:,.0f}/s",
    "bytes": _bytes,
    "MiB": lambda v: f"{v:.0f} MiB",
    "x": lambda v: f"{v:.3g}x",
}


@dataclass
class Target:
    """What the issue asks: ``value <= limit`` (``"<="``) or ``>=``, of the ratio, or of
    the ocifs figure itself when ``on_ocifs`` (daemon RSS in MiB)."""

    op: Literal["<=", ">="]
    limit: float
    on_ocifs: bool = False

    def met(self, ratio: float) -> bool:
        return ratio <= self.limit if self.op == "<=" else ratio >= self.limit

    def text(self) -> str:
        unit = " MiB" if self.on_ocifs else "x"
        return f"{'≤' if self.op == '<=' else '≥'} {self.limit:g}{unit}"


@dataclass
class Row:
    """One line of the table: ``ocifs`` against ``alt`` with their ratio.

    ``ratio`` is ocifs cost over the alternative's cost (time, bytes, memory), so
    lower is better for ocifs; for ops/s rows it is alt ops over ocifs ops, the same
    sense. ``skipped`` says why a row has no figures (eStargz, a missing command).
    """

    section: str
    measure: str
    alt_name: str
    ocifs: Figure | None = None
    alt: Figure | None = None
    ratio: Figure | None = None
    target: Target | None = None
    skipped: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        fig = self.ocifs if self.target is not None and self.target.on_ocifs else self.ratio
        if self.target is None or fig is None:
            return None
        return self.target.met(fig.median)

    def as_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "measure": self.measure,
            "alternative": self.alt_name,
            "ocifs": self.ocifs.as_json() if self.ocifs else None,
            "alt": self.alt.as_json() if self.alt else None,
            "ratio": self.ratio.as_json() if self.ratio else None,
            "target": self.target.text() if self.target else None,
            "met": self.met,
            "skipped": self.skipped or None,
            "notes": self.notes,
        }


def pairwise(ocifs: Figure, alt: Figure) -> Figure:
    """Ratios of run i against run i, as a :class:`Figure` of unit ``x``."""
    if ocifs.unit == "ops/s":
        ratios = [a / o for o, a in zip(ocifs.samples, alt.samples, strict=True)]
    else:
        ratios = [o / a for o, a in zip(ocifs.samples, alt.samples, strict=True)]
    return Figure(ratios, "x")
