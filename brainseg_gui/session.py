"""The GUI's side of the open document: Qt signals, the autosave timer and its worker thread, and
what a running job may write into it. The document itself - the scan and what opening it found,
the label map with provenance and history, the merge rule, saving and the recovery snapshot - is
`engine.document.ScanDocument`, shared with the command line and batch (issue #19); this class
adds only what needs Qt, and is tested alone (tests/gui/test_session.py); the window, its views
and the segmentation controller subscribe to its signals.

Rules it keeps (issue #12), on top of the document's:
- **Jobs never discard edits.** A prediction arriving in the middle of a brush stroke or while a
  preview shows waits until they end, so the stroke's undo step never mixes values from before and
  after the prediction. Label maps cannot be opened while a prediction is on its way
  (`labels_job_running`).
- **Autosave you can see.** `autosaveChanged(state, text)` reports saving / saved / failed; a
  snapshot is counted as saved only after its write succeeded, and a failed one is retried with
  back-off (2, 5, 15, 30, 60 s), the message saying why and when. A preview is never written.
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

from engine.document import LabelsError, ScanDocument, open_scan
from engine.io import recovery
from engine.io.volume import Volume, VolumeWriteError
from engine.labels.labelmap import LabelMap

log = logging.getLogger(__name__)

AUTOSAVE_IDLE_MS = 3000
RETRY_MS = (2000, 5000, 15000, 30000, 60000)


__all__ = ["LabelsError", "OpenReport", "PredictionTicket", "Session"]


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
        self.doc: ScanDocument | None = None
        self.pending: PredictionTicket | None = None  # a prediction job that will write labels
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
        doc = open_scan(path, series=series)
        self.close_scan()
        self.doc = doc
        vol = doc.scan
        notices = [(title, f"{vol.path}:\n{f.text}") for f in doc.facts(check_skull=False).facts
                   for kind, title in (("layout", "Layout assumed"), ("contradiction", "Orientation check"))
                   if f.kind == kind]
        info = doc.find_recovery()
        self.scanChanged.emit()
        self.changed.emit()
        return OpenReport(vol, doc.summary(), notices, info)

    # the document's state, as the window and the controllers read it
    @property
    def scan(self) -> Volume | None:
        return None if self.doc is None else self.doc.scan

    @property
    def scan_key(self) -> str | None:
        return None if self.doc is None else self.doc.key

    @property
    def labelmap(self) -> LabelMap | None:
        return None if self.doc is None else self.doc.labelmap

    @property
    def labels_path(self) -> Path | None:
        return None if self.doc is None else self.doc.labels_path

    @property
    def axial_axis(self) -> int:
        return 2 if self.doc is None else self.doc.axial_axis

    @property
    def plane_axes(self) -> dict[str, int]:
        return {"sagittal": 0, "coronal": 1, "axial": 2} if self.doc is None else self.doc.plane_axes

    @property
    def brain_mask(self) -> np.ndarray | None:
        return None if self.doc is None else self.doc.brain_mask

    @property
    def brain_mask_note(self) -> str:
        return "" if self.doc is None else self.doc.brain_mask_note

    @property
    def brain_mask_in_labels(self) -> bool:
        return False if self.doc is None else self.doc.brain_mask_in_labels

    def close_scan(self) -> None:
        """Forget the scan, its labels and its recovery file (the caller asked about unsaved edits)."""
        self.pending = None
        self._deferred = None
        self.preview_active = False
        if self.scan is not None:
            self.discard_recovery()
        self.set_labelmap(None)
        self.set_brain_mask(None)
        had = self.scan is not None
        self.doc = None
        self._set_autosave("idle", "")
        if had:
            self.scanChanged.emit()

    # ================================================================== brain mask
    def set_brain_mask(self, mask: np.ndarray | None, note: str = "", in_labels: bool = False) -> None:
        if self.doc is not None:
            self.doc.brain_mask = None if mask is None else np.asarray(mask, bool)
            self.doc.brain_mask_note = note if mask is not None else ""
            self.doc.brain_mask_in_labels = bool(in_labels and mask is not None)
        self.brainMaskChanged.emit()

    def current_brain_mask(self) -> np.ndarray | None:
        return None if self.doc is None else self.doc.current_brain_mask()

    def save_brain_mask(self, path: str | os.PathLike) -> list[Path]:
        if self.doc is None:
            raise ValueError("no brain mask: Segment > Extract brain first")
        return self.doc.save_brain_mask(path)

    # ================================================================== labels
    @property
    def labels_job_running(self) -> bool:
        return self.pending is not None or self._deferred is not None

    def open_labels(self, path: str | os.PathLike) -> str:
        """Open a label map for the scan; returns a warning ('' if none). Raises LabelsError."""
        if self.doc is None:
            raise LabelsError("Open a scan first.")
        if self.labels_job_running:
            raise LabelsError(f"{path}: a segmentation is running and will write the labels; "
                              "cancel it or wait for it before opening a label map.")
        lm, warning = self.doc.read_labels(path)  # read first: a bad file changes nothing
        self.discard_recovery()
        self.doc.labels_path = Path(path)
        self.set_labelmap(lm)
        self.changed.emit()
        return warning

    def set_labelmap(self, lm: LabelMap | None) -> None:
        if self.doc is not None:
            self.doc.labelmap = lm
        self._generation += 1  # an autosave result still on its way belongs to the old map
        self._autosaved_revision = -1
        if lm is not None:
            lm.listeners.append(self._on_labels_changed)
        self.labelmapChanged.emit()
        self.changed.emit()

    def ensure_labelmap(self) -> LabelMap:
        if self.labelmap is None:
            if self.doc is None:
                raise RuntimeError("no scan is open")
            self.set_labelmap(LabelMap(np.zeros(self.scan.shape, dtype=np.uint8), axial_axis=self.axial_axis))
        return self.labelmap

    @property
    def dirty(self) -> bool:
        return self.labelmap is not None and not self.labelmap.is_clean

    def edit_summary(self) -> str:
        return "" if self.doc is None else self.doc.edit_summary()

    def _on_labels_changed(self, _box) -> None:
        if self.retry_timer.isActive():
            return  # backing off after a failed write: edits do not hurry the retry
        self.autosave_timer.start()

    # ================================================================== predictions
    def corrections_on(self, slices: list[int] | None) -> dict[str, list[int]]:
        return {} if self.doc is None else self.doc.corrections_on(slices)

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
        self.ensure_labelmap()
        atom = self.doc.land_prediction(labels, ticket.slices, ticket.replace, ticket.start_labels)
        self.predictionLanded.emit(ticket, atom)
        self.changed.emit()

    # ================================================================== saving
    def default_labels_path(self) -> Path:
        return self.doc.default_labels_path()

    def check_save_target(self, path: str | os.PathLike) -> None:
        """Refuse a target that is the scan itself (or a half of its Analyze pair)."""
        if self.doc is not None:
            self.doc.check_save_target(path)

    def save_labels_to(self, path: str | os.PathLike) -> None:
        """Write the labels (raises VolumeWriteError / OSError; then nothing is marked saved)."""
        if self.labelmap is None or self.doc is None:
            raise VolumeWriteError("there are no labels to save")
        self._stop_autosave()
        self.doc.save_labels(path)
        self._set_autosave("idle", f"Saved {Path(path).name}")
        self.changed.emit()

    # ================================================================== recovery
    def restore_recovery(self, info: recovery.RecoveryInfo) -> None:
        self.ensure_labelmap()
        self.doc.restore_recovery(info)
        self.changed.emit()

    def _stop_autosave(self) -> None:
        """Stop the timers and wait for a snapshot still being written."""
        self.autosave_timer.stop()
        self.retry_timer.stop()
        if self._autosave_thread is not None:
            self._autosave_thread.join(10)

    def discard_recovery(self) -> None:
        """Drop the recovery file, after any autosave still writing it has finished."""
        self._stop_autosave()
        if self.doc is not None:
            self.doc.discard_recovery()

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
        snap = self.doc.snapshot()  # copies of the committed state: never a preview (issue #19)
        rev = lm.revision
        done, gen = self._autosaveDone, self._generation

        def work():
            try:
                p = ScanDocument.write_snapshot(snap)
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
