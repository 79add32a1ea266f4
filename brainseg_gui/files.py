"""The File side of the window: opening scans and label maps (a DICOM series asks which series),
the recovery offer, saving with its checks, Open recent, and the dialogs of the File menu (export
images, batch, reorient, statistics). Split from the window (issue #19): the window keeps actions
and layout; this controller holds what opening and saving do."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from PyQt5 import QtCore, QtWidgets

from engine.core.paths import DEMO_SCAN
from engine.io.volume import SeriesChoiceError, VolumeReadError, VolumeWriteError, analyze_geometry_loss, scan_stem

from . import dialogs
from .session import LabelsError
from .settings import app_settings

log = logging.getLogger(__name__)

MAX_RECENT = 10
QUIT_WAIT_MS = 5000  # how long quitting waits for a cancelled job before it asks
SCAN_FILTER = "Scans (*.hdr *.img *.nii *.nii.gz *.HDR *.IMG *.dcm *.DCM);;DICOM (any file of a series) (*);;All files (*)"
LABEL_FILTER = "Label maps (*.hdr *.img *.nii *.nii.gz);;All files (*)"


def label_file_name(path: str) -> str:
    """One format suffix: the file dialog appends its filter's suffix to a name that already has
    the other one ('labels.nii' + Analyze filter -> 'labels.nii.hdr'); keep the last one chosen."""
    low = path.lower()
    for double, single in ((".nii.gz.hdr", ".hdr"), (".nii.hdr", ".hdr"), (".nii.img", ".img"),
                           (".hdr.nii.gz", ".nii.gz"), (".img.nii.gz", ".nii.gz"), (".hdr.nii", ".nii"),
                           (".img.nii", ".nii")):
        if low.endswith(double):
            return path[: -len(double)] + single
    return path


class FileController(QtCore.QObject):
    """Also the narrow interface file dialogs get instead of the window (the reorient dialog)."""

    def __init__(self, window):
        super().__init__(window)
        self.win = window

    @property
    def widget(self) -> QtWidgets.QWidget:
        return self.win

    @property
    def scan(self):
        return self.win.scan

    @property
    def scanOpened(self):  # noqa: N802 - the window's Qt signal, under its own name
        return self.win.scanOpened

    def show_message(self, text: str, ms: int) -> None:
        self.win.statusBar().showMessage(text, ms)

    def open_scan(self, path: str | os.PathLike, series: str | None = None) -> bool:
        """Open a scan (a file, or a DICOM series by its folder or any of its files); on error
        show it and keep whatever was open. Returns success."""
        self.win.editing._end_preview()
        if not self._confirm_discard("open another scan"):
            return False
        t0 = time.perf_counter()
        try:
            try:
                report = self.win.session.open_scan(path, series)
            except SeriesChoiceError as exc:  # a DICOM folder with several series: which one?
                choices = [(s.uid, s.describe().split(" UID ")[0]) for s in exc.series] + [("cancel", "Cancel")]
                uid = dialogs.ask_choice(self.win, "Choose a series",
                                         f"{path} holds {len(exc.series)} image series. Which one should open?",
                                         choices, exc.series[0].uid)
                if uid == "cancel":
                    return False
                report = self.win.session.open_scan(path, uid)
        except VolumeReadError as exc:
            log.warning("open failed: %s", exc)
            dialogs.show_error(self.win, "Cannot open scan", str(exc))
            self.win.statusBar().showMessage(f"Could not open {Path(path).name}", 8000)
            return False
        vol = report.volume
        self.win.view_area.set_scan(vol)
        self.win._connect_3d()
        # threshold painting starts off, at this scan's window (its intensities may be another scale)
        lo, hi = self.win.view_area.levels()
        self.win.tool_panel.set_decimals(1 if hi - lo > 20 else 3)
        self.win.tool_panel.set_range(lo, hi, enable=False)
        self.win.update_state()
        self._add_recent(str(Path(path).resolve()))
        for title, text in report.notices:
            dialogs.show_info(self.win, title, text)
        self.win.statusBar().showMessage(report.message, 15000)
        log.info("%s (%.0f ms)", report.message, (time.perf_counter() - t0) * 1000)
        if report.recovery is not None:
            self._offer_recovery(report.recovery)
        if self.win.tool_state.tool != "navigate":  # the brush still chosen paints at once on this scan
            self.win.session.ensure_labelmap()
        self._preload_model()
        self.win.scanOpened.emit(str(path))
        return True

    def _preload_model(self) -> None:
        """Preference preload_model: load the model while the user looks at the scan."""
        if self.win.prefs.preload_model and self.win.scan is not None:
            self.win.segmentation.preload(self.win.views["axial"].index)

    def open_labels(self, path: str | os.PathLike) -> bool:
        if self.win.scan is None:
            return False
        self.win.editing._end_preview()
        if not self._confirm_discard("load other labels"):
            return False
        try:
            warning = self.win.session.open_labels(path)
        except LabelsError as exc:
            dialogs.show_error(self.win, "Cannot open labels", str(exc))
            return False
        self.win.statusBar().showMessage(warning or f"Loaded labels {Path(path).name}", 10000)
        return True

    def _confirm_discard(self, what: str) -> bool:
        """Ask before unsaved edits would be dropped. True to go ahead."""
        if not self.win.session.dirty:
            return True
        n = self.win.labelmap.unsaved_edits
        what_changed = (f"{n} edit{'s' if n != 1 else ''} since the last save" if n
                        else "a segmentation or operation that is not saved yet")
        answer = dialogs.ask_save_discard_cancel(
            self.win, "Unsaved edits",
            f"The label map has unsaved changes ({what_changed}). Save them before you {what}?")
        if answer == "save":
            return self.on_save_labels()
        return answer == "discard"

    def _offer_recovery(self, info) -> None:
        k = len(info.edited_pairs) if info.edited_pairs is not None else len(info.edited_slices)
        n = info.edit_count
        ok = dialogs.ask_yes_no(
            self.win, "Restore unsaved edits?",
            f"BrainSeg found edits to {self.win.scan.name} that were not saved "
            f"({n} edit{'s' if n != 1 else ''} on {k} slice{'s' if k != 1 else ''}, autosaved {info.saved_at_text}).\n\n"
            "Restore them?", default_yes=True)
        if ok:
            self.win.session.restore_recovery(info)
            self.win.view_area.redraw_overlay()
            n = info.edit_count
            self.win.statusBar().showMessage(f"Restored {n} edit{'s' if n != 1 else ''} from {info.saved_at_text}", 10000)
            self.win.update_state()
        else:
            self.win.session.discard_recovery()

    def save_labels_to(self, path: str | os.PathLike) -> bool:
        if self.win.labelmap is None or self.win.scan is None:
            return False
        try:
            self.win.session.check_save_target(path)
        except VolumeWriteError as exc:
            dialogs.show_error(self.win, "Cannot save labels", str(exc))
            return False
        if str(path).lower().endswith((".hdr", ".img")):
            loss = analyze_geometry_loss(self.win.scan.affine, self.win.scan.shape)
            if loss and not dialogs.ask_yes_no(self.win, "Analyze loses the geometry",
                                               f"{loss}\n\nSave {Path(path).name} as Analyze anyway?"):
                self.win.statusBar().showMessage("Not saved", 5000)
                return False
        try:
            self.win.session.save_labels_to(path)
        except (VolumeWriteError, OSError) as exc:
            dialogs.show_error(self.win, "Cannot save labels", str(exc))
            return False
        self.win.statusBar().showMessage(f"Saved {path}", 8000)
        self.win.update_state()
        return True

    def default_labels_path(self) -> Path:
        return self.win.session.default_labels_path()

    def start_folder(self) -> str:
        """Where Open dialogs start: the open scan's folder, else the last scan's (Open recent),
        else the current directory."""
        if self.win.scan is not None and self.win.scan.path is not None:
            p = Path(self.win.scan.path)
            return str(p.parent.parent if self.win.scan.source == "dicom" else p.parent)
        recent = app_settings().value("recent_files", [], type=list) or []
        for r in recent:
            if Path(r).parent.is_dir():
                return str(Path(r).parent)
        return ""

    def on_open_scan(self) -> None:
        path = dialogs.get_open_path(self.win, "Open scan", SCAN_FILTER, self.start_folder())
        if path:
            self.open_scan(path)

    def on_open_labels(self) -> None:
        path = dialogs.get_open_path(self.win, "Open labels", LABEL_FILTER, self.start_folder())
        if path:
            self.open_labels(path)

    def on_open_dicom(self) -> None:
        d = dialogs.get_directory(self.win, "Open a DICOM series folder", self.start_folder())
        if d:
            self.open_scan(d)

    def on_open_demo(self) -> None:
        self.open_scan(DEMO_SCAN)

    def on_save_labels(self) -> bool:
        if self.win.labelmap is None:
            return False
        if self.win.labels_path is None:
            return self.on_save_labels_as()
        return self.save_labels_to(self.win.labels_path)

    def on_save_labels_as(self) -> bool:
        if self.win.labelmap is None:
            return False
        path = dialogs.get_save_path(self.win, "Save labels", "NIfTI (*.nii.gz *.nii);;Analyze as OASIS FSL_SEG (*.hdr)",
                                     str(self.default_labels_path()))
        return bool(path) and self.save_labels_to(label_file_name(path))

    def on_save_brain_mask(self):
        if self.win.session.brain_mask is None:
            return
        start = str(Path(self.win.scan.path).with_name(scan_stem(self.win.scan.path) + "_brainmask.nii.gz")) if self.win.scan.path else ""
        path = dialogs.get_save_path(self.win, "Save brain mask", "NIfTI (*.nii.gz *.nii);;Analyze (*.hdr)", start)
        if not path:
            return
        try:
            written = self.win.session.save_brain_mask(path)
        except (ValueError, OSError) as exc:
            dialogs.show_error(self.win, "Save brain mask", str(exc))
            return
        self.win.statusBar().showMessage("Saved the brain mask: " + ", ".join(str(p) for p in written), 10000)

    def _build_recent_menu(self) -> None:
        self.win.recent_menu = QtWidgets.QMenu("Open &recent", self.win)
        self.win.recent_menu.setObjectName("recent_menu")
        file_menu = self.win.menus["File"]
        file_menu.insertMenu(self.win.actions["open_demo"], self.win.recent_menu)
        self._refresh_recent_menu()

    def _refresh_recent_menu(self) -> None:
        self.win.recent_menu.clear()
        recent = app_settings().value("recent_files", [], type=list) or []
        for path in recent:
            act = self.win.recent_menu.addAction(path)
            act.triggered.connect(lambda _c=False, p=path: self.open_scan(p))
        self.win.recent_menu.setEnabled(bool(recent))

    def _add_recent(self, path: str) -> None:
        s = app_settings()
        recent = [p for p in (s.value("recent_files", [], type=list) or []) if p != path]
        s.setValue("recent_files", [path] + recent[: MAX_RECENT - 1])
        self._refresh_recent_menu()

    def on_export_png(self) -> None:
        from .tools.label_ops import PngExportDialog

        if self.win.labelmap is None:
            return
        self.win.png_dialog = PngExportDialog(self.win)
        self.win.png_dialog.show()

    def on_batch(self) -> None:
        from .dialogs.batch_dialog import BatchDialog

        if getattr(self.win, "batch_dialog", None) is None:  # one per window: a running batch stays in sight
            self.win.batch_dialog = BatchDialog(self.win.model_dir, self.win)
        self.win.batch_dialog.show()
        self.win.batch_dialog.raise_()

    def on_reorient(self) -> None:
        from .dialogs.reorient_dialog import ReorientDialog

        if self.win.scan is None:
            return
        if getattr(self.win, "reorient_dialog", None) is None:  # one per window; it follows the scan opened
            self.win.reorient_dialog = ReorientDialog(self)
        self.win.reorient_dialog.show()
        self.win.reorient_dialog.raise_()

    def on_show_stats(self) -> None:
        from .dialogs.stats_dialog import StatsDialog

        if self.win.labelmap is None or self.win.scan is None:
            return
        folder = str((self.win.labels_path or self.win.scan.path).parent) if self.win.scan.path is not None else ""
        dlg = StatsDialog(self.win.labelmap.labels, self.win.scan.voxel_volume_ml, self.win.scan.name, self.win, default_dir=folder,
                          scan=self.win.scan)
        self.win._stats_dialog = dlg
        dlg.show()

    def quit_confirmed(self) -> bool:
        """Closing the window: ask what must be asked (a running batch, a running job, unsaved edits),
        then save the window state, drop the recovery file (saved or discarded as the user chose)
        and stop the engine, waiting a bounded time for a cancelled job. False: stay open."""
        win = self.win
        win.editing._end_preview()
        batch = getattr(win, "batch_dialog", None)
        if batch is not None and not batch.confirm_stop():  # a cohort batch still running
            return False
        if win.engine.is_busy and not dialogs.ask_yes_no(
                win, "Quit while working?", "A segmentation or fine-tuning is running. Cancel it and quit?"):
            return False
        if not self._confirm_discard("quit"):
            return False
        s = app_settings()
        s.setValue("window/geometry", win.saveGeometry())
        s.setValue("window/state", win.saveState())
        # Saved or deliberately discarded: the recovery file has nothing left to offer.
        win.session.discard_recovery()
        win.session.shutdown()
        if win.surface_view is not None:
            win.surface_view.close_pool()
        win.engine.cancel_all()
        # a cancelled job stops within one batch; one MXNet call cannot be interrupted, so the wait
        # is bounded and then the user chooses
        wait_ms = QUIT_WAIT_MS
        while not win.engine.stop(wait_ms):
            answer = dialogs.ask_choice(
                win, "Still stopping",
                f"The running job has not stopped after {wait_ms // 1000} s (one step of the network cannot "
                "be interrupted). Your labels are already saved or discarded as you chose.",
                [("wait", "Keep waiting"), ("quit", "Quit now")], "wait")
            if answer == "quit":
                log.warning("quitting with the engine thread still running")
                app_settings().sync()
                logging.shutdown()
                win._exit_now()
                return True
        return True

    def _on_autosave_changed(self, state: str, text: str) -> None:
        colour = {"failed": "#c00000", "saving": "#666", "saved": "#2a7a2a"}.get(state, "#666")
        self.win.autosave_label.setText(text)
        self.win.autosave_label.setStyleSheet(f"color: {colour};" + (" font-weight: bold;" if state == "failed" else ""))
        tip = ("Unsaved edits are written to a recovery file a few seconds after you stop editing, so a crash "
               "loses nothing; File > Save labels writes the label map itself.")
        if state == "failed":
            tip = f"{text}.\nThe recovery file could not be written: save your labels (Ctrl+S) to keep them safe.\n\n" + tip
        self.win.autosave_label.setToolTip(tip)
        if state == "saved":
            self.win.autosaved.emit(text)
        elif state == "failed":
            log.warning("%s", text)
