"""Quality checks on input scans."""
from __future__ import annotations

import numpy as np

from .preprocess import foreground_mask

# A skull-stripped adult brain is about 1.0-1.8 L; a head with skull and scalp is well over 2.5 L.
SKULL_ON_FOREGROUND_ML = 2300.0


def skull_present(volume: np.ndarray, voxel_volume_ml: float) -> bool:
    """True when the scan looks like it still has the skull on (OASIS `*_t88_gfc` rather than
    `*_t88_masked_gfc`): the non-background volume is larger than any brain, or the foreground
    touches the field of view's edges on most sides (masked scans have a black border)."""
    fg = foreground_mask(volume)
    if not fg.any():
        return False
    fg_ml = float(fg.sum()) * voxel_volume_ml
    edges = [fg[0].mean(), fg[-1].mean(), fg[:, 0].mean(), fg[:, -1].mean()]
    return fg_ml > SKULL_ON_FOREGROUND_ML or sum(e > 0.05 for e in edges) >= 3
