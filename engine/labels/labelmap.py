"""The editable label map: one write path, stroke-level undo that stores only what changed.

Modelled on napari's labels layer (`_MaskedPaintAtom`): every edit (brush stroke, fill, a new
prediction) becomes one `EditAtom` holding a bounding box, a boolean mask inside it, the old
values and the new values. All writes go through `_apply()`, which writes the box, updates the
per-slice record of user edits and tells listeners which box changed so views redraw only that.

History is capped in steps *and* bytes (3D Slicer #6982: full-copy undo ate 100 GB); a click that
changes nothing adds no step (Slicer #5808); any new edit clears redo; replacing the labels with
a prediction is one undoable step that never silently drops manual edits (MONAI Label #780): the
caller decides, and `has_manual_edits` tells it whether to ask.

The network's output (`predicted`) is kept apart from the user's corrections (MONAI Label's
"original" vs "final").

**Provenance (issue #19).** Every voxel knows what last set it: `origin` is a uint8 map with one
code per category (ORIGIN_NAMES): the labels as opened, the network, a user stroke in each of the
three planes (brush, eraser and fill clicks are strokes), an interpolation the user applied (fill
between slices), a clean-up (islands, largest piece, smoothing), and a preview not yet applied.
Corrections are what the user did (strokes and the interpolations they applied), nothing else: a
clean-up's voxels are not corrections, so a new prediction replaces them; a voxel that merely
differs from the last prediction is not a correction either. The merge rule (`corrected_mask`),
the slices the user drew in a plane (`edited_slices`, fine-tuning's list, fill between's keys),
and the recovery file all read this record. Undo steps store the changed voxels' old and new
origin beside their old and new labels, so undo restores both.

Slices are counted in the plane the stroke was made in: a brush stroke on coronal slice 105 is one
corrected coronal slice, not a corrected line in each of the twenty axial slices it crosses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
Box = tuple[slice, slice, slice]

# what last set a voxel (LabelMap.origin); stored in recovery files, so never renumber
OPENED, NETWORK = 0, 1
STROKE = (2, 3, 4)  # a user stroke in the plane normal to array axis 0, 1, 2
INTERPOLATED, CLEANUP, PREVIEW = 5, 6, 7
ORIGIN_NAMES = {OPENED: "as opened", NETWORK: "network", STROKE[0]: "stroke (axis 0)",
                STROKE[1]: "stroke (axis 1)", STROKE[2]: "stroke (axis 2)", INTERPOLATED: "interpolated by the user",
                CLEANUP: "clean-up", PREVIEW: "preview"}
USER_CODES = (*STROKE, INTERPOLATED)  # the user's corrections: a prediction keeps them


def _axis(plane: str | int) -> int:
    """Array axis of a plane: an int is taken as the axis itself, a name as the OASIS layout's."""
    return plane if isinstance(plane, int) else PLANE_AXIS[plane]


@dataclass
class EditAtom:
    kind: str  # stroke | erase | fill | prediction | restore | a label operation's name
    box: Box
    mask: np.ndarray  # bool, shape of the box: the voxels whose label or origin changes
    old: np.ndarray  # values at mask before
    new: np.ndarray  # values at mask after
    origin_old: np.ndarray  # origin codes at mask before
    origin_new: np.ndarray  # origin codes at mask after
    user: bool = True  # a manual correction (counts as an edit)
    slices: tuple[tuple[int, int], ...] = ()  # (array axis, slice) a stroke was made in
    # prediction steps change the network's map too, stored as compactly as the labels (changed
    # voxels only, not two whole maps): box, mask and old/new values of `predicted`
    pred_box: Box | None = None
    pred_mask: np.ndarray | None = None
    pred_old: np.ndarray | None = None
    pred_new: np.ndarray | None = None
    had_predicted: bool = False
    replaced_cleanup: int = 0  # a prediction: clean-up voxels it replaced (the landing message says so)

    def __post_init__(self):
        self.origin_old = _compact(self.origin_old)
        self.origin_new = _compact(self.origin_new)

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.pred_mask, self.pred_old, self.pred_new) if a is not None)
        return int(self.mask.nbytes + self.old.nbytes + self.new.nbytes + self.origin_old.nbytes
                   + self.origin_new.nbytes + extra)

    @property
    def voxels(self) -> int:
        """Voxels whose label changed."""
        return int((self.old != self.new).sum())


@dataclass
class _Stroke:
    axis: int
    index: int
    before: np.ndarray  # the 2-D slice at stroke start
    touched: np.ndarray  # bool 2-D
    value: int
    kind: str
    last: tuple[float, float] | None = None
    allowed: np.ndarray | None = None  # bool 2-D: pixels the stroke may change (threshold painting)


def _compact(values: np.ndarray) -> np.ndarray:
    """Origin codes of a step's voxels: one value (a 0-d array) when they are all the same, which
    they usually are (a stroke, a clean-up, a prediction), else the array."""
    values = np.asarray(values, np.uint8)
    if values.size and (values == values.flat[0]).all():
        return np.array(values.flat[0], np.uint8)
    return values


def box_of(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of a boolean array, or None when empty."""
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.where(mask.any(axis=other))[0]
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def capsule_mask(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float],
                 radius: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixels within `radius` of the segment p0-p1 (a round brush dragged along a line), as a
    (box, mask) pair clipped to `shape`; None when entirely outside."""
    r = max(float(radius), 0.5)
    lo = [int(np.floor(min(p0[i], p1[i]) - r)) for i in (0, 1)]
    hi = [int(np.ceil(max(p0[i], p1[i]) + r)) + 1 for i in (0, 1)]
    lo = [max(0, v) for v in lo]
    hi = [min(shape[i], hi[i]) for i in (0, 1)]
    if lo[0] >= hi[0] or lo[1] >= hi[1]:
        return None
    ii, jj = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32)
    a = np.array(p0, dtype=np.float32)
    d = np.array(p1, dtype=np.float32) - a
    L2 = float(d @ d)
    if L2 == 0:
        t = 0.0
    else:
        t = np.clip(((ii - a[0]) * d[0] + (jj - a[1]) * d[1]) / L2, 0, 1)
    di = ii - (a[0] + t * d[0])
    dj = jj - (a[1] + t * d[1])
    # r - 0.5 gives a 1-pixel dab for size 1 and a disk of diameter ~2r otherwise.
    mask = di * di + dj * dj <= (r - 0.5 + 1e-3) ** 2 if r > 0.5 else (np.abs(di) < 0.5) & (np.abs(dj) < 0.5)
    if not mask.any():
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1])), mask


class LabelMap:
    """A uint8 label volume with history and provenance. Not thread-safe: the GUI thread owns it."""

    def __init__(self, labels: np.ndarray, max_steps: int = 200, max_bytes: int = 256 * 2**20,
                 predicted: np.ndarray | None = None, axial_axis: int = 2, origin: np.ndarray | None = None):
        self.labels = np.ascontiguousarray(labels, dtype=np.uint8)
        # the array axis normal to anatomically axial slices (2 for OASIS/LAS; engine/io/conform.py
        # Conform.native_axis("axial") for any other storage order): edited slices, partial
        # predictions and fine-tuning count slices along it
        self.axial_axis = int(axial_axis)
        self.predicted = None if predicted is None else np.ascontiguousarray(predicted, dtype=np.uint8)
        # what last set each voxel (module docstring)
        if origin is None:
            origin = np.full(self.labels.shape, OPENED if predicted is None else NETWORK, np.uint8)
        elif np.shape(origin) != self.labels.shape:
            raise ValueError(f"origin {np.shape(origin)} != labels {self.labels.shape}")
        self.origin = np.ascontiguousarray(origin, dtype=np.uint8)
        # the labels as they were opened (a file, zeros, a recovery): where the network has not
        # run, corrections are measured against this
        self._baseline = self.labels.copy()
        self.opened_empty = not self._baseline.any()  # nothing labelled when opened (once, not per redraw)
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._undo: list[EditAtom] = []
        self._redo: list[EditAtom] = []
        self._stroke: _Stroke | None = None
        self._preview: EditAtom | None = None  # a shown preview (the newest undo step) not yet applied
        self.revision = 0  # increases with every applied change (also undo/redo)
        self._clean_revision = 0
        self._slices_cache: tuple[int, dict] = (-1, {})
        self.listeners: list[Callable[[Box], None]] = []
        self.edit_count = 0  # user edits applied and not undone
        self._clean_edit_count = 0

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def history_bytes(self) -> int:
        return sum(a.nbytes for a in self._undo) + sum(a.nbytes for a in self._redo)

    @property
    def undo_steps(self) -> int:
        return len(self._undo)

    @property
    def is_clean(self) -> bool:
        return self.revision == self._clean_revision

    def mark_clean(self) -> None:
        self._clean_revision = self.revision
        self._clean_edit_count = self.edit_count

    @property
    def unsaved_edits(self) -> int:
        """Edits since the labels were last saved (or opened)."""
        return max(0, self.edit_count - self._clean_edit_count)

    def _stroke_slices(self) -> dict[int, list[int]]:
        """{array axis: slices holding that plane's strokes}, cached per revision."""
        rev, cached = self._slices_cache
        if rev != self.revision:
            cached = {}
            present = np.unique(self.origin)
            for axis in range(3):
                if STROKE[axis] in present:
                    other = tuple(a for a in range(3) if a != axis)
                    cached[axis] = [int(k) for k in np.where((self.origin == STROKE[axis]).any(axis=other))[0]]
                else:
                    cached[axis] = []
            self._slices_cache = (self.revision, cached)
        return cached

    @property
    def has_manual_edits(self) -> bool:
        """Any voxel the user set (a stroke or an interpolation they applied)."""
        return bool(np.isin(self.origin, USER_CODES).any())

    def edited_slices(self, axis: int) -> list[int]:
        """Slices the user stroked in the plane normal to array `axis` (the slices they drew)."""
        return list(self._stroke_slices()[int(axis)])

    def edited_axial_slices(self) -> list[int]:
        return self.edited_slices(self.axial_axis)

    def edited_pairs(self) -> list[tuple[int, int]]:
        """Every drawn slice as (array axis, slice)."""
        return sorted((a, k) for a, ks in self._stroke_slices().items() for k in ks)

    def count_origin(self, *codes: int) -> int:
        return int(np.isin(self.origin, codes).sum())

    @property
    def baseline(self) -> np.ndarray:
        """The labels as they were opened (a file, zeros, or what a recovery said they were)."""
        return self._baseline

    def last_step(self) -> EditAtom | None:
        return self._undo[-1] if self._undo else None

    def reference(self) -> np.ndarray:
        """The network's prediction where it ran, else the labels as they were opened."""
        return self._baseline if self.predicted is None else self.predicted

    def corrected_mask(self) -> np.ndarray:
        """Voxels the user corrected: set by their strokes or by an interpolation they applied.
        Not clean-ups, previews, or voxels that merely differ from the last prediction."""
        return np.isin(self.origin, USER_CODES)

    def slice_view(self, plane: str | int, index: int) -> np.ndarray:
        return np.take(self.labels, index, axis=_axis(plane))

    # ------------------------------------------------------------------ the one write path
    def _apply(self, atom: EditAtom, forward: bool) -> None:
        region = self.labels[atom.box]
        region[atom.mask] = atom.new if forward else atom.old
        self.origin[atom.box][atom.mask] = atom.origin_new if forward else atom.origin_old
        if atom.kind == "prediction":
            if forward and not atom.had_predicted:
                self.predicted = self._baseline.copy()
            if atom.pred_box is not None:
                self.predicted[atom.pred_box][atom.pred_mask] = atom.pred_new if forward else atom.pred_old
            if not forward and not atom.had_predicted:
                self.predicted = None
        if atom.user:
            self.edit_count += 1 if forward else -1
        self.revision += 1
        for fn in list(self.listeners):
            fn(atom.box)

    def _push(self, atom: EditAtom) -> None:
        self._undo.append(atom)
        self._redo.clear()
        # the newest step is never evicted, however large: the user was promised its undo
        while len(self._undo) > 1 and (len(self._undo) > self.max_steps or self.history_bytes > self.max_bytes):
            dropped = self._undo.pop(0)
            log.debug("history cap: dropped a %s step of %d bytes", dropped.kind, dropped.nbytes)

    def _commit(self, kind: str, box3: Box, mask: np.ndarray, value: int, user: bool = True,
                plane: tuple[int, int] | None = None, code: int | None = None) -> EditAtom | None:
        """Write `value` (origin `code`, default: a stroke in `plane`) at mask inside box3 as one
        undo step (only voxels that change)."""
        code = STROKE[plane[0]] if code is None else int(code)
        region = self.labels[box3]
        old = region[mask].copy()
        changed = old != value
        if not changed.any():
            return None
        full = np.zeros(mask.shape, dtype=bool)
        full[mask] = changed
        sub = box_of(full)
        mask = full[sub]
        box3 = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box3, sub))
        old = self.labels[box3][mask].copy()
        atom = EditAtom(kind, box3, mask, old, np.full(old.shape, value, np.uint8),
                        self.origin[box3][mask].copy(), np.full(old.shape, code, np.uint8),
                        user=user, slices=(plane,) if plane else ())
        self._apply(atom, True)
        self._push(atom)
        return atom

    # ------------------------------------------------------------------ brush strokes
    def begin_stroke(self, plane: str | int, index: int, value: int, kind: str = "stroke",
                     allowed: np.ndarray | None = None) -> None:
        """Start a stroke on one slice. `allowed` (bool, the slice's shape) limits what it may
        change, e.g. to voxels whose intensity is in a range (Slicer's threshold-masked painting)."""
        axis = _axis(plane)
        sl = np.take(self.labels, index, axis=axis)
        if allowed is not None and allowed.shape != sl.shape:
            raise ValueError(f"allowed mask {allowed.shape} != slice {sl.shape}")
        self._stroke = _Stroke(axis, int(index), sl.copy(), np.zeros(sl.shape, dtype=bool), int(value), kind,
                               allowed=allowed)

    def stroke_to(self, point: tuple[float, float], radius: float, protect: int | None = None) -> Box | None:
        """Paint from the stroke's last point to `point` (slice coordinates). Writes at once so the
        view can show it; the whole stroke becomes one undo step at end_stroke()."""
        st = self._stroke
        if st is None:
            raise RuntimeError("stroke_to() outside a stroke")
        p0 = st.last if st.last is not None else point
        st.last = point
        hit = capsule_mask(st.before.shape, p0, point, radius)
        if hit is None:
            return None
        (bi, bj), m = hit
        current = self._slice_ref(st.axis, st.index)[bi, bj]
        if protect is not None:
            m = m & (st.before[bi, bj] == protect)
        if st.allowed is not None:
            m = m & st.allowed[bi, bj]
        m = m & (current != st.value)
        if not m.any():
            return None
        current[m] = st.value
        st.touched[bi, bj] |= m
        box = self._box3(st.axis, st.index, bi, bj)
        self.revision += 1
        for fn in list(self.listeners):
            fn(box)
        return box

    def end_stroke(self) -> EditAtom | None:
        """Close the stroke: one undo step if anything changed, else none."""
        st, self._stroke = self._stroke, None
        if st is None or not st.touched.any():
            return None
        bi, bj = box_of(st.touched)
        mask2 = st.touched[bi, bj]
        old = st.before[bi, bj][mask2]
        box3 = self._box3(st.axis, st.index, bi, bj)
        mask3 = np.expand_dims(mask2, st.axis)
        new = np.full(old.shape, st.value, dtype=np.uint8)
        org = self.origin[box3][mask3]
        atom = EditAtom(st.kind, box3, mask3, old.copy(), new, org.copy(), np.full(org.shape, STROKE[st.axis], np.uint8),
                        user=True, slices=((st.axis, st.index),))
        # The labels were already written during the stroke: record without writing them again
        # (like a QUndoCommand whose first redo() is skipped); the origin is written now.
        self.origin[box3][mask3] = atom.origin_new
        self.edit_count += 1
        self.revision += 1
        self._push(atom)
        return atom

    @property
    def in_stroke(self) -> bool:
        return self._stroke is not None

    def cancel_stroke(self) -> None:
        """Abandon a stroke, restoring what it painted."""
        st, self._stroke = self._stroke, None
        if st is None or not st.touched.any():
            return
        ref = self._slice_ref(st.axis, st.index)
        ref[st.touched] = st.before[st.touched]
        bi, bj = box_of(st.touched)
        self.revision += 1
        for fn in list(self.listeners):
            fn(self._box3(st.axis, st.index, bi, bj))

    def paint(self, plane: str | int, index: int, points: list[tuple[float, float]], radius: float, value: int,
              protect: int | None = None, allowed: np.ndarray | None = None) -> EditAtom | None:
        """A whole stroke in one call (used by the CLI, tests and scripts)."""
        self.begin_stroke(plane, index, value, "erase" if value == 0 else "stroke", allowed=allowed)
        for p in points:
            self.stroke_to(p, radius, protect)
        return self.end_stroke()

    # ------------------------------------------------------------------ fill
    def fill(self, plane: str | int, index: int, seed: tuple[int, int], value: int,
             protect: int | None = None, allowed: np.ndarray | None = None) -> EditAtom | None:
        """Flood fill (4-connected) on one slice from `seed`, replacing the seed's class region.
        With `protect` set, only a region of that class is filled; with `allowed` (bool, the
        slice's shape), the region grows only through allowed pixels (an intensity range)."""
        axis = _axis(plane)
        sl = np.take(self.labels, index, axis=axis)
        i, j = int(seed[0]), int(seed[1])
        if not (0 <= i < sl.shape[0] and 0 <= j < sl.shape[1]):
            return None
        target = sl[i, j]
        if target == value or (protect is not None and target != protect):
            return None
        if allowed is not None and not allowed[i, j]:
            return None
        regions, _ = ndi.label((sl == target) if allowed is None else (sl == target) & allowed)
        region = regions == regions[i, j]
        bi, bj = box_of(region)
        box3 = self._box3(axis, index, bi, bj)
        return self._commit("fill", box3, np.expand_dims(region[bi, bj], axis), value, plane=(axis, int(index)))

    # ------------------------------------------------------------------ whole-map operations
    def apply_volume(self, new: np.ndarray, kind: str, user: bool = True,
                     code: int | None = None, limit: np.ndarray | None = None) -> EditAtom | None:
        """Install the result of a label operation (engine/labels/ops.py: fill between slices,
        islands, smoothing) as one undo step holding only the voxels it changed; None when it
        changed nothing. The changed voxels get origin `code` (default: INTERPOLATED for a user
        operation, CLEANUP otherwise). `limit` (bool) confines the change to those voxels."""
        new = np.asarray(new, dtype=np.uint8)
        if new.shape != self.labels.shape:
            raise ValueError(f"result shape {new.shape} != label map {self.labels.shape}")
        d = self.labels != new
        if limit is not None:
            d &= limit
        box3 = box_of(d)
        if box3 is None:
            return None
        mask = d[box3]
        code = (INTERPOLATED if user else CLEANUP) if code is None else int(code)
        org = self.origin[box3][mask]
        atom = EditAtom(kind, box3, mask, self.labels[box3][mask].copy(), new[box3][mask].copy(), org.copy(),
                        np.full(org.shape, code, np.uint8), user=user)
        self._apply(atom, True)
        self._push(atom)
        return atom

    # ------------------------------------------------------------------ previews
    def show_preview(self, new: np.ndarray, kind: str, limit: np.ndarray | None = None) -> EditAtom | None:
        """Show an operation's result (origin PREVIEW) until `apply_preview()` keeps it or
        `cancel_preview()` takes it back. `committed()` - what autosave writes - never holds it."""
        self.cancel_preview()
        atom = self.apply_volume(new, kind, user=False, code=PREVIEW, limit=limit)
        self._preview = atom
        return atom

    @property
    def preview(self) -> EditAtom | None:
        return self._preview

    def apply_preview(self, code: int = INTERPOLATED) -> EditAtom | None:
        """Keep the shown preview as the user's own step (one undo step, origin `code`)."""
        atom, self._preview = self._preview, None
        if atom is None:
            return None
        atom.origin_new = np.array(code, np.uint8)
        atom.user = code in USER_CODES
        self.origin[atom.box][atom.mask] = atom.origin_new
        if atom.user:
            self.edit_count += 1
        self.revision += 1
        for fn in list(self.listeners):
            fn(atom.box)
        return atom

    def cancel_preview(self) -> None:
        """Take the shown preview back, leaving no undo or redo step."""
        atom, self._preview = self._preview, None
        if atom is not None and self._undo and self._undo[-1] is atom:
            self._undo.pop()
            self._apply(atom, False)

    def committed(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, origin) as copies, without a shown preview: what autosave and recovery write."""
        labels, origin = self.labels.copy(), self.origin.copy()
        atom = self._preview
        if atom is not None:
            labels[atom.box][atom.mask] = atom.old
            origin[atom.box][atom.mask] = atom.origin_old
        return labels, origin

    # ------------------------------------------------------------------ predictions
    def set_prediction(self, prediction: np.ndarray, slices: list[int] | None = None,
                       keep: np.ndarray | None = None) -> EditAtom | None:
        """Install a network prediction (whole volume, or only the given axial slices, along
        `axial_axis`) as one undoable step; it is remembered as `predicted`.

        `keep` (bool, the volume's shape) marks voxels whose labels stay as they are: the user's
        corrections (`corrected_mask()`), which a prediction never overwrites unless the caller
        chose to replace them (MONAI Label #780). Every other voxel it covers - clean-ups included -
        takes the prediction, and its origin becomes NETWORK (`replaced_cleanup` counts the clean-up
        voxels it replaced, for the landing message)."""
        pred = np.asarray(prediction, dtype=np.uint8)
        if pred.shape != self.labels.shape:
            raise ValueError(f"prediction shape {pred.shape} != label map {self.labels.shape}")
        if keep is not None and keep.shape != self.labels.shape:
            raise ValueError(f"keep mask {keep.shape} != label map {self.labels.shape}")
        self.cancel_preview()
        ax = self.axial_axis
        # the region the prediction covers: the slab between the first and last slice (a
        # one-slice click on a 12 M voxel scan compares 1 slice, not the volume), or everything
        if slices is None:
            lo, hi = 0, self.shape[ax]
            cover = np.ones(self.shape[ax], bool)
        else:
            lo, hi = min(slices), max(slices) + 1
            cover = np.zeros(hi - lo, bool)
            cover[[int(k) - lo for k in slices]] = True
        slab = tuple(slice(lo, hi) if a == ax else slice(None) for a in range(3))
        cover = cover.reshape(tuple(-1 if a == ax else 1 for a in range(3)))
        cur = self.labels[slab]
        org_cur = self.origin[slab]
        ref_old = self.reference()[slab]
        new_pred = np.where(cover, pred[slab], ref_old)
        take = np.broadcast_to(cover, cur.shape).copy()
        if keep is not None:
            take &= ~keep[slab]
        tgt = np.where(take, new_pred, cur)
        org_tgt = np.where(take, np.uint8(NETWORK), org_cur)

        def local(box):  # a box inside the slab -> a box in the volume
            return tuple(slice(b.start + lo, b.stop + lo) if a == ax else b for a, b in enumerate(box))

        d = (cur != tgt) | (org_cur != org_tgt)
        sub = box_of(d)
        pd = ref_old != new_pred
        psub = box_of(pd)
        if sub is None and psub is None:
            return None
        pred_box = pred_mask = pred_old = pred_new = None
        if psub is not None:
            pred_box, pred_mask = local(psub), pd[psub]
            pred_old = ref_old[psub][pred_mask].copy()
            pred_new = new_pred[psub][pred_mask].copy()
        if sub is None:  # labels and origin unchanged: an empty labels part
            box3 = tuple(slice(lo, lo + 1) if a == ax else slice(0, 1) for a in range(3))
            mask = np.zeros((1, 1, 1), bool)
            old = new = o_old = o_new = np.zeros(0, np.uint8)
        else:
            box3, mask = local(sub), d[sub]
            old, new = cur[sub][mask].copy(), tgt[sub][mask].copy()
            o_old, o_new = org_cur[sub][mask].copy(), org_tgt[sub][mask].copy()
        atom = EditAtom("prediction", box3, mask, old, new, o_old, o_new, user=False, pred_box=pred_box,
                        pred_mask=pred_mask, pred_old=pred_old, pred_new=pred_new,
                        had_predicted=self.predicted is not None,
                        replaced_cleanup=int(((o_old == CLEANUP) & (o_new == NETWORK)).sum()))
        self._apply(atom, True)
        self._push(atom)
        return atom

    # ------------------------------------------------------------------ undo / redo
    def undo(self) -> EditAtom | None:
        if self._stroke is not None:
            self.end_stroke()
        if self._preview is not None:  # undo while a preview shows takes the preview back
            atom = self._preview
            self.cancel_preview()
            return atom
        if not self._undo:
            return None
        atom = self._undo.pop()
        self._apply(atom, False)
        self._redo.append(atom)
        return atom

    def drop_redo(self) -> None:
        """Forget the redo steps (a previewed operation that was cancelled leaves none)."""
        self._redo.clear()

    def redo(self) -> EditAtom | None:
        if not self._redo or self._preview is not None:
            return None
        atom = self._redo.pop()
        self._apply(atom, True)
        self._undo.append(atom)
        return atom

    # ------------------------------------------------------------------ helpers
    def _slice_ref(self, axis: int, index: int) -> np.ndarray:
        idx = [slice(None)] * 3
        idx[axis] = index
        return self.labels[tuple(idx)]

    @staticmethod
    def _box3(axis: int, index: int, bi: slice, bj: slice) -> Box:
        it = iter((bi, bj))
        return tuple(slice(index, index + 1) if a == axis else next(it) for a in range(3))  # type: ignore[return-value]

    def restore(self, labels: np.ndarray, edited_slices: list[int], edit_count: int,
                predicted: np.ndarray | None = None, edited_pairs: list | None = None,
                baseline: np.ndarray | None = None, origin: np.ndarray | None = None) -> None:
        """Load recovered labels (after a crash) as a new baseline: the recovered map with its
        provenance, and no undo step that one Ctrl+Z would use to wipe every restored edit (the
        recovery file holds a snapshot, not the strokes). It is unsaved.

        Files from before provenance (no `origin`) are read as the old rule did: voxels that differ
        from the prediction (or the labels as opened) are strokes in the plane of the first slice
        recorded for them (`edited_pairs`, else the axial plane); the rest is the network's where it
        ran, else as opened."""
        new = np.asarray(labels, dtype=np.uint8)
        if new.shape != self.labels.shape:
            raise ValueError(f"recovered labels {new.shape} != label map {self.labels.shape}")
        self.cancel_preview()
        if predicted is not None:
            self.predicted = np.asarray(predicted, dtype=np.uint8).copy()
        if baseline is not None and np.shape(baseline) == self.labels.shape:
            self._baseline = np.asarray(baseline, dtype=np.uint8).copy()
            self.opened_empty = not self._baseline.any()
        if origin is not None and np.shape(origin) == new.shape:
            self.origin[...] = origin
        else:
            self.origin[...] = OPENED if self.predicted is None else NETWORK
            differs = new != self.reference()
            pairs = [(int(a), int(k)) for a, k in edited_pairs] if edited_pairs is not None else \
                [(self.axial_axis, int(k)) for k in edited_slices]
            claimed = np.zeros(new.shape, bool)
            for a, k in pairs:
                idx = tuple(k if b == a else slice(None) for b in range(3))
                here = differs[idx] & ~claimed[idx]
                self.origin[idx][here] = STROKE[a]
                claimed[idx] |= here
            self.origin[differs & ~claimed] = STROKE[self.axial_axis]
        self.labels[...] = new
        self._undo.clear()
        self._redo.clear()
        self._stroke = None
        self.edit_count = int(edit_count)
        self.revision += 1
        full = tuple(slice(0, n) for n in self.labels.shape)
        for fn in list(self.listeners):
            fn(full)
