"""Small test scans written to disk (the batch tests, engine and GUI)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def write_scan(path: Path, seed: int = 0, shape=(40, 48, 16)) -> Path:
    """An ellipsoid 'brain' with three tissue shells and a little noise, as NIfTI (1.2x1.2x1.5 mm)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 0.9) ** 2) + rng.normal(0, 0.02, shape)
    img = np.choose((r < 0.95).astype(int) + (r < 0.85) + (r < 0.6), [0, 60, 120, 200]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, np.diag([1.2, 1.2, 1.5, 1.0])), str(path))
    return path
