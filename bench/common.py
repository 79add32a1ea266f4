"""Shared by the benchmark scripts: where results go."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"


def report(text: str, append: bool = True) -> None:
    """Print a result section and append it to docs/BENCHMARKS.md."""
    print(text)
    if append:
        with open(BENCHMARKS_MD, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
