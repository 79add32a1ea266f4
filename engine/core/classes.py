"""The tissue classes BrainSeg segments, their names and colours (from resources/colors.json)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from engine.core.paths import RESOURCES


@dataclass(frozen=True)
class TissueClass:
    value: int
    key: str  # short machine name used in JSON/CSV: background, csf, gm, wm
    name: str  # human name
    rgb: tuple[int, int, int]


@lru_cache(maxsize=1)
def tissue_classes() -> tuple[TissueClass, ...]:
    """The four classes of an OASIS FSL_SEG map, in label order."""
    with open(RESOURCES / "colors.json", encoding="utf-8") as fh:
        table = json.load(fh)
    return tuple(
        TissueClass(int(c["value"]), c["key"], c["name"], tuple(c["rgb"])) for c in table["classes"]
    )


# Derived from resources/colors.json, the one place the classes are written down.
CLASS_KEYS: tuple[str, ...] = tuple(c.key for c in tissue_classes())
NUM_CLASSES = len(CLASS_KEYS)
TISSUE_KEYS: tuple[str, ...] = CLASS_KEYS[1:]  # every class but background (value 0)
