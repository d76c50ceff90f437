"""Markdown helpers shared by the report and the experiments: percentages, counts and tables."""

from __future__ import annotations

__all__ = ["count_of", "pct", "table"]


def pct(x: float) -> str:
    """A share as a percentage with one decimal: ``0.25 -> "25.0%"``."""
    return f"{x:.1%}"


def count_of(k: int, m: int) -> str:
    """``"k of m (share)"``; ``"k of 0"`` for an empty pool."""
    return f"{k} of {m} ({k / m:.1%})" if m else f"{k} of 0"


def table(header: list[str], body: list[list[str]]) -> list[str]:
    """The lines of a markdown table.

    >>> table(["a", "b"], [["1", "2"]])
    ['| a | b |', '|---|---|', '| 1 | 2 |']
    """
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cells) + " |" for cells in body]
