"""Where a scan meets a network: the mapping between the scan's own grid and the networks' grid.

The networks were trained on 1 mm voxels in the OASIS-1 / Analyze layout: array axes running to
the patient's Left, Anterior and Superior (LAS), so that "axial" slices are `work[:, :, k]`,
coronal `work[:, j, :]` and sagittal `work[i, :, :]`. A scan in any other orientation is
reoriented to the closest LAS orientation (nibabel `io_orientation` / `ornt_transform`: axis
permutations and flips only, no interpolation); if its voxels differ from 1 mm by more than
ZOOM_TOLERANCE along any axis it is resampled to 1 mm (linear, centre-aligned, with a Gaussian
anti-aliasing filter when shrinking). Results come back by the inverse mapping: class
probabilities are resampled to the scan's grid and only then turned into labels (FastSurfer's
conform step does the same; nearest-neighbour on labels would shift boundaries by half a voxel).

An oblique scan is mapped to its closest LAS orientation; the residual rotation (up to 45 degrees
in principle, a few degrees in practice) is left in the slices the network sees, which training
covers with its rotation augmentation. Masks always keep the scan's own grid and affine.

numpy/nibabel/scipy only; no MXNet.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

WORK_CODES = ("L", "A", "S")
WORK_ZOOM = 1.0
ZOOM_TOLERANCE = 0.03  # resample when a voxel side differs from 1 mm by more than 3 %
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.1, 10.0  # outside this the header's units or scaling are wrong
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # normal axis of each plane on the work grid
PLANES = ("axial", "coronal", "sagittal")


def _positions(n_out: int, n_in: int, zoom: float) -> np.ndarray:
    """Source coordinates (in input voxels) of each output voxel, centre-aligned: output voxels
    are WORK_ZOOM mm, input voxels `zoom` mm (to_work), or the reverse with zoom inverted."""
    return (np.arange(n_out, dtype=np.float64) - (n_out - 1) / 2) / zoom + (n_in - 1) / 2


def resample_axis(a: np.ndarray, axis: int, pos: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Linear interpolation of `a` along `axis` at fractional source positions `pos`; positions
    more than half a voxel outside the array get `fill`."""
    n = a.shape[axis]
    p = np.clip(pos, 0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (p - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    w = w.reshape(shape)
    out = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w
    outside = (pos < -0.5) | (pos > n - 0.5)
    if outside.any():
        idx = [slice(None)] * a.ndim
        idx[axis] = np.where(outside)[0]
        out[tuple(idx)] = fill
    return out.astype(np.float32, copy=False)


def gaussian_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along one axis (kernel truncated at 4 sigma, edges mirrored), in plain
    numpy so that the standalone package runner can repeat it exactly."""
    r = int(4.0 * sigma + 0.5)
    if sigma <= 0 or r < 1:
        return a
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    n = a.shape[axis]
    idx = np.arange(-r, n + r)
    idx = np.where(idx < 0, -idx - 1, idx)
    idx = np.where(idx >= n, 2 * n - idx - 1, idx)
    idx = np.clip(idx, 0, n - 1)
    padded = np.take(a, idx, axis=axis)
    out = np.zeros(a.shape, dtype=np.float32)
    for j, wj in enumerate(w):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(j, j + n)
        out += np.float32(wj) * padded[tuple(sl)]
    return out


@dataclass(frozen=True)
class Conform:
    """The mapping of one scan grid (shape, affine) onto the networks' LAS 1 mm grid."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    transform: np.ndarray  # nibabel ornt transform, native -> LAS (rows: [output axis, flip])
    codes: tuple[str, str, str]  # native axis codes
    zooms: tuple[float, float, float]  # voxel size along the LAS-reoriented axes
    reoriented_shape: tuple[int, int, int]
    work_shape: tuple[int, int, int]
    resampled: bool

    @classmethod
    def for_grid(cls, shape, affine: np.ndarray | None) -> "Conform":
        shape = tuple(int(s) for s in shape[:3])
        if affine is None:  # a bare array: taken as already on the work grid
            affine = np.diag([-WORK_ZOOM, WORK_ZOOM, WORK_ZOOM, 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        src = nib.io_orientation(affine)
        tr = ornt.ornt_transform(src, ornt.axcodes2ornt(WORK_CODES))
        # rounded: a rotated affine gives 0.99999998 for a 1 mm voxel, and the same array stored
        # without the rotation (Analyze) must get exactly the same work grid and labels
        native_zooms = np.round(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), 5)
        if not np.all((native_zooms >= MIN_VOXEL_MM) & (native_zooms <= MAX_VOXEL_MM)):
            raise ValueError(f"voxel size {'x'.join(f'{z:g}' for z in native_zooms)} mm is outside "
                             f"{MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm: the header's units or scaling are wrong "
                             "(a brain scan has voxels of a fraction of a millimetre to a few millimetres)")
        zooms = [0.0, 0.0, 0.0]
        rshape = [0, 0, 0]
        for i in range(3):
            zooms[int(tr[i, 0])] = float(native_zooms[i])
            rshape[int(tr[i, 0])] = shape[i]
        resampled = any(abs(z / WORK_ZOOM - 1) > ZOOM_TOLERANCE for z in zooms)
        wshape = tuple(max(1, int(round(n * z / WORK_ZOOM))) if resampled else n for n, z in zip(rshape, zooms))
        return cls(shape, affine, tr, tuple(nib.aff2axcodes(affine)), tuple(zooms), tuple(rshape), wshape,
                   resampled)

    # ------------------------------------------------------------------ description
    @property
    def reoriented(self) -> bool:
        return not (np.array_equal(self.transform[:, 0], [0, 1, 2]) and np.all(self.transform[:, 1] == 1))

    @property
    def identity(self) -> bool:
        return not self.reoriented and not self.resampled

    def describe(self) -> str:
        """One line for the log and the status bar, empty when the scan is used as it is."""
        parts = []
        if self.reoriented:
            parts.append(f"reoriented {''.join(self.codes)} -> {''.join(WORK_CODES)}")
        if self.resampled:
            z = "x".join(f"{v:g}" for v in self.zooms)
            parts.append(f"resampled {z} mm -> {WORK_ZOOM:g} mm for the network, labels brought back to the scan's grid")
        return "; ".join(parts)

    def native_axis(self, plane: str) -> int:
        """The scan's array axis normal to an anatomical plane ('axial': the superior-inferior axis)."""
        work_axis = PLANE_AXIS[plane]
        return int(np.where(self.transform[:, 0] == work_axis)[0][0])

    # ------------------------------------------------------------------ to the network's grid
    def reorient(self, data: np.ndarray) -> np.ndarray:
        return ornt.apply_orientation(data, self.transform) if self.reoriented else data

    def _to_1mm(self, a: np.ndarray, axes: dict[int, int], classes: int | None = None) -> np.ndarray:
        """Resample array axes to the work grid's 1 mm: axes maps an axis of `a` to the LAS axis
        it runs along. A scan is smoothed first where it shrinks by more than 1.3x (anti-aliasing)
        and interpolated linearly; a label map (classes given) goes one-hot, is interpolated like
        probabilities, and comes back by argmax."""
        if classes is None:
            a = a.astype(np.float32)
            for i, ax in axes.items():
                if self.zooms[ax] < WORK_ZOOM / 1.3:
                    a = gaussian_axis(a, 0.5 * np.sqrt((WORK_ZOOM / self.zooms[ax]) ** 2 - 1), i)
        else:
            a = np.stack([(a == c).astype(np.float32) for c in range(classes)])
        shift = 0 if classes is None else 1
        for i, ax in axes.items():
            a = resample_axis(a, i + shift, _positions(self.work_shape[ax], self.reoriented_shape[ax],
                                                       self.zooms[ax] / WORK_ZOOM))
        return np.ascontiguousarray(a if classes is None else np.argmax(a, axis=0).astype(np.uint8))

    def to_work(self, data: np.ndarray) -> np.ndarray:
        """A scan (float) on the work grid: reoriented, then resampled linearly if needed."""
        a = self.reorient(np.asarray(data, dtype=np.float32))
        return self._to_1mm(a, {0: 0, 1: 1, 2: 2}) if self.resampled else np.ascontiguousarray(a)

    def labels_to_work(self, labels: np.ndarray, classes: int) -> np.ndarray:
        """A label map on the work grid (for fine-tuning on corrections): one-hot, resampled like
        probabilities, argmax."""
        lab = self.reorient(np.asarray(labels))
        return self._to_1mm(lab, {0: 0, 1: 1, 2: 2}, classes) if self.resampled else np.ascontiguousarray(lab)

    def plane_slices_to_work(self, data: np.ndarray, plane: str, native_indices, classes: int | None = None
                             ) -> np.ndarray:
        """Native slices of an anatomical plane, each brought in-plane to the work grid's 1 mm
        orientation: (A, B, N) with the slices along the last axis, in the order given. Exact for
        the slices themselves (no interpolation across slices: what fine-tuning learns from is
        exactly what the user drew). With `classes`, `data` is a label map (one-hot resampling)."""
        wax = PLANE_AXIS[plane]
        a = self.reorient(np.asarray(data))
        a = np.moveaxis(np.take(a, self._reoriented_indices(plane, native_indices), axis=wax), wax, 2)
        if not self.resampled:
            return np.ascontiguousarray(a)
        in_plane = [ax for ax in range(3) if ax != wax]
        return self._to_1mm(a, dict(enumerate(in_plane)), classes)

    def work_positions(self, plane: str, native_indices) -> np.ndarray:
        """Fractional work-grid positions (along the plane's normal) of native slice indices."""
        nax = self.native_axis(plane)
        wax = PLANE_AXIS[plane]
        k = np.asarray(native_indices, dtype=np.float64)
        if bool(self.transform[nax, 1] < 0):
            k = (self.shape[nax] - 1) - k
        if not self.resampled:
            return k
        n, m, z = self.reoriented_shape[wax], self.work_shape[wax], self.zooms[wax] / WORK_ZOOM
        return (k - (n - 1) / 2) * z + (m - 1) / 2

    def work_slices_for(self, plane: str, native_indices) -> list[int]:
        """The work-grid slices needed to produce these native slices (both neighbours when resampled)."""
        n = self.work_shape[PLANE_AXIS[plane]]
        pos = np.clip(np.round(self.work_positions(plane, native_indices), 9), 0, n - 1)
        out = set()
        for p in np.atleast_1d(pos):
            for k in {int(np.floor(p)), int(np.ceil(p))}:
                if 0 <= k < n:
                    out.add(k)
        return sorted(out)

    # ------------------------------------------------------------------ back to the scan's grid
    def probs_to_native(self, probs: np.ndarray, plane: str | None = None, native_indices=None) -> np.ndarray:
        """Class probabilities (C, *work_shape) -> (C, *shape) on the scan's grid. With plane and
        native_indices on a resampled grid, only those native slices are interpolated (the others
        are zero); without resampling the whole volume is reoriented either way. Positions beyond
        the work grid take its edge values (never empty probabilities)."""
        p = np.asarray(probs, dtype=np.float32)
        wax = PLANE_AXIS[plane] if plane is not None and native_indices is not None else None
        if self.resampled:
            for ax in range(3):
                pos = _positions(self.reoriented_shape[ax], self.work_shape[ax], WORK_ZOOM / self.zooms[ax])
                if ax == wax:
                    full = pos
                    wanted = self._reoriented_indices(plane, native_indices)
                    pos = full[wanted]
                p = resample_axis(p, ax + 1, np.clip(pos, 0, self.work_shape[ax] - 1))  # clamp, never empty
            if wax is not None:  # scatter the computed slices back into a full array
                full_arr = np.zeros((p.shape[0],) + self.reoriented_shape, dtype=np.float32)
                idx = [slice(None)] * 4
                idx[wax + 1] = wanted
                full_arr[tuple(idx)] = p
                p = full_arr
        if self.reoriented:
            inv = ornt.ornt_transform(ornt.axcodes2ornt(WORK_CODES), nib.io_orientation(self.affine))
            p = np.stack([ornt.apply_orientation(c, inv) for c in p])
        return np.ascontiguousarray(p)

    def plane_slice_to_native(self, plane: str, native_index: int, work_slices: dict) -> np.ndarray:
        """Class probabilities of one native slice of `plane`, from the work-grid slices it needs
        (work_slices: {work index: (C, a, b)} in the plane's work orientation, as
        work_slices_for gives them): interpolated across slices, resampled in-plane and
        reoriented. Returns (C, u, v): the native slice np.take(volume, native_index, axis)."""
        wax = PLANE_AXIS[plane]
        pos = float(np.atleast_1d(self.work_positions(plane, [native_index]))[0])
        pos = min(max(round(pos, 9), 0.0), self.work_shape[wax] - 1.0)  # as resample_axis clamps
        k0 = int(np.floor(pos))
        k1 = int(np.ceil(pos))
        first = next(iter(work_slices.values()))
        blank = np.zeros_like(first)
        blank[0] = 1.0

        def get(k):
            return work_slices.get(k, blank)

        p = get(k0) if k1 == k0 else (1 - (pos - k0)) * get(k0) + (pos - k0) * get(k1)
        p = np.asarray(p, dtype=np.float32)
        if self.resampled:
            in_plane = [a for a in range(3) if a != wax]
            for i, ax in enumerate(in_plane):
                p = resample_axis(p, i + 1, np.clip(_positions(self.reoriented_shape[ax], self.work_shape[ax],
                                                               WORK_ZOOM / self.zooms[ax]), 0, self.work_shape[ax] - 1))
        if self.reoriented:
            inv = ornt.ornt_transform(ornt.axcodes2ornt(WORK_CODES), nib.io_orientation(self.affine))
            p3 = np.expand_dims(p, wax + 1)
            p3 = np.stack([ornt.apply_orientation(c, inv) for c in p3])
            p = np.take(p3, 0, axis=self.native_axis(plane) + 1)
        return np.ascontiguousarray(p)

    def _reoriented_indices(self, plane: str, native_indices) -> np.ndarray:
        nax = self.native_axis(plane)
        k = np.asarray(native_indices, dtype=np.intp)
        return (self.shape[nax] - 1) - k if bool(self.transform[nax, 1] < 0) else k
