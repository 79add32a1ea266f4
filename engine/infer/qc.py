"""Quality checks on input scans, cheap enough to run before every segmentation."""
from __future__ import annotations

import numpy as np

from engine.infer.preprocess import foreground_mask
from engine.io.anatomy import SKULL_ON_FOREGROUND_ML  # noqa: F401 (defined beside the stripped check)

# A skull-stripped scan has a black border; a head with its scalp usually reaches the field of
# view's edges. A face counts as touched when more than this fraction of it is foreground.
EDGE_FRACTION = 0.05


def skull_present(volume: np.ndarray, voxel_volume_ml: float = 0.001, affine: np.ndarray | None = None) -> bool:
    """True when the scan looks like it still has the skull on (OASIS `*_t88_gfc` rather than
    `*_t88_masked_gfc`); the networks were trained on skull-stripped scans.

    Heuristic, on `preprocess.foreground_mask` (voxels above 5% of the robust maximum): either
    the foreground is larger than any brain (> SKULL_ON_FOREGROUND_ML at this voxel volume, in mL;
    the default is 1 mm isotropic), or it touches at least three of the four in-plane faces of the
    field of view (x and y; the z faces are skipped because axial crops often cut the brain).
    A warning, not a verdict: a brain cropped tight to its own edges also trips the second test.
    With `affine`, the faces are the anatomically axial in-plane ones (left/right, front/back)
    whatever the storage order (engine/io/conform.py); without, the array is taken as LAS."""
    if affine is not None:
        from engine.io.conform import Conform

        volume = Conform.for_grid(np.shape(volume), affine).reorient(np.asarray(volume))
    fg = foreground_mask(volume)
    if not fg.any():
        return False
    fg_ml = float(fg.sum()) * voxel_volume_ml
    edges = [fg[0].mean(), fg[-1].mean(), fg[:, 0].mean(), fg[:, -1].mean()]
    return fg_ml > SKULL_ON_FOREGROUND_ML or sum(e > EDGE_FRACTION for e in edges) >= 3
