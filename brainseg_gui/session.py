"""The open document: one scan, its label map and history, where it is saved, autosave and crash
recovery, and what a running job may write into it. No widgets, so it is tested alone
(tests/gui/test_session.py); the window, its views and the segmentation controller subscribe to
its signals.

Rules it keeps (issue #12):
- **Jobs never discard edits.** A prediction is installed through `land_prediction()`, which keeps
  every voxel the user corrected (`LabelMap.corrected_mask()`: their strokes and the
  interpolations they applied, from the provenance record; clean-ups are replaced), unless the user chose to replace
  their corrections when the job was started; even then, corrections made *while* the job ran are
  kept. A prediction that arrives in the middle of a brush stroke waits for the stroke to end, so
  the stroke's undo step never mixes values from before and after the prediction. Label maps
  cannot be opened while a prediction is on its way (`labels_job_running`).
- **Autosave you can see.** `autosaveChanged(state, text)` reports saving / saved / failed; a
  snapshot is counted as saved only after its write succeeded, and a failed one is retried with
  back-off (2, 5, 15, 30, 60 s), the message saying why and when.
- **Nothing overwritten by surprise.** Saving labels onto the scan's own file is refused.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PyQt5 import QtCore

from engine.io import recovery
from engine.io.space import mask_xform_code
from engine.io.volume import Volume, VolumeWriteError, files_of, read_volume, save_labels, scan_stem
from engine.labels.labelmap import LabelMap

log = logging.getLogger(__name__)

AUTOSAVE_IDLE_MS = 3000
RETRY_MS = (2000, 5000, 15000, 30000, 60000)


class LabelsError(Exception):
    """A label map cannot be opened for the open scan; the message names the file and why."""


@dataclass
class OpenReport:
    """What opening a scan found, for the window to show."""

    volume: Volume
    message: str  # one line for the status bar
    notices: list[tuple[str, str]] = field(default_factory=list)  # (title, text) worth a dialog
    recovery: recovery.RecoveryInfo | None = None


@dataclass
class PredictionTicket:
    """A prediction on its way: which scan and slices, and which corrections it may replace."""

    scan: Volume
    slices: list[int] | None
    replace: bool  # the user chose to replace their corrections on the affected slices
    start_labels: np.ndarray | None = None  # labels at submission (replace mode only)
    job_id: int | None = None


class Session(QtCore.QObject):
    scanChanged = QtCore.pyqtSignal()
    labelmapChanged = QtCore.pyqtSignal()
    changed = QtCore.pyqtSignal()  # edits, dirty state, save path
    autosaveChanged = QtCore.pyqtSignal(str, str)  # state (idle|saving|saved|failed), text
    predictionLanded = QtCore.pyqtSignal(object, object)  # ticket, EditAtom or None
    brainMaskChanged = QtCore.pyqtSignal()  # the intracranial mask (brain extraction) changed
    _autosaveDone = QtCore.pyqtSignal(int, int, str, str)  # label map generation, revision, path, error

    def __init__(self, parent=None, autosave_idle_ms: int = AUTOSAVE_IDLE_MS):
        super().__init__(parent)
        self.scan: Volume | None = None
        self.scan_key: str | None = None  # the scan's content hash: what its recovery file is keyed by
        self.labelmap: LabelMap | None = None
        self.labels_path: Path | None = None
        self.axial_axis = 2
        self.plane_axes = {"sagittal": 0, "coronal": 1, "axial": 2}
        self.pending: PredictionTicket | None = None  # a prediction job that will write labels
        # brain extraction (engine/infer/strip.py): the intracranial mask on the scan's grid, what
        # made it, and whether the labels' nonzero voxels now stand for it (after a segmentation
        # inside it: then correcting the labels with the brush corrects the mask too)
        self.brain_mask: np.ndarray | None = None
        self.brain_mask_note = ""
        self.brain_mask_in_labels = False
        self.preview_active = False  # a label operation's preview is shown (label_tools.py)
        self._deferred: tuple[PredictionTicket, np.ndarray] | None = None  # landed mid-stroke
        # autosave
        self.autosave_state, self.autosave_text = "idle", ""
        self.last_autosave: float | None = None
        self._autosave_thread: threading.Thread | None = None
        self._autosaved_revision = -1
        self._generation = 0
        self._failures = 0
        self.autosave_timer = QtCore.QTimer(self)
        self.autosave_timer.setSingleShot(True)
        self.autosave_timer.setInterval(autosave_idle_ms)
        self.autosave_timer.timeout.connect(self.autosave)
        self.retry_timer = QtCore.QTimer(self)  # back-off after a failed write
        self.retry_timer.setSingleShot(True)
        self.retry_timer.timeout.connect(self.autosave)
        self._autosaveDone.connect(self._on_autosave_done)

    # ================================================================== scan
    def open_scan(self, path: str | os.PathLike, series: str | None = None) -> OpenReport:
        """Read and open a scan (raises VolumeReadError naming the file; then nothing changes;
        SeriesChoiceError when a DICOM folder holds several series and `series` is not given).
        Whatever was open is closed: the caller asked about unsaved edits first."""
        from engine.infer.qc import skull_present
        from engine.io.conform import Conform

        vol = read_volume(path, kind="image", series=series)
        self.close_scan()
        self.scan = vol
        self.scan_key = recovery.scan_key(vol.data, vol.affine)
        geo = Conform.for_grid(vol.shape, vol.affine)
        self.axial_axis = geo.native_axis("axial")
        self.plane_axes = {p: geo.native_axis(p) for p in ("axial", "coronal", "sagittal")}
        notices = []
        msg = (f"Opened {vol.name}: {'x'.join(map(str, vol.shape))}, voxel "
               f"{' x '.join(f'{s:g}' for s in vol.voxel_size)} mm, {vol.orientation}")
        if vol.layout_note:
            msg += f" - {vol.layout_note}"
            notices.append(("Layout assumed", f"{vol.path}:\n{vol.layout_note}"))
        if vol.geometry_note:
            msg += f" - {vol.geometry_note}"
        if geo.describe():
            msg += f" - for the network: {geo.describe()}"
        for w in vol.warnings:
            msg += f" - {w}"
            notices.append(("Orientation check", f"{vol.path}:\n{w}"))
        if skull_present(vol.data, vol.voxel_volume_ml, vol.affine):
            msg += " - skull on: Segment extracts the brain first (Segment > Extract brain to see it)"
        info = recovery.find_recovery(vol.path, vol.shape, key=self.scan_key) if vol.path is not None else None
        self.scanChanged.emit()
        self.changed.emit()
        return OpenReport(vol, msg, notices, info)

    def close_scan(self) -> None:
        """Forget the scan, its labels and its recovery file (the caller asked about unsaved edits)."""
        self.pending = None
        self._deferred = None
        self.preview_active = False
        if self.scan is not None:
            self.discard_recovery()
        self.set_labelmap(None)
        self.labels_path = None
        self.set_brain_mask(None)
        had = self.scan is not None
        self.scan = None
        self.scan_key = None
        self.axial_axis = 2
        self.plane_axes = {"sagittal": 0, "coronal": 1, "axial": 2}
        self._set_autosave("idle", "")
        if had:
            self.scanChanged.emit()

    # ================================================================== brain mask
    def set_brain_mask(self, mask: np.ndarray | None, note: str = "", in_labels: bool = False) -> None:
        self.brain_mask = None if mask is None else np.asarray(mask, bool)
        self.brain_mask_note = note if mask is not None else ""
        self.brain_mask_in_labels = bool(in_labels and mask is not None)
        self.brainMaskChanged.emit()

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
        if mask is None or self.scan is None:
            raise ValueError("no brain mask: Segment > Extract brain first")
        if self.scan.path is not None and Path(path).resolve() in {p.resolve() for p in files_of(self.scan.path)}:
            raise ValueError(f"{path} is the scan itself: choose another name")
        return save_labels(path, mask.astype(np.uint8), self.scan.affine, xform_code=mask_xform_code(self.scan))

    # ================================================================== labels
    @property
    def labels_job_running(self) -> bool:
        return self.pending is not None or self._deferred is not None

    def open_labels(self, path: str | os.PathLike) -> str:
        """Open a label map for the scan; returns a warning ('' if none). Raises LabelsError."""
        from engine.io.volume import VolumeReadError

        if self.scan is None:
            raise LabelsError("Open a scan first.")
        if self.labels_job_running:
            raise LabelsError(f"{path}: a segmentation is running and will write the labels; "
                              "cancel it or wait for it before opening a label map.")
        try:
            lab = read_volume(path, kind="labels")
        except VolumeReadError as exc:
            raise LabelsError(str(exc)) from exc
        if lab.shape != self.scan.shape:
            raise LabelsError(f"{path}: label map is {'x'.join(map(str, lab.shape))} but the scan is "
                              f"{'x'.join(map(str, self.scan.shape))}")
        self.discard_recovery()
        self.set_labelmap(LabelMap(lab.data, axial_axis=self.axial_axis))
        self.labels_path = Path(path)
        self.changed.emit()
        if not np.allclose(lab.affine, self.scan.affine, atol=1e-3):
            return "Warning: the label map's affine differs from the scan's"
        return ""

    def set_labelmap(self, lm: LabelMap | None) -> None:
        self.labelmap = lm
        self._generation += 1  # an autosave result still on its way belongs to the old map
        self._autosaved_revision = -1
        if lm is not None:
            lm.listeners.append(self._on_labels_changed)
        self.labelmapChanged.emit()
        self.changed.emit()

    def ensure_labelmap(self) -> LabelMap:
        if self.labelmap is None:
            if self.scan is None:
                raise RuntimeError("no scan is open")
            self.set_labelmap(LabelMap(np.zeros(self.scan.shape, dtype=np.uint8), axial_axis=self.axial_axis))
        return self.labelmap

    @property
    def dirty(self) -> bool:
        return self.labelmap is not None and not self.labelmap.is_clean

    def edit_summary(self) -> str:
        lm = self.labelmap
        if lm is None:
            return ""
        n = lm.edit_count
        if n == 0 or not lm.edited_pairs():  # none, or all superseded by a prediction
            return "no corrections"
        parts = []
        for plane in ("axial", "coronal", "sagittal"):  # counted in the plane each correction was made in
            k = len(lm.edited_slices(self.plane_axes[plane]))
            if k:
                parts.append(f"{k} {plane}")
        total = sum(len(lm.edited_slices(a)) for a in range(3))
        where = " + ".join(parts) if parts else "0"
        return f"{n} edit{'s' if n != 1 else ''} on {where} slice{'s' if total != 1 else ''}"

    def _on_labels_changed(self, _box) -> None:
        if self.retry_timer.isActive():
            return  # backing off after a failed write: edits do not hurry the retry
        self.autosave_timer.start()

    # ================================================================== predictions
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
        if slices is not None:
            org = np.take(org, sorted(set(int(k) for k in slices)), axis=self.axial_axis)
        out: dict[str, list[int]] = {}
        for plane in ("axial", "coronal", "sagittal"):
            axis = self.plane_axes[plane]
            hit = org == STROKE[axis]
            if not hit.any():
                continue
            other = tuple(a for a in range(3) if a != axis)
            ks = [int(k) for k in np.where(hit.any(axis=other))[0]]
            if slices is not None and axis == self.axial_axis:
                ks = [sorted(set(int(k) for k in slices))[k] for k in ks]
            out[plane] = ks
        if (org == INTERPOLATED).any():
            out["interpolated"] = []
        return out

    def begin_prediction(self, slices: list[int] | None, replace: bool) -> PredictionTicket:
        """Record that a job will write a prediction into the labels. With `replace`, corrections
        made before now may be overwritten (the user said so); later ones are kept regardless."""
        lm = self.labelmap
        start = lm.labels.copy() if (replace and lm is not None) else None
        self.pending = PredictionTicket(self.scan, None if slices is None else list(slices), replace, start)
        self.changed.emit()
        return self.pending

    def abandon_prediction(self, ticket: PredictionTicket | None = None) -> None:
        """The job failed or was cancelled: nothing will land."""
        if ticket is None or ticket is self.pending:
            self.pending = None
            self.changed.emit()

    def land_prediction(self, ticket: PredictionTicket, labels: np.ndarray) -> str:
        """Install a finished prediction. Returns 'landed', 'deferred' (a stroke is in progress:
        it lands when the stroke ends) or 'stale' (another scan is open now: dropped)."""
        if ticket is not self.pending or ticket.scan is not self.scan or self.scan is None:
            log.info("dropping a prediction: its scan is no longer open or it was superseded")
            if ticket is self.pending:
                self.pending = None
            return "stale"
        lm = self.ensure_labelmap()
        if lm.in_stroke or self.preview_active:
            self._deferred = (ticket, labels)
            return "deferred"
        self.pending = None
        self._install(ticket, labels)
        return "landed"

    def flush_deferred(self) -> None:
        """A prediction that arrived during a brush stroke or a label operation's preview lands
        once neither is in progress (called after strokes, undo/redo and previews end)."""
        if self._deferred is None or self.labelmap is None or self.labelmap.in_stroke or self.preview_active:
            return
        ticket, labels = self._deferred
        self._deferred = None
        if self.pending is ticket:  # a newer job's ticket stays
            self.pending = None
        if ticket.scan is self.scan:
            self._install(ticket, labels)
        self.changed.emit()

    stroke_finished = flush_deferred

    def set_preview(self, on: bool) -> None:
        """A label operation's result is shown as a preview: predictions wait until it ends."""
        self.preview_active = bool(on)
        if not on:
            self.flush_deferred()

    def _install(self, ticket: PredictionTicket, labels: np.ndarray) -> None:
        lm = self.ensure_labelmap()
        keep = lm.corrected_mask()
        if ticket.replace and ticket.start_labels is not None:
            keep &= lm.labels != ticket.start_labels  # only what was corrected while the job ran
        atom = lm.set_prediction(labels, slices=ticket.slices, keep=keep if keep.any() else None)
        self.predictionLanded.emit(ticket, atom)
        self.changed.emit()

    # ================================================================== saving
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
        if self.scan is None or self.scan.path is None:
            return
        if files_of(path) & files_of(self.scan.path):
            raise VolumeWriteError(f"{path}: this is the open scan's own file; saving the labels there "
                                   "would replace the scan. Choose another name.")

    def save_labels_to(self, path: str | os.PathLike) -> None:
        """Write the labels (raises VolumeWriteError / OSError; then nothing is marked saved)."""
        if self.labelmap is None or self.scan is None:
            raise VolumeWriteError("there are no labels to save")
        self.check_save_target(path)
        # the scan's sform/qform code (MNI, Talairach...) goes with the mask: it says which space it is in
        save_labels(path, self.labelmap.labels, self.scan.affine, xform_code=mask_xform_code(self.scan))
        self.labels_path = Path(path)
        self.labelmap.mark_clean()
        self.discard_recovery()
        self._set_autosave("idle", f"Saved {Path(path).name}")
        self.changed.emit()

    # ================================================================== recovery
    def restore_recovery(self, info: recovery.RecoveryInfo) -> None:
        labels, predicted, baseline, origin = recovery.load_recovery(info)
        lm = self.ensure_labelmap()
        lm.restore(labels, info.edited_slices, info.edit_count, predicted, info.edited_pairs, baseline, origin)
        self.changed.emit()

    def discard_recovery(self) -> None:
        """Drop the recovery file, after any autosave still writing it has finished."""
        self.autosave_timer.stop()
        self.retry_timer.stop()
        if self._autosave_thread is not None:
            self._autosave_thread.join(10)
        if self.scan is not None and self.scan.path is not None:
            recovery.discard_recovery(self.scan.path, self.scan_key)

    # ================================================================== autosave
    def _set_autosave(self, state: str, text: str) -> None:
        self.autosave_state, self.autosave_text = state, text
        self.autosaveChanged.emit(state, text)

    def autosave_due(self) -> bool:
        lm = self.labelmap
        return (lm is not None and self.scan is not None and self.scan.path is not None and not lm.is_clean
                and lm.revision != self._autosaved_revision)

    def autosave(self) -> None:
        """Snapshot the labels to the recovery file in a worker thread (copy taken here)."""
        lm = self.labelmap
        if not self.autosave_due():
            return
        if lm.in_stroke:  # after the stroke (its end does not notify listeners)
            self.autosave_timer.start()
            return
        if self._autosave_thread is not None and self._autosave_thread.is_alive():
            self.autosave_timer.start()
            return
        labels, origin = lm.committed()  # never a preview (issue #19: a cancelled preview was restored)
        predicted = None if lm.predicted is None else lm.predicted.copy()
        edited, count, rev, scan_path = lm.edited_axial_slices(), lm.unsaved_edits, lm.revision, self.scan.path
        pairs = lm.edited_pairs()
        baseline = lm.baseline.copy() if lm.predicted is None else None
        done, gen, key = self._autosaveDone, self._generation, self.scan_key

        def work():
            try:
                p = recovery.save_recovery(scan_path, labels, edited, count, predicted, pairs, baseline,
                                           origin=origin, key=key)
            except Exception as exc:  # reported in the GUI thread, retried with back-off
                log.exception("autosave failed")
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                done.emit(gen, rev, "", reason)
            else:
                done.emit(gen, rev, str(p), "")

        self._set_autosave("saving", "Autosaving...")
        self._autosave_thread = threading.Thread(target=work, name="autosave", daemon=True)
        self._autosave_thread.start()

    def _on_autosave_done(self, gen: int, rev: int, path: str, error: str) -> None:
        if self.labelmap is None or gen != self._generation:
            return
        if error:
            self._failures += 1
            delay = RETRY_MS[min(self._failures - 1, len(RETRY_MS) - 1)]
            self._set_autosave("failed", f"Autosave failed: {error}; retrying in {delay / 1000:g} s")
            self.retry_timer.start(delay)
            return
        self._failures = 0
        self._autosaved_revision = rev
        self.last_autosave = time.time()
        self._set_autosave("saved", f"Autosaved {time.strftime('%H:%M:%S', time.localtime(self.last_autosave))}")
        log.debug("autosaved %s", path)
        if self.autosave_due():  # edited while it was writing
            self.autosave_timer.start()

    def safety_summary(self) -> str:
        """One honest sentence on the state of the user's edits, for a crash dialog."""
        lm = self.labelmap
        if lm is None or lm.is_clean:
            return "There are no unsaved edits."
        if self.autosave_state == "failed":
            return f"Your latest edits are NOT autosaved ({self.autosave_text}). Save the labels now (File > Save labels as)."
        if self.last_autosave is None:
            return "Your edits have not been autosaved yet: save the labels now (File > Save labels as)."
        when = time.strftime("%H:%M:%S", time.localtime(self.last_autosave))
        if lm.revision != self._autosaved_revision:
            return f"Your edits were last autosaved at {when}; later edits are not. Save the labels now."
        return f"Your edits were autosaved at {when}."

    def shutdown(self, wait_s: float = 10) -> None:
        self.autosave_timer.stop()
        self.retry_timer.stop()
        if self._autosave_thread is not None:
            self._autosave_thread.join(wait_s)
