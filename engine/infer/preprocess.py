"""Intensity normalisation and slice padding shared by training and inference.

Normalisation does not depend on the scanner's scale: each volume is divided by the 99th
percentile of its brain (foreground) voxels, so an OASIS int16 scan and our 0-255 demo look alike
to the network. Slices are padded (or cropped) to a size the network accepts and mapped back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP_MAX = 3.0


def foreground_threshold(volume: np.ndarray) -> float | None:
    """5% of the robust maximum (99.5th percentile) of nonzero voxels; None for an empty volume."""
    v = np.asarray(volume, dtype=np.float32)
    nz = v[v > 0]
    if nz.size == 0:
        return None
    return 0.05 * float(np.percentile(nz, 99.5))


def foreground_mask(volume: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Voxels that belong to the head/brain: above 5% of the robust maximum of nonzero voxels
    (or above `threshold`, when the caller has foreground_threshold of the whole volume)."""
    v = np.asarray(volume, dtype=np.float32)
    thr = foreground_threshold(v) if threshold is None else threshold
    if thr is None:
        return np.zeros(v.shape, dtype=bool)
    return v > thr


def normalisation_scale(volume: np.ndarray, fg: np.ndarray | None = None) -> float:
    """The 99th percentile of foreground voxels (1.0 for an empty volume)."""
    v = np.asarray(volume, dtype=np.float32)
    fg = foreground_mask(v) if fg is None else fg
    if not fg.any():
        return 1.0
    if fg.sum() > 2_000_000:  # a strided sample is plenty for a percentile
        vals = v[fg][::7]
    else:
        vals = v[fg]
    p = float(np.percentile(vals, 99))
    return p if p > 0 else 1.0


def normalise(volume: np.ndarray, scale: float | None = None) -> np.ndarray:
    """volume / p99(foreground), clipped to [0, CLIP_MAX], float32."""
    s = normalisation_scale(volume) if scale is None else scale
    return np.clip(np.asarray(volume, dtype=np.float32) / s, 0.0, CLIP_MAX)


@dataclass(frozen=True)
class SlicePadding:
    """How a (H, W) slice was placed into a (PH, PW) network input and how to undo it."""

    shape: tuple[int, int]
    padded: tuple[int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, int], multiple: int) -> "SlicePadding":
        h, w = shape
        ph = -(-h // multiple) * multiple
        pw = -(-w // multiple) * multiple
        return cls((h, w), (ph, pw))

    def offsets(self) -> tuple[int, int]:
        return (self.padded[0] - self.shape[0]) // 2, (self.padded[1] - self.shape[1]) // 2

    def pad(self, slices: np.ndarray) -> np.ndarray:
        """(N, H, W) -> (N, PH, PW) with the slice centred and zeros around."""
        oy, ox = self.offsets()
        out = np.zeros((slices.shape[0],) + self.padded, dtype=np.float32)
        out[:, oy:oy + self.shape[0], ox:ox + self.shape[1]] = slices
        return out

    def unpad(self, arr: np.ndarray) -> np.ndarray:
        """(..., PH, PW) -> (..., H, W)."""
        oy, ox = self.offsets()
        return arr[..., oy:oy + self.shape[0], ox:ox + self.shape[1]]


CROP_MARGIN = 8  # pixels of context kept around the foreground of a batch of slices


def foreground_box(fg: np.ndarray, multiple: int, margin: int = CROP_MARGIN) -> tuple[slice, slice]:
    """In-plane (x, y) box holding every slice's foreground, widened to a multiple of `multiple`."""
    any_xy = fg.any(axis=2)
    if not any_xy.any():
        return slice(0, fg.shape[0]), slice(0, fg.shape[1])
    box = []
    for axis, n in ((1, fg.shape[0]), (0, fg.shape[1])):
        idx = np.where(any_xy.any(axis=axis))[0]
        lo, hi = max(0, idx[0] - margin), min(n, idx[-1] + 1 + margin)
        size = -(-(hi - lo) // multiple) * multiple
        if size >= n:
            lo, hi = 0, n
        else:
            lo = max(0, min(lo - (size - (hi - lo)) // 2, n - size))
            hi = lo + size
        box.append(slice(lo, hi))
    return box[0], box[1]
