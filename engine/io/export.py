"""Mask export beyond NIfTI/Analyze (those are engine.io.volume.save_labels): PNG slices."""
from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from engine.core.atomic import atomic_write


def export_png_slices(labels: np.ndarray, out_dir: str | os.PathLike, prefix: str = "slice") -> list[Path]:
    """One 8-bit PNG per axial slice (third array axis), pixel values = class values 0-3, as the
    seed tutorial wrote them with imageio. Files: <prefix>_000.png ... Written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lab = np.asarray(labels, dtype=np.uint8)
    width = max(3, len(str(lab.shape[2] - 1)))
    files = []
    for k in range(lab.shape[2]):
        path = out / f"{prefix}_{k:0{width}d}.png"
        atomic_write(path, lambda tmp, a=lab[:, :, k]: imageio.imwrite(tmp, a, format="png"))
        files.append(path)
    return files
