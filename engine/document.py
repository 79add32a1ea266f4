"""The open document, without Qt: one scan, what opening it found, its label map with provenance and
history, the merge rule for predictions, saving, and the crash-recovery snapshot.

Modelled on napari's layer/model split and ITK-SNAP's IRIS/GUI split (../shared/STYLE.md): the
GUI's `Session` (brainseg_gui/session.py) wraps a `ScanDocument` and adds only what needs Qt -
signals, the autosave timer and its worker thread; `brainseg info/segment/strip/finetune/
postprocess` and `batch` open scans through `open_scan()` too, so all of them say the same
things about a scan (`ScanFacts`): whether its layout or orientation was assumed or found from
the anatomy, whether the header contradicts the anatomy, what is done to bring it to the network
(reoriented and/or resampled - batch once called a reorientation "resampled"), whether it is in
an atlas's space, and whether its skull is still on.

Rules the document keeps (issues #12, #19):
- **Jobs never discard edits.** `land_prediction()` keeps every voxel the user corrected
  (`LabelMap.corrected_mask()`: their strokes and the interpolations they applied, from the
  provenance record; clean-ups are replaced), unless the user chose to replace their corrections
  when the job started; even then, corrections made while the job ran are kept.
- **Previews never reach disk.** `snapshot()` - what autosave writes - holds the committed state.
- **Recovery belongs to the scan's content** (engine/io/recovery.py format 2).
- **Nothing overwritten by surprise.** Saving labels onto the scan's own file is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.io import recovery
from engine.io.conform import Conform
from engine.io.labeldesc import BRAIN_MASK_CLASSES, read_descriptions, remap_by_names
from engine.io.space import atlas_space_reason, mask_xform_code
from engine.io.volume import Volume, VolumeReadError, VolumeWriteError, files_of, read_volume, save_labels, scan_stem
from engine.labels.labelmap import LabelMap

log = logging.getLogger(__name__)


class LabelsError(Exception):
    """A label map cannot be opened for the open scan; the message names the file and why."""


@dataclass
class Fact:
    """One thing opening a scan found. `level` is note or warning; `flag` is the short form for a
    batch QC column (None: not a QC matter)."""

    kind: str  # layout | orientation | contradiction | network | space | skull
    level: str
    text: str
    flag: str | None = None


@dataclass
class ScanFacts:
    facts: list[Fact] = field(default_factory=list)

    def of(self, kind: str) -> list[Fact]:
        return [f for f in self.facts if f.kind == kind]

    @property
    def flags(self) -> list[str]:
        return [f.flag for f in self.facts if f.flag]

    def lines(self, path) -> list[str]:
        """'note: FILE: ...' / 'warning: FILE: ...' lines for a command's stderr."""
        return [f"{f.level}: {path}: {f.text}" for f in self.facts]


def scan_facts(vol: Volume, geo: Conform, skull: bool | None = None) -> ScanFacts:
    """What is worth saying about a scan as opened (skull: None when not checked)."""
    out = ScanFacts()
    if vol.layout_note:
        out.facts.append(Fact("layout", "warning", vol.layout_note, "layout assumed"))
    if vol.orientation_source == "anatomy":
        out.facts.append(Fact("orientation", "note", vol.geometry_note or "orientation found from the anatomy",
                              "orientation from anatomy"))
    elif vol.geometry_note:
        out.facts.append(Fact("orientation", "note", vol.geometry_note, "orientation assumed"))
    for w in vol.warnings:
        out.facts.append(Fact("contradiction", "warning", w, "header orientation contradicts the anatomy"))
    if geo.describe():
        # a reorientation (axis order and flips, no interpolation) is lossless and what every RAS
        # NIfTI gets: a note, never a QC flag (issue #20: it flagged every BIDS scan red); resampling
        # interpolates, and is flagged
        out.facts.append(Fact("network", "note", geo.describe(), "resampled for the network" if geo.resampled else None))
    reason = atlas_space_reason(vol)
    if reason:
        out.facts.append(Fact("space", "note", f"atlas space ({reason}): volumes are atlas-space mL"))
    if skull:
        out.facts.append(Fact("skull", "note", "skull on: the brain is extracted first"))
    return out


class ScanDocument:
    """One open scan and everything the user made on it. Not thread-safe: one owner (the GUI
    thread, or a command)."""

    def __init__(self, scan: Volume):
        self.scan = scan
        self.geometry = Conform.for_grid(scan.shape, scan.affine)
        self.axial_axis = self.geometry.native_axis("axial")
        self.plane_axes = {p: self.geometry.native_axis(p) for p in ("axial", "coronal", "sagittal")}
        self.labelmap: LabelMap | None = None
        self.labels_path: Path | None = None
        # brain extraction (engine/infer/strip.py): the intracranial mask on the scan's grid, what
        # made it, and whether the labels' nonzero voxels now stand for it (after a segmentation
        # inside it: then correcting the labels with the brush corrects the mask too)
        self.brain_mask: np.ndarray | None = None
        self.brain_mask_note = ""
        self.brain_mask_in_labels = False

    # ------------------------------------------------------------------ the scan
    @cached_property
    def key(self) -> str:
        """The scan's content hash: what its recovery file is keyed by."""
        return recovery.scan_key(self.scan.data, self.scan.affine)

    @cached_property
    def skull_on(self) -> bool:
        from engine.infer.qc import skull_present

        return bool(skull_present(self.scan.data, self.scan.voxel_volume_ml, self.scan.affine))

    def facts(self, check_skull: bool = True) -> ScanFacts:
        return scan_facts(self.scan, self.geometry, self.skull_on if check_skull else None)

    def summary(self) -> str:
        """One line for a status bar: what was opened and what was found."""
        vol = self.scan
        msg = (f"Opened {vol.name}: {'x'.join(map(str, vol.shape))}, voxel "
               f"{' x '.join(f'{s:g}' for s in vol.voxel_size)} mm, {vol.orientation}")
        for f in self.facts().facts:
            if f.kind == "network":
                msg += f" - for the network: {f.text}"
            elif f.kind == "skull":
                msg += " - skull on: Segment extracts the brain first (Segment > Extract brain to see it)"
            else:
                msg += f" - {f.text}"
        return msg

    # ------------------------------------------------------------------ labels
    def read_labels(self, path: str | os.PathLike) -> tuple[LabelMap, str]:
        """A label map file for this scan as a new LabelMap, and a warning ('' if none); nothing in
        the document changes. Raises LabelsError naming the file and the problem."""
        try:
            lab = read_volume(path, kind="labels")
        except VolumeReadError as exc:
            raise LabelsError(str(exc)) from exc
        if lab.shape != self.scan.shape:
            raise LabelsError(f"{path}: label map is {'x'.join(map(str, lab.shape))} but the scan is "
                              f"{'x'.join(map(str, self.scan.shape))}")
        warning = "" if np.allclose(lab.affine, self.scan.affine, atol=1e-3) else \
            "Warning: the label map's affine differs from the scan's"
        data = lab.data
        names = read_descriptions(path)  # ITK-SNAP / FreeSurfer-style names beside it (engine/io/labeldesc.py)
        if names:
            data, note = remap_by_names(data, names)
            if note:
                warning = (warning + "; " if warning else "") + f"{Path(path).name}: {note}"
        return LabelMap(data, axial_axis=self.axial_axis), warning

    def open_labels(self, path: str | os.PathLike) -> str:
        """Open a label map for the scan; returns a warning ('' if none). Raises LabelsError."""
        self.labelmap, warning = self.read_labels(path)
        self.labels_path = Path(path)
        return warning

    def ensure_labelmap(self) -> LabelMap:
        if self.labelmap is None:
            self.labelmap = LabelMap(np.zeros(self.scan.shape, dtype=np.uint8), axial_axis=self.axial_axis)
        return self.labelmap

    def edit_summary(self) -> str:
        lm = self.labelmap
        if lm is None:
            return ""
        n = lm.edit_count
        if n == 0 or not lm.has_manual_edits:  # none, or all superseded by a prediction
            return "no corrections"
        parts = []
        for plane in ("axial", "coronal", "sagittal"):  # counted in the plane each stroke was made in
            k = len(lm.edited_slices(self.plane_axes[plane]))
            if k:
                parts.append(f"{k} {plane}")
        total = sum(len(lm.edited_slices(a)) for a in range(3))
        if not parts:
            return f"{n} edit{'s' if n != 1 else ''} (interpolated)"
        return f"{n} edit{'s' if n != 1 else ''} on {' + '.join(parts)} slice{'s' if total != 1 else ''}"

    # ------------------------------------------------------------------ predictions: the merge rule
    def corrections_on(self, slices: list[int] | None) -> dict[str, list[int]]:
        """{plane: slices} the user drew on (their strokes, from the provenance record) that a
        prediction of `slices` (axial; None: all) would land on, in every plane - a coronal stroke
        crossing the predicted axial slices counts as a coronal slice; plus "interpolated" when
        voxels they interpolated are covered. Empty when there are none."""
        lm = self.labelmap
        if lm is None or not lm.has_manual_edits:
            return {}
        from engine.labels.labelmap import INTERPOLATED, STROKE

        org = lm.origin
        picked = None if slices is None else sorted(set(int(k) for k in slices))
        if picked is not None:
            org = np.take(org, picked, axis=self.axial_axis)
        out: dict[str, list[int]] = {}
        for plane in ("axial", "coronal", "sagittal"):
            axis = self.plane_axes[plane]
            hit = org == STROKE[axis]
            if not hit.any():
                continue
            other = tuple(a for a in range(3) if a != axis)
            ks = [int(k) for k in np.where(hit.any(axis=other))[0]]
            if picked is not None and axis == self.axial_axis:
                ks = [picked[k] for k in ks]
            out[plane] = ks
        if (org == INTERPOLATED).any():
            out["interpolated"] = []
        return out

    def land_prediction(self, labels: np.ndarray, slices: list[int] | None, replace: bool = False,
                        start_labels: np.ndarray | None = None):
        """Install a prediction: the user's corrections stay (unless `replace`: then only those made
        since `start_labels`, the labels when the job started). Returns the undo step or None."""
        lm = self.ensure_labelmap()
        keep = lm.corrected_mask()
        if replace and start_labels is not None:
            keep &= lm.labels != start_labels  # only what was corrected while the job ran
        return lm.set_prediction(labels, slices=slices, keep=keep if keep.any() else None)

    # ------------------------------------------------------------------ brain mask
    def current_brain_mask(self) -> np.ndarray | None:
        """The mask a new segmentation should use: once a segmentation landed inside a mask, the
        labels' nonzero voxels (the user's brush and eraser corrections included); else the mask as
        extracted; None when there is none."""
        if self.brain_mask is None:
            return None
        if self.brain_mask_in_labels and self.labelmap is not None:
            current = self.labelmap.labels > 0
            if current.any():
                return current
        return self.brain_mask

    def save_brain_mask(self, path: str | os.PathLike) -> list[Path]:
        mask = self.current_brain_mask()
        if mask is None:
            raise ValueError("no brain mask: Segment > Extract brain first")
        if self.scan.path is not None and Path(path).resolve() in {p.resolve() for p in files_of(self.scan.path)}:
            raise ValueError(f"{path} is the scan itself: choose another name")
        return save_labels(path, mask.astype(np.uint8), self.scan.affine, xform_code=mask_xform_code(self.scan), classes=BRAIN_MASK_CLASSES)

    # ------------------------------------------------------------------ saving
    def default_labels_path(self) -> Path:
        if self.labels_path is not None:
            return self.labels_path
        p = self.scan.path
        if self.scan.source == "dicom":  # beside the series' folder, never inside it; one name per series
            series = f"_s{self.scan.series_number}" if self.scan.series_number else ""
            return p.parent.with_name(f"{p.parent.name}{series}_brainseg_seg.nii.gz")
        return p.with_name(f"{scan_stem(p)}_brainseg_seg.nii.gz")

    def check_save_target(self, path: str | os.PathLike) -> None:
        """Refuse a target that is the scan itself (or a half of its Analyze pair)."""
        if self.scan.path is None:
            return
        if files_of(path) & files_of(self.scan.path):
            raise VolumeWriteError(f"{path}: this is the open scan's own file; saving the labels there "
                                   "would replace the scan. Choose another name.")

    def save_labels(self, path: str | os.PathLike) -> list[Path]:
        """Write the labels with the scan's affine and sform/qform code (MNI, Talairach... say which
        space the mask is in); marks them saved and drops the recovery snapshot."""
        if self.labelmap is None:
            raise VolumeWriteError("there are no labels to save")
        self.check_save_target(path)
        written = save_labels(path, self.labelmap.labels, self.scan.affine, xform_code=mask_xform_code(self.scan))
        self.labels_path = Path(path)
        self.labelmap.mark_clean()
        self.discard_recovery()
        return written

    # ------------------------------------------------------------------ recovery
    def snapshot(self) -> dict | None:
        """The committed state for the recovery file (copies; never a preview), or None when there
        is nothing unsaved or the scan has no file."""
        lm = self.labelmap
        if lm is None or self.scan.path is None:
            return None
        labels, origin = lm.committed()
        return {"scan_path": self.scan.path, "labels": labels, "origin": origin,
                "predicted": None if lm.predicted is None else lm.predicted.copy(),
                "edited": lm.edited_axial_slices(), "pairs": lm.edited_pairs(), "count": lm.unsaved_edits,
                "baseline": lm.baseline.copy() if lm.predicted is None else None, "key": self.key}

    @staticmethod
    def write_snapshot(snap: dict) -> Path:
        """Write a snapshot (from any thread: it holds copies)."""
        return recovery.save_recovery(snap["scan_path"], snap["labels"], snap["edited"], snap["count"],
                                      snap["predicted"], snap["pairs"], snap["baseline"], origin=snap["origin"],
                                      key=snap["key"])

    def find_recovery(self) -> recovery.RecoveryInfo | None:
        if self.scan.path is None:
            return None
        return recovery.find_recovery(self.scan.path, self.scan.shape, key=self.key)

    def restore_recovery(self, info: recovery.RecoveryInfo) -> None:
        labels, predicted, baseline, origin = recovery.load_recovery(info)
        lm = self.ensure_labelmap()
        lm.restore(labels, info.edited_slices, info.edit_count, predicted, info.edited_pairs, baseline, origin)

    def discard_recovery(self) -> None:
        if self.scan.path is not None:
            recovery.discard_recovery(self.scan.path, self.key)


def open_scan(path: str | os.PathLike, series: str | None = None, atlas_marked: bool = False) -> ScanDocument:
    """Read a scan (raises VolumeReadError naming the file; SeriesChoiceError for a DICOM folder
    with several series and no `series`) and open it as a document."""
    vol = read_volume(path, kind="image", series=series)
    vol.atlas_marked = bool(atlas_marked) or vol.atlas_marked
    return ScanDocument(vol)
