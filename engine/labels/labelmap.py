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
"original" vs "final"). Corrections are counted per plane, on the slice they were made in: a
brush stroke on coronal slice 105 is one corrected coronal slice, not a corrected line in each of
the twenty axial slices it crosses. `edited_slices(axis)` lists the slices corrected in one plane;
`edited_axial_slices()` those of the axial plane, which is what fine-tuning learns from.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
Box = tuple[slice, slice, slice]


def _axis(plane: str | int) -> int:
    """Array axis of a plane: an int is taken as the axis itself, a name as the OASIS layout's."""
    return plane if isinstance(plane, int) else PLANE_AXIS[plane]


@dataclass
class EditAtom:
    kind: str  # stroke | erase | fill | prediction | restore
    box: Box
    mask: np.ndarray  # bool, shape of the box
    old: np.ndarray  # values at mask before
    new: np.ndarray  # values at mask after
    user: bool = True  # a manual correction (counts towards edited slices)
    slices: tuple[tuple[int, int], ...] = ()  # (array axis, slice) corrected in that plane
    # prediction steps change the network's map too, stored as compactly as the labels (changed
    # voxels only, not two whole maps): box, mask and old/new values of `predicted`
    pred_box: Box | None = None
    pred_mask: np.ndarray | None = None
    pred_old: np.ndarray | None = None
    pred_new: np.ndarray | None = None
    had_predicted: bool = False
    # the record of user edits before/after a step that rewrites it (prediction, restore)
    edits_before: tuple | None = None
    edits_after: tuple | None = None

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.pred_mask, self.pred_old, self.pred_new) if a is not None)
        return int(self.mask.nbytes + self.old.nbytes + self.new.nbytes + extra)

    @property
    def voxels(self) -> int:
        return int(self.old.size)


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
    """A uint8 label volume with history. Not thread-safe: the GUI thread owns it."""

    def __init__(self, labels: np.ndarray, max_steps: int = 200, max_bytes: int = 256 * 2**20,
                 predicted: np.ndarray | None = None, axial_axis: int = 2):
        self.labels = np.ascontiguousarray(labels, dtype=np.uint8)
        # the array axis normal to anatomically axial slices (2 for OASIS/LAS; engine/io/conform.py
        # Conform.native_axis("axial") for any other storage order): edited slices, partial
        # predictions and fine-tuning count slices along it
        self.axial_axis = int(axial_axis)
        self.predicted = None if predicted is None else np.ascontiguousarray(predicted, dtype=np.uint8)
        # the labels as they were opened (a file, zeros, a recovery): where the network has not
        # run, corrections are measured against this
        self._baseline = self.labels.copy()
        self.opened_empty = not self._baseline.any()  # nothing labelled when opened (once, not per redraw)
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._undo: list[EditAtom] = []
        self._redo: list[EditAtom] = []
        self._stroke: _Stroke | None = None
        self._edited = Counter()  # (array axis, slice) -> applied user edits made in that slice
        self.revision = 0  # increases with every applied change (also undo/redo)
        self._clean_revision = 0
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

    @property
    def has_manual_edits(self) -> bool:
        return bool(+self._edited)

    def edited_slices(self, axis: int) -> list[int]:
        """Slices corrected in the plane normal to array `axis`."""
        return sorted(k for (a, k), n in self._edited.items() if n > 0 and a == axis)

    def edited_axial_slices(self) -> list[int]:
        return self.edited_slices(self.axial_axis)

    def edited_pairs(self) -> list[tuple[int, int]]:
        """Every corrected slice as (array axis, slice)."""
        return sorted(key for key, n in self._edited.items() if n > 0)

    @property
    def baseline(self) -> np.ndarray:
        """The labels as they were opened (a file, zeros, or what a recovery said they were)."""
        return self._baseline

    def last_step(self) -> EditAtom | None:
        return self._undo[-1] if self._undo else None

    def reference(self) -> np.ndarray:
        """What the user's corrections are measured against: the network's prediction where it
        ran, else the labels as they were opened."""
        return self._baseline if self.predicted is None else self.predicted

    def corrected_mask(self) -> np.ndarray:
        """Voxels the user corrected: where the labels now differ from the reference."""
        return self.labels != self.reference()

    def slice_view(self, plane: str | int, index: int) -> np.ndarray:
        return np.take(self.labels, index, axis=_axis(plane))

    # ------------------------------------------------------------------ the one write path
    def _apply(self, atom: EditAtom, forward: bool) -> None:
        region = self.labels[atom.box]
        region[atom.mask] = atom.new if forward else atom.old
        if atom.kind == "prediction":
            if forward and not atom.had_predicted:
                self.predicted = self._baseline.copy()
            if atom.pred_box is not None:
                self.predicted[atom.pred_box][atom.pred_mask] = atom.pred_new if forward else atom.pred_old
            if not forward and not atom.had_predicted:
                self.predicted = None
        snap = atom.edits_after if forward else atom.edits_before
        if snap is not None:
            self._edited, self.edit_count = Counter(snap[0]), snap[1]
        elif atom.user:
            sign = 1 if forward else -1
            for key in atom.slices:
                self._edited[key] += sign
            self.edit_count += sign
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
                plane: tuple[int, int] | None = None) -> EditAtom | None:
        """Write `value` at mask inside box3 as one undo step (only voxels that change)."""
        region = self.labels[box3]
        old = region[mask].copy()
        new = np.full(old.shape, value, dtype=np.uint8)
        changed = old != new
        if not changed.any():
            return None
        if not changed.all():  # keep only voxels that really change
            full = np.zeros(mask.shape, dtype=bool)
            full[mask] = changed
            sub = box_of(full)
            mask = full[sub]
            box3 = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box3, sub))
            new = new[changed]
            old = old[changed]
        atom = EditAtom(kind, box3, mask, old, new.copy(), user=user, slices=(plane,) if plane else ())
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
        atom = EditAtom(st.kind, box3, mask3, old.copy(), new, user=True, slices=((st.axis, st.index),))
        # Already written during the stroke: record without writing again (like a QUndoCommand
        # whose first redo() is skipped), then count it.
        for key in atom.slices:
            self._edited[key] += 1
        self.edit_count += 1
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
    def apply_volume(self, new: np.ndarray, kind: str, user: bool = True, axis: int | None = None) -> EditAtom | None:
        """Install the result of a label operation (engine/labels/ops.py: fill between slices,
        islands, smoothing) as one undo step holding only the voxels it changed; None when it
        changed nothing. The slices it changed along `axis` (default: axial) count as corrected
        in that plane (fill between slices of a coronal run: pass the coronal axis)."""
        new = np.asarray(new, dtype=np.uint8)
        if new.shape != self.labels.shape:
            raise ValueError(f"result shape {new.shape} != label map {self.labels.shape}")
        d = self.labels != new
        box3 = box_of(d)
        if box3 is None:
            return None
        mask = d[box3]
        ax = self.axial_axis if axis is None else int(axis)
        other = tuple(a for a in range(3) if a != ax)
        slices = tuple((ax, int(z) + box3[ax].start) for z in np.where(mask.any(axis=other))[0])
        atom = EditAtom(kind, box3, mask, self.labels[box3][mask].copy(), new[box3][mask].copy(), user=user,
                        slices=slices)
        self._apply(atom, True)
        self._push(atom)
        return atom

    # ------------------------------------------------------------------ predictions
    def set_prediction(self, prediction: np.ndarray, slices: list[int] | None = None,
                       keep: np.ndarray | None = None) -> EditAtom | None:
        """Install a network prediction (whole volume, or only the given axial slices, along
        `axial_axis`) as one undoable step; it is remembered as `predicted`.

        `keep` (bool, the volume's shape) marks voxels whose labels stay as they are: the user's
        corrections, which a prediction never overwrites unless the caller chose to replace them
        (MONAI Label #780). Slices with kept corrections still count as edited."""
        pred = np.asarray(prediction, dtype=np.uint8)
        if pred.shape != self.labels.shape:
            raise ValueError(f"prediction shape {pred.shape} != label map {self.labels.shape}")
        if keep is not None and keep.shape != self.labels.shape:
            raise ValueError(f"keep mask {keep.shape} != label map {self.labels.shape}")
        ax = self.axial_axis
        # the region the prediction covers: the slab between the first and last slice (a
        # one-slice click on a 12 M voxel scan compares 1 slice, not the volume), or everything
        if slices is None:
            lo, hi, part = 0, self.shape[ax], slice(None)
        else:
            lo, hi = min(slices), max(slices) + 1
            part = [int(k) - lo for k in slices]
        slab = tuple(slice(lo, hi) if a == ax else slice(None) for a in range(3))
        sel = tuple(part if a == ax else slice(None) for a in range(3))
        cur = self.labels[slab]
        ref_old = self.reference()[slab]
        new_pred = ref_old.copy()
        new_pred[sel] = pred[slab][sel]
        tgt = cur.copy()
        tgt[sel] = new_pred[sel]
        kept: set[tuple[int, int]] = set()  # (axis, slice) that still hold kept corrections
        if keep is not None:
            k = keep[slab]
            tgt[k] = cur[k]
            real = k & (cur != new_pred)  # kept corrections that differ from the new prediction
            for a in range(3):
                other = tuple(b for b in range(3) if b != a)
                off = lo if a == ax else 0
                kept |= {(a, int(z) + off) for z in np.where(real.any(axis=other))[0]}

        def local(box):  # a box inside the slab -> a box in the volume
            return tuple(slice(b.start + lo, b.stop + lo) if a == ax else b for a, b in enumerate(box))

        d = cur != tgt
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
        if sub is None:  # labels unchanged (all kept or equal): an empty labels part
            box3 = tuple(slice(lo, lo + 1) if a == ax else slice(0, 1) for a in range(3))
            mask = np.zeros((1, 1, 1), bool)
        else:
            box3, mask = local(sub), d[sub]
        touched = None if slices is None else {int(z) for z in slices}

        def superseded(key):  # a whole-volume prediction covers every slice; a partial one its axial slices
            a, z = key
            return touched is None or (a == ax and z in touched)

        # user edits on slices the prediction replaces are superseded (and come back on undo),
        # unless corrections on them were kept
        after = Counter({key: n for key, n in self._edited.items()
                         if n > 0 and (not superseded(key) or key in kept)})
        atom = EditAtom("prediction", box3, mask, self.labels[box3][mask].copy(),
                        tgt[sub][mask].copy() if sub is not None else np.zeros(0, np.uint8),
                        user=False, pred_box=pred_box, pred_mask=pred_mask, pred_old=pred_old, pred_new=pred_new,
                        had_predicted=self.predicted is not None,
                        edits_before=(Counter(self._edited), self.edit_count),
                        edits_after=(after, self.edit_count))
        self._apply(atom, True)
        self._push(atom)
        return atom

    # ------------------------------------------------------------------ undo / redo
    def undo(self) -> EditAtom | None:
        if self._stroke is not None:
            self.end_stroke()
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
        if not self._redo:
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
                baseline: np.ndarray | None = None) -> None:
        """Load recovered labels (after a crash) as a new baseline: the recovered map with its
        record of edited slices, and no undo step that one Ctrl+Z would use to wipe every
        restored edit (the recovery file holds a snapshot, not the strokes). It is unsaved."""
        new = np.asarray(labels, dtype=np.uint8)
        if new.shape != self.labels.shape:
            raise ValueError(f"recovered labels {new.shape} != label map {self.labels.shape}")
        if predicted is not None:
            self.predicted = np.asarray(predicted, dtype=np.uint8).copy()
        if baseline is not None and np.shape(baseline) == self.labels.shape:
            self._baseline = np.asarray(baseline, dtype=np.uint8).copy()
            self.opened_empty = not self._baseline.any()
        self.labels[...] = new
        self._undo.clear()
        self._redo.clear()
        self._stroke = None
        if edited_pairs is not None:
            self._edited = Counter({(int(a), int(k)): 1 for a, k in edited_pairs})
        else:  # recovery files from before per-plane counting: axial slices
            self._edited = Counter({(self.axial_axis, int(k)): 1 for k in edited_slices})
        self.edit_count = int(edit_count)
        self.revision += 1
        full = tuple(slice(0, n) for n in self.labels.shape)
        for fn in list(self.listeners):
            fn(full)
