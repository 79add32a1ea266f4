"""Segmentation controller: starts segmentation jobs on the engine thread, follows their progress
and hands finished predictions to the session, which keeps the user's corrections
(`Session.land_prediction`). Owns the model preload and the uncertainty result; no MXNet here.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from PyQt5 import QtCore

from . import dialogs
from .session import PredictionTicket, Session

log = logging.getLogger(__name__)


class SegmentationController(QtCore.QObject):
    finished = QtCore.pyqtSignal(object)  # SegmentResult, after it landed in the labels
    message = QtCore.pyqtSignal(str, int)  # status bar text, milliseconds
    uncertaintyChanged = QtCore.pyqtSignal(object)  # the volume's uncertainty map or None

    stripWarning = QtCore.pyqtSignal(str)  # brain extraction is unsure: why

    def __init__(self, session: Session, engine, panel, model_dir: Callable[[], Path],
                 batch_size: Callable[[], int], dialog_parent=None, strip_mode: Callable[[], str] = lambda: "auto"):
        super().__init__(dialog_parent)
        self.session, self.engine, self.panel = session, engine, panel
        self.model_dir, self.batch_size, self.strip_mode = model_dir, batch_size, strip_mode
        self.extract_job: int | None = None
        self.dialog_parent = dialog_parent
        self.job_id: int | None = None
        self.ticket: PredictionTicket | None = None
        self.uncertainty = None
        self._result = None
        engine.progress.connect(self._on_progress)
        engine.finished_job.connect(self._on_finished)
        engine.failed.connect(self._on_stopped)
        engine.cancelled.connect(self._on_stopped)
        session.scanChanged.connect(self.forget)
        session.predictionLanded.connect(self._on_landed)

    @property
    def running(self) -> bool:
        return self.job_id is not None

    def precision(self) -> str:
        return "int8" if self.panel.int8_check.isChecked() else "fp32"

    # ------------------------------------------------------------------ start
    def start(self, slices: list[int] | None = None) -> int | None:
        """Segment the volume (or the given axial slices). If the prediction would land on slices
        the user corrected, ask: keep the corrections (default), replace them, or cancel."""
        s = self.session
        if s.scan is None or self.running or self.engine.is_busy or s.labels_job_running:
            return None
        replace = False
        affected = s.corrections_on(slices)
        if affected:
            n = sum(len(v) for v in affected.values())
            parts = []
            for plane, ks in affected.items():
                if plane == "interpolated":
                    parts.append("and slices you filled between")
                else:
                    parts.append(f"{plane} " + ", ".join(str(k + 1) for k in ks[:12]) + ("..." if len(ks) > 12 else ""))
            what = (f"{n} slice{'s' if n != 1 else ''}" if n else "slices") + f" ({'; '.join(parts)})"
            answer = dialogs.ask_choice(
                self.dialog_parent, "Your corrections",
                f"You corrected {what} that the new segmentation covers.\n\nKeep my corrections: the network "
                "fills in everything else, every voxel you changed stays (clean-ups such as smoothing are not "
                "corrections: the network replaces them).\nReplace them: the network's labels everywhere (Undo "
                "brings your corrections back).",
                [("keep", "Keep my corrections"), ("replace", "Replace them"), ("cancel", "Cancel")], "keep")
            if answer == "cancel":
                return None
            replace = answer == "replace"
        model_dir = self.model_dir()
        data, affine = s.scan.data, s.scan.affine
        from engine.infer.inference import SegmentConfig

        cfg = SegmentConfig(batch_size=self.batch_size(), slices=slices, uncertainty=True)
        precision = self.precision()
        mask, strip = s.current_brain_mask(), self.strip_mode()

        def job(state, progress, cancel):
            from engine.infer.scan import segment_scan

            seg = state.segmenter(model_dir, precision)
            res, decision, extracted = segment_scan(seg, data, affine, cfg, strip=strip, cancel=cancel,
                                                    progress=lambda d, t: progress((d, t)), mask=mask)
            res.strip_decision, res.extracted = decision, extracted
            return res

        self.ticket = s.begin_prediction(slices, replace)
        self.panel.progress.setVisible(True)
        self.panel.progress.setValue(0)
        self.message.emit(f"Segmenting with {model_dir.name}... (you can keep correcting: your edits are kept)", 0)
        self.job_id = self.engine.submit("segment", job)
        self.ticket.job_id = self.job_id
        return self.job_id

    def preload(self, slice_index: int) -> None:
        """Load the model Segment would use while the user looks at the scan, so the first click
        runs at once (loading takes ~1.6 s)."""
        s = self.session
        if s.scan is None:
            return
        try:
            model_dir = self.model_dir()
        except Exception:  # missing weights: the segment job will say so
            return
        precision = self.precision()
        data, affine, k = s.scan.data, s.scan.affine, slice_index
        from engine.infer.inference import SegmentConfig

        strip = self.strip_mode()

        def warm(state):
            from engine.infer.scan import decide_strip, get_extractor

            if decide_strip(data, affine, strip).run:  # a head: the extractor will be needed first
                get_extractor()
            # segmenting one slice, thrown away, also builds the graph and measures the scan's
            # normalisation: the first "segment this slice" click then takes 80 ms, not 420
            state.segmenter(model_dir, precision).segment(data, SegmentConfig(slices=(k,), uncertainty=True),
                                                          affine=affine)

        self.engine.prefetch("load model", warm)

    def extract_brain(self) -> int | None:
        """Segment > Extract brain: find the intracranial mask (always, whatever the skull check
        says) and show its outline; the next segmentation stays inside it."""
        s = self.session
        if s.scan is None or self.running or self.extract_job is not None:
            return None
        data, affine = s.scan.data, s.scan.affine

        def job(state, progress, cancel):
            from engine.infer.scan import extract

            return extract(data, affine, "on", progress=lambda f: progress((int(f * 100), 100)), cancel=cancel)

        self.panel.progress.setVisible(True)
        self.panel.progress.setValue(0)
        self.message.emit("Extracting the brain...", 0)
        self.extract_job = self.engine.submit("extract brain", job)
        return self.extract_job

    def cancel(self) -> None:
        if self.job_id is not None:
            self.engine.cancel(self.job_id)
        if self.extract_job is not None:
            self.engine.cancel(self.extract_job)

    def forget(self) -> None:
        """A new scan is open: a running segmentation belongs to the old one; cancel and forget it."""
        if self.job_id is not None:
            self.engine.cancel(self.job_id)
        if self.extract_job is not None:
            self.engine.cancel(self.extract_job)
        self.job_id = None
        self.extract_job = None
        self.ticket = None
        self.panel.progress.setVisible(False)
        self.set_uncertainty(None)

    # ------------------------------------------------------------------ engine signals
    def _on_progress(self, job_id: int, name: str, payload) -> None:
        if job_id is not None and job_id in (self.job_id, self.extract_job):
            done, total = payload
            self.panel.progress.setMaximum(max(total, 1))
            self.panel.progress.setValue(done)

    def _on_finished(self, job_id: int, name: str, result) -> None:
        if job_id is not None and job_id == self.extract_job:
            self.extract_job = None
            self.panel.progress.setVisible(False)
            decision, res = result
            self._take_mask(res, in_labels=False)
            return
        if job_id != self.job_id:
            if name == "segment":
                log.info("dropping the result of segmentation job %d: its scan is no longer open", job_id)
            return
        ticket, self.job_id, self.ticket = self.ticket, None, None
        self.panel.progress.setVisible(False)
        self._result = result
        outcome = self.session.land_prediction(ticket, result.labels)
        if outcome == "stale":
            self._result = None
        elif outcome == "deferred":
            self.message.emit("Segmentation finished: it is applied when you release the mouse", 5000)

    def _on_landed(self, ticket, atom) -> None:
        result, self._result = self._result, None
        if result is None:
            return
        what = "slice" if ticket.slices else "volume"
        geo = f" - {result.geometry}" if result.geometry else ""
        lm = self.session.labelmap
        n = len(lm.edited_pairs()) if lm is not None else 0  # slices still holding corrections, any plane
        s = "s" if n != 1 else ""
        if ticket.replace:
            kept = "; your earlier corrections were replaced (Ctrl+Z brings them back)" + (
                f", the {n} slice{s} you corrected while it ran were kept" if n else "")
        else:
            kept = f"; your corrections on {n} slice{s} were kept" if n else ""
        cleaned = getattr(atom, "replaced_cleanup", 0) if atom is not None else 0
        if cleaned:  # clean-ups are not corrections: say that the new prediction replaced them
            kept += (f"; {cleaned:,} voxel{'s' if cleaned != 1 else ''} set by a clean-up (smoothing, islands, "
                     "largest piece) now hold the new prediction - apply the clean-up again from the Labels menu")
        # short enough to stay readable beside the read-out; the planes and geometry go to the log
        log.info("segmented the %s with %s (%s) in %.1f s%s", what, result.model, "+".join(result.planes),
                 result.seconds, geo)
        extracted = getattr(result, "extracted", None)
        if extracted is not None:
            self._take_mask(extracted, in_labels=ticket.slices is None)
            kept += f"; brain extracted first ({extracted.volume_ml:,.0f} mL, magenta outline)"
        elif self.session.brain_mask is not None and ticket.slices is None:
            # segmented inside the mask the user had (extracted, perhaps corrected): the labels now hold it
            self.session.set_brain_mask(self.session.labelmap.labels > 0, self.session.brain_mask_note, in_labels=True)
        self.message.emit(f"Segmented the {what} in {result.seconds:.1f} s{kept}", 15000)
        if ticket.slices is None:
            self.p_wrong = getattr(result, "p_wrong", None)
            self.set_uncertainty(result.uncertainty)
        self.finished.emit(result)

    def _take_mask(self, res, in_labels: bool) -> None:
        note = res.summary()
        self.session.set_brain_mask(res.mask, note, in_labels=in_labels)
        self.message.emit(f"Brain extracted: {res.volume_ml:,.0f} mL intracranial in {res.seconds:.1f} s "
                          "(magenta outline; correct it with the brush and eraser once segmented)", 15000)
        if res.unsure:
            self.stripWarning.emit("; ".join(res.unsure_reasons))

    def _on_stopped(self, job_id: int, name: str, *_):
        if job_id is not None and job_id == self.extract_job:
            self.extract_job = None
            self.panel.progress.setVisible(False)
            return
        if job_id != self.job_id:
            return
        self.session.abandon_prediction(self.ticket)
        self.job_id, self.ticket = None, None
        self.panel.progress.setVisible(False)

    def set_uncertainty(self, unc) -> None:
        self.uncertainty = unc
        if unc is None:
            self.p_wrong = None
        self.uncertaintyChanged.emit(unc)


class ModelChoice(QtCore.QObject):
    """Which network segments: the panel's choice (auto picks by hardware), the reason shown under
    it, whether INT8 is offered, and the active version's folder. Split from the window (#19)."""

    def __init__(self, window):
        super().__init__(window)
        self.win = window

    def model_choice(self) -> tuple[str, str]:
        from engine.core.hardware import choose_model

        pref = self.win.segment_panel.model_combo.currentData() or "auto"
        return choose_model(pref)

    def _choose_model_reason(self) -> None:
        try:
            arch, reason = self.model_choice()
        except Exception as exc:  # hardware probing must never stop the app
            arch, reason = "enet", f"(could not probe the hardware: {exc})"
        name = {"unet": "U-Net", "enet": "ENet"}
        text = f"Will run {name.get(arch, arch)}: {reason}"
        prefs = self.win.prefs
        if (self.win.segment_panel.model_combo.currentData() or "auto") == "auto" and arch in name:
            last = prefs.last_auto_model
            if last in name and last != arch:  # the default changed since this user last saw it: say so once
                text = (f"The default model is now {name[arch]} (it was {name[last]} on this machine). " + text)
                self.win.statusBar().showMessage(f"The default model is now {name[arch]} (was {name[last]}): "
                                                 f"{reason}", 30000)
            if last != arch:
                prefs.last_auto_model = arch
                try:
                    prefs.save()
                except OSError:
                    pass
        note = self._calibration_note()
        if note:
            text = text.rstrip() + ("" if text.rstrip().endswith((".", "!", "?")) else ".") + note
        self.win.segment_panel.reason.setText(text)
        from engine.infer.inference import int8_offer

        try:
            ok, why = int8_offer(self.model_dir())
        except Exception as exc:  # missing weights: the segment job will say so
            ok, why = False, str(exc)
        chk = self.win.segment_panel.int8_check
        if not getattr(self, "_int8_watched", False):  # a user's own click is kept, across restarts too
            chk.clicked.connect(self._on_int8_clicked)
            self._int8_watched = True
        chk.setEnabled(ok)
        if not ok:
            chk.setChecked(False)
        else:  # on by default where offered (engine.infer.inference.default_precision), as the CLI
            chk.setChecked(True if prefs.int8 is None else bool(prefs.int8))
        chk.setToolTip(why + (" - on by default; untick for FP32" if ok else ""))

    def _on_int8_clicked(self, on: bool) -> None:
        self.win.prefs.int8 = bool(on)
        try:
            self.win.prefs.save()
        except OSError:
            pass

    def _calibration_note(self) -> str:
        """One sentence when the active model's boundaries are calibrated (model.json
        calibration.class_weights), so that a user comparing volumes knows; '' otherwise."""
        from engine.core.classes import tissue_classes
        from engine.nets.weights import read_model_dir

        try:
            w = read_model_dir(self.model_dir(), verify=False).class_weights
        except Exception:  # a missing or broken model is said when it is loaded
            return ""
        if not w or all(x == 1.0 for x in w):
            return ""
        names = {c.value: c.key.upper() if len(c.key) <= 3 else c.name for c in tissue_classes()}
        parts = ", ".join(f"{names.get(i, i)} x{x:g}" for i, x in enumerate(w) if x != 1.0)
        return f" Its class boundaries are calibrated ({parts}; see README, Shipped weights)."

    def _on_model_pref_changed(self, _i: int) -> None:
        self.win.prefs.model = self.win.segment_panel.model_combo.currentData()
        self.win.prefs.save()
        self._choose_model_reason()
        self.win.files._preload_model()

    def model_dir(self) -> Path:
        """The active version's folder; a missing one is said once, with the shipped model offered."""
        from engine.store.versions import MissingVersionError

        arch, _ = self.model_choice()
        try:
            return self.win.model_store.active_dir(arch)
        except MissingVersionError as exc:
            if dialogs.ask_yes_no(self.win, "Model version missing", f"{exc.path.name}: the active "
                                  f"{'U-Net' if arch == 'unet' else 'ENet'} version is missing ({exc.path}).\n\n"
                                  "Use the shipped model instead? (No: restore the folder first.)", default_yes=True):
                return self.win.model_store.use_shipped(arch)
            raise


class SegmentActions(QtCore.QObject):
    """The window's Segment menu and the engine's job signals: start and cancel, the uncertainty and
    brain-outline overlays, a new model version becoming active. Split from the window (#19)."""

    def __init__(self, window):
        super().__init__(window)
        self.win = window

    def start_segmentation(self, slices=None) -> int | None:
        job = self.win.segmentation.start(slices)
        self.win.update_state()
        return job

    def _on_engine_progress(self, job_id: int, name: str, payload) -> None:
        if name == "finetune":
            self.win.training_panel.on_progress(payload)

    def _on_engine_finished(self, job_id: int, name: str, result) -> None:
        if name == "finetune":
            self.win.training_panel.on_finished(result)
        self.win.update_state()

    def _show_uncertainty(self, unc) -> None:
        self.win.view_area.show_uncertainty(unc, self.win.actions["toggle_uncertainty"].isChecked(), self.win.axial_axis,
                                        getattr(self.win.segmentation, "p_wrong", None))
        self.win.update_state()

    def on_toggle_uncertainty(self) -> None:
        self.win.view_area.set_uncertainty_visible(self.win.uncertainty, self.win.actions["toggle_uncertainty"].isChecked())

    def _on_engine_failed(self, job_id: int, name: str, message: str) -> None:
        if name == "finetune":
            self.win.training_panel.on_failed(message)
        dialogs.show_error(self.win, f"{name.capitalize()} failed", message)
        self.win.update_state()

    def _on_engine_cancelled(self, job_id: int, name: str) -> None:
        if name == "finetune":
            self.win.training_panel.on_cancelled()
        self.win.statusBar().showMessage(f"{name.capitalize()} cancelled; nothing was changed", 8000)
        self.win.update_state()

    def on_segment(self):
        self.start_segmentation()

    def on_extract_brain(self):
        if self.win.segmentation.extract_brain() is not None:
            self.win.update_state()

    def _show_brain_mask(self) -> None:
        mask = self.win.session.brain_mask
        a = self.win.actions["toggle_brain_outline"]
        if mask is not None and not a.isChecked():
            a.setChecked(True)
        follows = self.win.session.brain_mask_in_labels
        for v in self.win.views.values():
            v.set_brain_mask(mask, a.isChecked(), follows)
        self.win.update_state()

    def on_toggle_brain_outline(self):
        for v in self.win.views.values():
            v.set_brain_mask(self.win.session.brain_mask, self.win.actions["toggle_brain_outline"].isChecked(),
                             self.win.session.brain_mask_in_labels)

    def on_segment_slice(self):
        if self.win.scan is not None:
            self.start_segmentation(slices=[self.win.view_area.view_of_axis(self.win.axial_axis).index])

    def on_cancel(self):
        # every job: the running one and any queued behind a model preload
        if self.win.engine.cancel_all():
            self.win.statusBar().showMessage("Cancelling (stops within one batch)...", 5000)

    def _on_version_activated(self, directory: str) -> None:
        from engine.nets.weights import WeightsError, read_model_dir

        self.win.models._choose_model_reason()
        try:
            name = read_model_dir(directory, verify=False).version
        except WeightsError:
            name = Path(directory).name
        again = " - segment again to use it on the open scan" if self.win.labelmap is not None else ""
        self.win.statusBar().showMessage(f"Model for segmentation: {name}{again}", 10000)

    def _next_step_text(self, has_labels: bool, busy: bool) -> str:
        """One line on what to do next, for a first-time user."""
        if self.win.scan is None:
            return ""
        if self.win.session.labels_job_running:
            return "Segmenting... you can keep correcting meanwhile: your corrections are kept."
        lm = self.win.labelmap  # (no whole-volume scan here: this runs after every stroke)
        if not has_labels or lm.predicted is None and lm.edit_count == 0 and lm.opened_empty:
            return ("Next: segment the scan with Ctrl+R (Segment > Segment volume), or Ctrl+Shift+R for the axial "
                    "slice shown.")
        if hasattr(self, "segmentation") and self.win.uncertainty is not None:
            return "Correct the slices listed below first (click one to go there): brush B, eraser E, fill F."
        return "Correct with the brush (B), eraser (E) or fill (F); classes 0-3 by number key; F1 lists all keys."
