"""How each anatomical view shows a volume, in radiological convention, from the affine.

For a view (axial, coronal or sagittal) `ViewGeometry` knows which array axis is fixed, which
array axis runs across the screen and which runs down it, whether each is flipped, the voxel
spacing on screen, and the anatomical letters at the four edges. It turns a 2-D array slice into
the row-major image the screen shows and maps screen pixels back to voxel indices.

Radiological convention: the patient's right is on the screen's left in axial and coronal views;
anterior is up in axial views, superior is up in coronal and sagittal views, anterior is on the
left in sagittal views (as ITK-SNAP shows them).
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
# For each view: the anatomical axis held fixed, then (screen-right direction, screen-down direction)
_VIEW_SPEC = {
    "axial": ("S", "L", "P"),  # fixed S-I; screen right -> patient left; screen down -> posterior
    "coronal": ("A", "L", "I"),
    "sagittal": ("R", "P", "I"),  # anterior on the left: screen right -> posterior
}


def _axis_letter_pairs(affine: np.ndarray) -> list[str]:
    """For each array axis, the anatomical direction its index increases towards (R/L/A/P/S/I)."""
    return list(nib.aff2axcodes(affine))


def _axis_of(codes: list[str], letter: str) -> tuple[int, bool]:
    """The array axis along the anatomical line of `letter` and whether it increases towards it."""
    for ax, c in enumerate(codes):
        if c == letter:
            return ax, True
        if c == _OPPOSITE[letter]:
            return ax, False
    raise ValueError(f"no axis along {letter}: {codes}")


@dataclass(frozen=True)
class ViewGeometry:
    view: str
    axis: int  # fixed array axis
    col_axis: int  # array axis that runs left->right on screen
    row_axis: int  # array axis that runs top->bottom on screen
    col_flip: bool  # screen column c shows array index n-1-c
    row_flip: bool
    col_spacing: float  # mm per screen column
    row_spacing: float
    shape: tuple[int, int, int]
    edges: dict  # {"left","right","top","bottom"} -> anatomical letter

    @classmethod
    def for_view(cls, view: str, affine: np.ndarray, shape: tuple[int, int, int]) -> "ViewGeometry":
        codes = _axis_letter_pairs(affine)
        fixed_letter, right_letter, down_letter = _VIEW_SPEC[view]
        axis, _ = _axis_of(codes, fixed_letter)
        col_axis, col_pos = _axis_of(codes, right_letter)
        row_axis, row_pos = _axis_of(codes, down_letter)
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        edges = {"right": right_letter, "left": _OPPOSITE[right_letter],
                 "bottom": down_letter, "top": _OPPOSITE[down_letter]}
        return cls(view, axis, col_axis, row_axis, not col_pos, not row_pos,
                   float(zooms[col_axis]), float(zooms[row_axis]), tuple(int(s) for s in shape), edges)

    @property
    def n_slices(self) -> int:
        return self.shape[self.axis]

    @property
    def display_shape(self) -> tuple[int, int]:
        return self.shape[self.row_axis], self.shape[self.col_axis]

    def display(self, volume: np.ndarray, index: int) -> np.ndarray:
        """The (rows, cols) image shown on screen for slice `index` (a view, not a copy, when possible)."""
        sl = np.take(volume, index, axis=self.axis)
        # remaining axes of sl, in increasing array-axis order
        rem = [a for a in range(3) if a != self.axis]
        img = sl if rem.index(self.row_axis) == 0 else sl.T
        if self.row_flip:
            img = img[::-1, :]
        if self.col_flip:
            img = img[:, ::-1]
        return img

    def voxel_at(self, row: float, col: float, index: int) -> tuple[int, int, int] | None:
        """Voxel index under screen pixel (row, col) of the displayed image, or None outside."""
        r, c = int(np.floor(row)), int(np.floor(col))
        nr, nc = self.display_shape
        if not (0 <= r < nr and 0 <= c < nc):
            return None
        return self.voxel_from_display(r, c, index)

    def voxel_from_display(self, r: float, c: float, index: int):
        nr, nc = self.display_shape
        ri = (nr - 1 - r) if self.row_flip else r
        ci = (nc - 1 - c) if self.col_flip else c
        v = [0, 0, 0]
        v[self.axis] = index
        v[self.row_axis] = ri
        v[self.col_axis] = ci
        return tuple(v)

    def slice_point(self, row: float, col: float) -> tuple[float, float]:
        """Continuous (i, j) in the 2-D array slice np.take(volume, k, axis) for a display point
        whose pixel centres are at integer + 0.5."""
        nr, nc = self.display_shape
        ri = (nr - row) if self.row_flip else row
        ci = (nc - col) if self.col_flip else col
        rem = [a for a in range(3) if a != self.axis]
        pos = {self.row_axis: ri - 0.5, self.col_axis: ci - 0.5}
        return pos[rem[0]], pos[rem[1]]

    def display_box(self, box) -> tuple[slice, slice] | None:
        """The display (rows, cols) rectangle covered by a 3-D voxel box, if it meets this view's
        current slice it is for the caller to check; flips are applied."""
        nr, nc = self.display_shape
        rs, cs = box[self.row_axis], box[self.col_axis]
        if self.row_flip:
            rs = slice(nr - rs.stop, nr - rs.start)
        if self.col_flip:
            cs = slice(nc - cs.stop, nc - cs.start)
        return rs, cs
