"""Label surfaces for the 3-D view: a triangle mesh per class by marching cubes (scikit-image),
in world millimetres through the scan's affine, so the 3-D view and the cursor agree with the
slices. Numpy in, numpy out; no Qt (the GUI builds them in a worker thread and draws them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from engine.labels.labelmap import box_of


@dataclass
class Mesh:
    value: int
    vertices: np.ndarray  # (n, 3) float32, world mm
    faces: np.ndarray  # (m, 3) int32

    @property
    def empty(self) -> bool:
        return len(self.faces) == 0


def label_surfaces(labels: np.ndarray, affine: np.ndarray, classes: tuple[int, ...] = (1, 2, 3),
                   step: int = 2, smooth: float = 0.8) -> dict[int, Mesh]:
    """One mesh per class: the 0.5 level of the class indicator, lightly smoothed (`smooth`
    voxels of Gaussian) so the surface is not a staircase, sampled every `step` voxels (2 keeps a
    176x208x176 brain interactive). Classes absent from the map get an empty mesh."""
    from skimage.measure import marching_cubes

    lab = np.asarray(labels)
    out = {}
    for c in classes:
        mask = lab == c
        box = box_of(mask)
        if box is None:
            out[c] = Mesh(c, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
            continue
        sub = np.pad(mask[box].astype(np.float32), 1)  # closed surfaces at the box's edges
        if smooth > 0:
            sub = ndi.gaussian_filter(sub, smooth)
        if sub.max() <= 0.5:
            out[c] = Mesh(c, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
            continue
        verts, faces, _, _ = marching_cubes(sub, 0.5, step_size=max(1, int(step)), allow_degenerate=False)
        verts = verts - 1 + np.array([b.start for b in box], np.float32)  # back to voxel indices
        world = verts @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine, np.float64)[:3, 3]
        if np.linalg.det(np.asarray(affine, np.float64)[:3, :3]) < 0:  # a mirroring affine (LAS) turns the
            faces = faces[:, ::-1]  # triangles inside out: keep the normals pointing outwards for lighting
        out[c] = Mesh(c, world.astype(np.float32), np.ascontiguousarray(faces, dtype=np.int32))
    return out

