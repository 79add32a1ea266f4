"""The main window: a shell that wires the views, panels and dialogs to the document session
(`session.py`: scan, labels, history, saving, autosave, recovery, what jobs may write) and the
segmentation controller (`segmentation.py`). It asks the user questions and shows answers; the
rules live in those two.

Which steps are enabled (open, segment, edit, save/export, train) is decided in one place,
`update_state()`, as ilastik's workflow does. Editing stays enabled while a segmentation runs:
the prediction keeps every voxel the user corrected (Session.land_prediction).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from PyQt5 import QtCore, QtWidgets

from engine.core.classes import NUM_CLASSES, tissue_classes
from engine.core.paths import DEMO_SCAN
from engine.io.volume import (
    SeriesChoiceError,
    Volume,
    VolumeReadError,
    VolumeWriteError,
    analyze_geometry_loss,
    scan_stem,
)
from engine.labels.labelmap import LabelMap

from . import dialogs
from .engine_thread import EngineThread
from .panels.tool_panels import SegmentPanel, ToolPanel, ToolState
from .segmentation import SegmentationController
from .session import AUTOSAVE_IDLE_MS, LabelsError, Session
from .settings import Preferences, app_settings
from .tools.actions import ACTIONS, MOUSE_HELP, build_actions, build_menus
from .views.slice_view import SliceView
from .views.view_area import ViewArea

log = logging.getLogger(__name__)

SCAN_FILTER = "Scans (*.hdr *.img *.nii *.nii.gz *.HDR *.IMG *.dcm *.DCM);;DICOM (any file of a series) (*);;All files (*)"
LABEL_FILTER = "Label maps (*.hdr *.img *.nii *.nii.gz);;All files (*)"
MAX_RECENT = 10
QUIT_WAIT_MS = 5000  # how long quitting waits for a cancelled job before it asks
__all__ = ["MainWindow", "AUTOSAVE_IDLE_MS"]


class MainWindow(QtWidgets.QMainWindow):
    scanOpened = QtCore.pyqtSignal(str)
    segmentationFinished = QtCore.pyqtSignal(object)
    autosaved = QtCore.pyqtSignal(str)

    def __init__(self, prefs: Preferences | None = None, start_engine: bool = True):
        super().__init__()
        self.prefs = prefs or Preferences.load()
        self.setWindowTitle("BrainSeg[*]")
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.session = Session(self)
        self.surface_view = None  # the 3-D view, made when first shown
        self.tool_state = ToolState()
        self._preview = False  # a label operation's preview is shown: editing locked
        self.prefs_islands, self.prefs_smooth_mm = 50, 1.0

        from engine.store.versions import ModelStore

        self.model_store = ModelStore()
        self.actions = build_actions(self)
        self.menus = build_menus(self, self.actions)
        self._build_recent_menu()
        self._build_views()
        self._build_panels()
        self._build_toolbar()
        self._build_status()
        self._group_actions()

        self.engine = EngineThread(self)
        self.segmentation = SegmentationController(
            self.session, self.engine, self.segment_panel, self.model_dir, lambda: self.prefs.batch_size, self,
            strip_mode=lambda: self.prefs.strip)
        self.segmentation.stripWarning.connect(
            lambda why: dialogs.show_info(self, "Brain extraction unsure",
                                          f"The brain mask may be wrong: {why}.\n\nLook at the cyan outline in all "
                                          "three views; correct the labels with the brush and eraser (painting a "
                                          "class adds to the brain, erasing removes from it)."))
        self.session.brainMaskChanged.connect(self._show_brain_mask)
        self.segmentation.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.segmentation.uncertaintyChanged.connect(self._show_uncertainty)
        self.segmentation.finished.connect(self.segmentationFinished.emit)
        self._build_training_dock()
        self._build_3d_dock()
        self.engine.progress.connect(self._on_engine_progress)
        self.engine.finished_job.connect(self._on_engine_finished)
        self.engine.failed.connect(self._on_engine_failed)
        self.engine.cancelled.connect(self._on_engine_cancelled)
        self.engine.busy_changed.connect(lambda _b: self.update_state())
        self.toolbar.addAction(self.actions["training_panel"])
        if start_engine:
            self.engine.start()

        self.session.labelmapChanged.connect(self._on_labelmap_changed)
        self.session.changed.connect(self.update_state)
        self.session.autosaveChanged.connect(self._on_autosave_changed)
        self.session.predictionLanded.connect(lambda *_: self.update_state())

        self._restore_window_state()
        self._choose_model_reason()
        self.training_panel.refresh_versions()  # reads the store: any problem is said now
        if self.model_store.problems:
            self.statusBar().showMessage("Model store: " + self.model_store.problems[0], 30000)
            self.training_dock.show()
        self.update_state()

    # ================================================================== the document
    @property
    def scan(self) -> Volume | None:
        return self.session.scan

    @property
    def labelmap(self) -> LabelMap | None:
        return self.session.labelmap

    @property
    def labels_path(self) -> Path | None:
        return self.session.labels_path

    @property
    def uncertainty(self):
        return self.segmentation.uncertainty

    @property
    def autosave_timer(self) -> QtCore.QTimer:
        return self.session.autosave_timer

    def autosave(self) -> None:
        self.session.autosave()

    # ================================================================== construction
    def _build_views(self) -> None:
        self.view_area = ViewArea(self.tool_state)
        va = self.view_area
        self.views = va.views  # the same dict: tests and tools reach the views through the window
        va.readoutChanged.connect(lambda text: self.readout.setText(text))
        va.editFinished.connect(self._on_edit_finished)
        va.sliceChanged.connect(self._on_slice_changed)
        va.cursorChanged.connect(lambda vox: self.surface_view is not None and self.surface_view.set_cursor(vox))
        va.rangeDragged.connect(lambda lo, hi: self.tool_panel.set_range(lo, hi))
        va.uncertainSliceChosen.connect(lambda k: va.view_of_axis(self.axial_axis).set_slice(k))
        self.placeholder = QtWidgets.QLabel(
            "Open a scan: File > Open scan (Ctrl+O), drop a file here, or File > Open demo scan.")
        self.placeholder.setAlignment(QtCore.Qt.AlignCenter)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(va)
        self.setCentralWidget(self.stack)

    @property
    def active_view(self) -> SliceView:
        return self.view_area.active_view

    @property
    def cursor_voxel(self):
        return self.view_area.cursor_voxel

    def set_cursor(self, voxel) -> None:
        self.view_area.set_cursor(voxel)

    def view_axis(self, plane: str) -> int:
        return self.view_area.view_axis(plane)

    def _build_panels(self) -> None:
        self.tool_panel = ToolPanel(self.tool_state, self.actions)
        self.tool_panel.overlay_changed.connect(self._apply_overlay_style)
        self.tool_panel.range_changed.connect(self._on_range_changed)
        self.tool_panel.range_from_window.connect(self._range_from_window)
        self.segment_panel = SegmentPanel(self.actions)
        QtWidgets.QVBoxLayout(self.tool_panel.segment_box).addWidget(self.segment_panel)
        # the least-certain list lives beside the histogram, in sight without scrolling
        self.view_area.adopt_uncertain_list(self.segment_panel.uncertain_label, self.segment_panel.uncertain_list)
        idx = self.segment_panel.model_combo.findData(self.prefs.model)
        self.segment_panel.model_combo.setCurrentIndex(max(0, idx))
        self.segment_panel.model_combo.currentIndexChanged.connect(self._on_model_pref_changed)
        dock = QtWidgets.QDockWidget("Tools", self)
        dock.setObjectName("tools_dock")
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFocusPolicy(QtCore.Qt.NoFocus)  # arrow keys keep scrolling slices, not the panel
        scroll.setWidget(self.tool_panel)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(max(270, self.tool_panel.sizeHint().width()) + scroll.verticalScrollBar().sizeHint().width() + 4)
        dock.setWidget(scroll)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetMovable | QtWidgets.QDockWidget.DockWidgetFloatable)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, dock)
        self.tools_dock = dock

    def _build_training_dock(self) -> None:
        from .panels.training_panel import TrainingPanel

        self.training_panel = TrainingPanel(self.session, self.engine, self.model_store,
                                            lambda: self.model_choice()[0])
        self.training_panel.versionActivated.connect(self._on_version_activated)
        dock = QtWidgets.QDockWidget("Fine-tune", self)
        dock.setObjectName("training_dock")
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFocusPolicy(QtCore.Qt.NoFocus)
        scroll.setWidget(self.training_panel)
        scroll.setMinimumWidth(380)
        dock.setWidget(scroll)
        self.addDockWidget(QtCore.Qt.RightDockWidgetArea, dock)
        self.training_dock = dock
        self._dock_action(dock, "training_panel", "&Fine-tune panel", "Ctrl+Shift+T", "Segment")

    def _dock_action(self, dock, key: str, text: str, shortcut: str, menu: str, tip: str = "") -> None:
        """A dock starts hidden; its show/hide action goes into the action table and a menu."""
        dock.hide()
        act = dock.toggleViewAction()
        act.setText(text)
        act.setShortcut(shortcut)
        act.setObjectName(f"action_{key}")
        if tip:
            act.setToolTip(tip)
        self.actions[key] = act
        self.menus[menu].addSeparator()
        self.menus[menu].addAction(act)

    def _build_3d_dock(self) -> None:
        """View > 3-D view: label surfaces; built when first shown (it needs OpenGL)."""
        dock = QtWidgets.QDockWidget("3-D view", self)
        dock.setObjectName("view3d_dock")
        self.surface_view = None
        holder = QtWidgets.QWidget()
        QtWidgets.QVBoxLayout(holder).setContentsMargins(0, 0, 0, 0)
        dock.setWidget(holder)
        self.addDockWidget(QtCore.Qt.RightDockWidgetArea, dock)
        dock.visibilityChanged.connect(self._on_3d_visible)
        self.view3d_dock = dock
        self._dock_action(dock, "view3d", "3-&D view", "Ctrl+3", "View", "Label surfaces in 3-D (needs OpenGL)")

    def _on_3d_visible(self, visible: bool) -> None:
        if visible and self.surface_view is None:
            from .views.view3d import SurfaceView

            self.surface_view = SurfaceView()
            self.view3d_dock.widget().layout().addWidget(self.surface_view)
            self._connect_3d()

    def _connect_3d(self) -> None:
        sv = self.surface_view
        if sv is None or self.scan is None:
            return
        sv.set_source(lambda: None if self.labelmap is None else self.labelmap.labels, self.scan.affine)
        sv.set_cursor(getattr(self, "cursor_voxel", None))

    def _on_version_activated(self, directory: str) -> None:
        from engine.nets.weights import WeightsError, read_model_dir

        self._choose_model_reason()
        try:
            name = read_model_dir(directory, verify=False).version
        except WeightsError:
            name = Path(directory).name
        again = " - segment again to use it on the open scan" if self.labelmap is not None else ""
        self.statusBar().showMessage(f"Model for segmentation: {name}{again}", 10000)

    def _build_toolbar(self) -> None:
        tb = self.toolbar = self.addToolBar("Main")
        tb.setObjectName("main_toolbar")
        for key in ("open_scan", "save_labels", None, "undo", "redo", None, "tool_navigate", "tool_brush",
                    "tool_eraser", "tool_fill", None, "segment", "cancel"):
            if key is None:
                tb.addSeparator()
            else:
                tb.addAction(self.actions[key])

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.readout = QtWidgets.QLabel("")
        self.readout.setObjectName("readout")
        self.readout.setMinimumWidth(420)
        self.edit_label = QtWidgets.QLabel("")
        self.edit_label.setObjectName("edit_count")
        # autosave you can see: saving / saved at / failed (red, with the reason and the retry)
        self.autosave_label = QtWidgets.QLabel("")
        self.autosave_label.setObjectName("autosave_status")
        sb.addPermanentWidget(self.readout)
        sb.addPermanentWidget(self.edit_label)
        sb.addPermanentWidget(self.autosave_label)

    def _group_actions(self) -> None:
        # the families of actions whose slot only differs by an argument
        a = self.actions
        for tool in ("navigate", "brush", "eraser", "fill"):
            a[f"tool_{tool}"].triggered.connect(lambda _c=False, t=tool: self._set_tool(t))
        for v in range(NUM_CLASSES):
            a[f"class_{v}"].triggered.connect(lambda _c=False, v=v: self._set_class(v))
        for plane in ("axial", "coronal", "sagittal"):
            a[f"plane_{plane}"].triggered.connect(lambda _c=False: self._apply_layout())
        self.tool_group = QtWidgets.QActionGroup(self)
        for key in ("navigate", "brush", "eraser", "fill"):
            self.tool_group.addAction(self.actions[f"tool_{key}"])
        self.actions["tool_navigate"].setChecked(True)
        self.class_group = QtWidgets.QActionGroup(self)
        for v in range(NUM_CLASSES):
            self.class_group.addAction(self.actions[f"class_{v}"])
        self.actions[f"class_{self.tool_state.value}"].setChecked(True)
        self.plane_group = QtWidgets.QActionGroup(self)
        for p in ("axial", "coronal", "sagittal"):
            self.plane_group.addAction(self.actions[f"plane_{p}"])
        self.actions["plane_axial"].setChecked(True)
        self.actions["toggle_overlay"].setChecked(True)

    def _build_recent_menu(self) -> None:
        self.recent_menu = QtWidgets.QMenu("Open &recent", self)
        self.recent_menu.setObjectName("recent_menu")
        file_menu = self.menus["File"]
        file_menu.insertMenu(self.actions["open_demo"], self.recent_menu)
        self._refresh_recent_menu()

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = app_settings().value("recent_files", [], type=list) or []
        for path in recent:
            act = self.recent_menu.addAction(path)
            act.triggered.connect(lambda _c=False, p=path: self.open_scan(p))
        self.recent_menu.setEnabled(bool(recent))

    def _add_recent(self, path: str) -> None:
        s = app_settings()
        recent = [p for p in (s.value("recent_files", [], type=list) or []) if p != path]
        s.setValue("recent_files", [path] + recent[: MAX_RECENT - 1])
        self._refresh_recent_menu()

    # ================================================================== state (one place)
    def update_state(self) -> None:
        has_scan = self.scan is not None
        has_labels = self.labelmap is not None
        busy = self.engine.is_busy if hasattr(self, "engine") else False
        a = self.actions
        self.stack.setCurrentIndex(1 if has_scan else 0)
        a["toggle_uncertainty"].setEnabled(hasattr(self, "segmentation") and self.uncertainty is not None)
        for key in ("auto_window", "reset_view", "single_view", "reorient"):
            a[key].setEnabled(has_scan)
        # a segmentation on its way writes the labels: opening others meanwhile would lose one or the other
        labels_job = self.session.labels_job_running
        a["open_labels"].setEnabled(has_scan and not labels_job)
        a["open_labels"].setToolTip("Wait for the segmentation (or cancel it) to open a label map" if labels_job
                                    else "Open a label map (e.g. OASIS FSL_SEG) for the open scan")
        for key in ("segment", "segment_slice", "extract_brain"):
            a[key].setEnabled(has_scan and not busy)
        has_mask = self.session.brain_mask is not None
        a["save_brain_mask"].setEnabled(has_mask)
        a["toggle_brain_outline"].setEnabled(has_mask)
        a["cancel"].setEnabled(busy)
        for key in ("save_labels", "save_labels_as", "export_png", "show_stats", "toggle_overlay",
                    "toggle_outline", "opacity_up", "opacity_down"):
            a[key].setEnabled(has_labels)
        # editing stays possible while jobs run: a landing prediction keeps the corrections, and
        # fine-tuning learns from a snapshot taken when it started
        preview = self._preview
        for key in ("tool_brush", "tool_eraser", "tool_fill"):
            a[key].setEnabled(has_scan and not preview)
        a["undo"].setEnabled(has_labels and self.labelmap.can_undo and not preview)
        a["redo"].setEnabled(has_labels and self.labelmap.can_redo and not preview)
        # label operations replace labels wholesale: not while a prediction is on its way or a preview shows
        for key in ("fill_between", "remove_islands", "keep_largest", "smooth_labels"):
            a[key].setEnabled(has_labels and not preview and not labels_job)
        if preview:
            for key in ("segment", "segment_slice", "open_labels", "open_scan", "open_demo", "open_dicom",
                        "save_labels", "save_labels_as", "export_png"):  # a preview is not the document
                a[key].setEnabled(False)
        else:
            for key in ("open_scan", "open_demo", "open_dicom"):
                a[key].setEnabled(True)
        single = a["single_view"].isChecked()
        for p in ("axial", "coronal", "sagittal"):
            a[f"plane_{p}"].setEnabled(has_scan and single)
        dirty = self.session.dirty
        self.setWindowModified(bool(dirty))
        if has_labels:
            self.edit_label.setText(self.session.edit_summary() + ("  - unsaved" if dirty else ""))
        else:
            self.edit_label.setText("")
        self.view_area.next_step.setText(self._next_step_text(has_labels, busy))
        self.view_area.refresh_readout()  # the read-out under a still mouse follows undo, strokes...
        if hasattr(self, "training_panel"):
            self.training_panel.update_state()
        if has_scan:
            name = self.scan.name
            self.setWindowTitle(f"{name}[*] - BrainSeg")
        else:
            self.setWindowTitle("BrainSeg[*]")

    def _next_step_text(self, has_labels: bool, busy: bool) -> str:
        """One line on what to do next, for a first-time user."""
        if self.scan is None:
            return ""
        if self.session.labels_job_running:
            return "Segmenting... you can keep correcting meanwhile: your corrections are kept."
        lm = self.labelmap  # (no whole-volume scan here: this runs after every stroke)
        if not has_labels or lm.predicted is None and lm.edit_count == 0 and lm.opened_empty:
            return ("Next: segment the scan with Ctrl+R (Segment > Segment volume), or Ctrl+Shift+R for the axial "
                    "slice shown.")
        if hasattr(self, "segmentation") and self.uncertainty is not None:
            return "Correct the slices listed below first (click one to go there): brush B, eraser E, fill F."
        return "Correct with the brush (B), eraser (E) or fill (F); classes 0-3 by number key; F1 lists all keys."

    # ================================================================== opening
    def _end_preview(self) -> None:
        """Take back a label operation's preview before the document changes under it."""
        dlg = getattr(self, "fill_dialog", None)
        if dlg is not None and dlg.isVisible():
            dlg.reject()

    def open_scan(self, path: str | os.PathLike, series: str | None = None) -> bool:
        """Open a scan (a file, or a DICOM series by its folder or any of its files); on error
        show it and keep whatever was open. Returns success."""
        self._end_preview()
        if not self._confirm_discard("open another scan"):
            return False
        t0 = time.perf_counter()
        try:
            try:
                report = self.session.open_scan(path, series)
            except SeriesChoiceError as exc:  # a DICOM folder with several series: which one?
                choices = [(s.uid, s.describe().split(" UID ")[0]) for s in exc.series] + [("cancel", "Cancel")]
                uid = dialogs.ask_choice(self, "Choose a series",
                                         f"{path} holds {len(exc.series)} image series. Which one should open?",
                                         choices, exc.series[0].uid)
                if uid == "cancel":
                    return False
                report = self.session.open_scan(path, uid)
        except VolumeReadError as exc:
            log.warning("open failed: %s", exc)
            dialogs.show_error(self, "Cannot open scan", str(exc))
            self.statusBar().showMessage(f"Could not open {Path(path).name}", 8000)
            return False
        vol = report.volume
        self.view_area.set_scan(vol)
        self._connect_3d()
        # threshold painting starts off, at this scan's window (its intensities may be another scale)
        lo, hi = self.view_area.levels()
        self.tool_panel.set_decimals(1 if hi - lo > 20 else 3)
        self.tool_panel.set_range(lo, hi, enable=False)
        self.update_state()
        self._add_recent(str(Path(path).resolve()))
        for title, text in report.notices:
            dialogs.show_info(self, title, text)
        self.statusBar().showMessage(report.message, 15000)
        log.info("%s (%.0f ms)", report.message, (time.perf_counter() - t0) * 1000)
        if report.recovery is not None:
            self._offer_recovery(report.recovery)
        if self.tool_state.tool != "navigate":  # the brush still chosen paints at once on this scan
            self.session.ensure_labelmap()
        self._preload_model()
        self.scanOpened.emit(str(path))
        return True

    def _preload_model(self) -> None:
        """Preference preload_model: load the model while the user looks at the scan."""
        if self.prefs.preload_model and self.scan is not None:
            self.segmentation.preload(self.views["axial"].index)

    def open_labels(self, path: str | os.PathLike) -> bool:
        if self.scan is None:
            return False
        self._end_preview()
        if not self._confirm_discard("load other labels"):
            return False
        try:
            warning = self.session.open_labels(path)
        except LabelsError as exc:
            dialogs.show_error(self, "Cannot open labels", str(exc))
            return False
        self.statusBar().showMessage(warning or f"Loaded labels {Path(path).name}", 10000)
        return True

    def _on_labelmap_changed(self) -> None:
        lm = self.labelmap
        self.view_area.set_labelmap(lm)
        if lm is not None:
            lm.listeners.append(lambda _box: self.surface_view is not None and self.surface_view.schedule())
        self._connect_3d()
        self._apply_overlay_style(*self.tool_panel.overlay_style())
        self.update_state()

    def _ensure_labelmap(self) -> LabelMap:
        return self.session.ensure_labelmap()

    def _confirm_discard(self, what: str) -> bool:
        """Ask before unsaved edits would be dropped. True to go ahead."""
        if not self.session.dirty:
            return True
        n = self.labelmap.unsaved_edits
        what_changed = (f"{n} edit{'s' if n != 1 else ''} since the last save" if n
                        else "a segmentation or operation that is not saved yet")
        answer = dialogs.ask_save_discard_cancel(
            self, "Unsaved edits",
            f"The label map has unsaved changes ({what_changed}). Save them before you {what}?")
        if answer == "save":
            return self.on_save_labels()
        return answer == "discard"

    def _offer_recovery(self, info) -> None:
        k = len(info.edited_pairs) if info.edited_pairs is not None else len(info.edited_slices)
        n = info.edit_count
        ok = dialogs.ask_yes_no(
            self, "Restore unsaved edits?",
            f"BrainSeg found edits to {self.scan.name} that were not saved "
            f"({n} edit{'s' if n != 1 else ''} on {k} slice{'s' if k != 1 else ''}, autosaved {info.saved_at_text}).\n\n"
            "Restore them?", default_yes=True)
        if ok:
            self.session.restore_recovery(info)
            self.view_area.redraw_overlay()
            n = info.edit_count
            self.statusBar().showMessage(f"Restored {n} edit{'s' if n != 1 else ''} from {info.saved_at_text}", 10000)
            self.update_state()
        else:
            self.session.discard_recovery()

    # ================================================================== view
    def auto_window(self) -> None:
        self.view_area.auto_window()

    def _range_from_window(self) -> None:
        self.tool_panel.set_range(*self.view_area.levels(), enable=True)

    def _on_range_changed(self) -> None:
        rng = self.tool_state.intensity_range
        self.view_area.show_range(rng)
        if rng is not None:
            self.statusBar().showMessage(f"Painting limited to intensities {rng[0]:g} - {rng[1]:g}", 4000)

    def _apply_overlay_style(self, opacity: float, visible: bool, outline: bool) -> None:
        self.view_area.set_overlay_style(opacity, visible, outline)
        self.actions["toggle_overlay"].setChecked(visible)
        self.actions["toggle_outline"].setChecked(outline)

    def _on_slice_changed(self) -> None:
        # a slice change saves pending edits to the recovery file at once
        if self.labelmap is not None and self.labelmap.edit_count and self.session.autosave_due():
            self.session.autosave()

    # ================================================================== editing
    def set_preview(self, on: bool) -> None:
        """While a label operation's result is previewed, editing is locked; views still scroll."""
        self._preview = bool(on)
        if on and self.tool_state.tool != "navigate":
            self._set_tool("navigate")
        self.session.set_preview(on)  # a prediction arriving meanwhile waits for the preview to end
        self.update_state()

    def on_fill_between(self) -> None:
        from .tools.label_ops import FillBetweenDialog

        if self.labelmap is None:
            return
        dlg = getattr(self, "fill_dialog", None)
        if dlg is not None and dlg.isVisible():  # one at a time: one preview, one lock
            dlg.raise_()
            return
        self.fill_dialog = FillBetweenDialog(self)
        self.fill_dialog.show()  # not modal: the views scroll through the preview

    def on_remove_islands(self) -> None:
        from .tools.label_ops import run_operation

        run_operation(self, "islands")

    def on_keep_largest(self) -> None:
        from .tools.label_ops import run_operation

        run_operation(self, "largest")

    def on_smooth_labels(self) -> None:
        from .tools.label_ops import run_operation

        run_operation(self, "smooth")

    def _on_edit_finished(self, atom) -> None:
        if atom is not None:
            self.statusBar().showMessage(f"{atom.kind}: {atom.voxels} voxels changed", 3000)
        self.session.flush_deferred()  # a prediction that arrived during the stroke lands now
        self.update_state()

    # ================================================================== autosave
    def _on_autosave_changed(self, state: str, text: str) -> None:
        colour = {"failed": "#c00000", "saving": "#666", "saved": "#2a7a2a"}.get(state, "#666")
        self.autosave_label.setText(text)
        self.autosave_label.setStyleSheet(f"color: {colour};" + (" font-weight: bold;" if state == "failed" else ""))
        tip = ("Unsaved edits are written to a recovery file a few seconds after you stop editing, so a crash "
               "loses nothing; File > Save labels writes the label map itself.")
        if state == "failed":
            tip = f"{text}.\nThe recovery file could not be written: save your labels (Ctrl+S) to keep them safe.\n\n" + tip
        self.autosave_label.setToolTip(tip)
        if state == "saved":
            self.autosaved.emit(text)
        elif state == "failed":
            log.warning("%s", text)

    # ================================================================== segmentation
    def model_choice(self) -> tuple[str, str]:
        from engine.core.hardware import choose_model

        pref = self.segment_panel.model_combo.currentData() or "auto"
        return choose_model(pref)

    def _choose_model_reason(self) -> None:
        try:
            arch, reason = self.model_choice()
        except Exception as exc:  # hardware probing must never stop the app
            arch, reason = "enet", f"(could not probe the hardware: {exc})"
        self.segment_panel.reason.setText(f"Will run {'U-Net' if arch == 'unet' else 'ENet'}: {reason}")
        from engine.infer.inference import int8_offer

        try:
            ok, why = int8_offer(self.model_dir())
        except Exception as exc:  # missing weights: the segment job will say so
            ok, why = False, str(exc)
        chk = self.segment_panel.int8_check
        chk.setEnabled(ok)
        if not ok:
            chk.setChecked(False)
        chk.setToolTip(why)

    def _on_model_pref_changed(self, _i: int) -> None:
        self.prefs.model = self.segment_panel.model_combo.currentData()
        self.prefs.save()
        self._choose_model_reason()
        self._preload_model()

    def model_dir(self) -> Path:
        arch, _ = self.model_choice()
        return self.model_store.active_dir(arch)

    def start_segmentation(self, slices=None) -> int | None:
        job = self.segmentation.start(slices)
        self.update_state()
        return job

    def _on_engine_progress(self, job_id: int, name: str, payload) -> None:
        if name == "finetune":
            self.training_panel.on_progress(payload)

    def _on_engine_finished(self, job_id: int, name: str, result) -> None:
        if name == "finetune":
            self.training_panel.on_finished(result)
        self.update_state()

    def _show_uncertainty(self, unc) -> None:
        self.view_area.show_uncertainty(unc, self.actions["toggle_uncertainty"].isChecked(), self.axial_axis,
                                        getattr(self.segmentation, "p_wrong", None))
        self.update_state()

    @property
    def axial_axis(self) -> int:
        """The open scan's array axis normal to anatomically axial slices (2 for OASIS files)."""
        return self.session.axial_axis

    def on_toggle_uncertainty(self) -> None:
        self.view_area.set_uncertainty_visible(self.uncertainty, self.actions["toggle_uncertainty"].isChecked())

    def _on_engine_failed(self, job_id: int, name: str, message: str) -> None:
        if name == "finetune":
            self.training_panel.on_failed(message)
        dialogs.show_error(self, f"{name.capitalize()} failed", message)
        self.update_state()

    def _on_engine_cancelled(self, job_id: int, name: str) -> None:
        if name == "finetune":
            self.training_panel.on_cancelled()
        self.statusBar().showMessage(f"{name.capitalize()} cancelled; nothing was changed", 8000)
        self.update_state()

    # ================================================================== saving / export
    def save_labels_to(self, path: str | os.PathLike) -> bool:
        if self.labelmap is None or self.scan is None:
            return False
        try:
            self.session.check_save_target(path)
        except VolumeWriteError as exc:
            dialogs.show_error(self, "Cannot save labels", str(exc))
            return False
        if str(path).lower().endswith((".hdr", ".img")):
            loss = analyze_geometry_loss(self.scan.affine, self.scan.shape)
            if loss and not dialogs.ask_yes_no(self, "Analyze loses the geometry",
                                               f"{loss}\n\nSave {Path(path).name} as Analyze anyway?"):
                self.statusBar().showMessage("Not saved", 5000)
                return False
        try:
            self.session.save_labels_to(path)
        except (VolumeWriteError, OSError) as exc:
            dialogs.show_error(self, "Cannot save labels", str(exc))
            return False
        self.statusBar().showMessage(f"Saved {path}", 8000)
        self.update_state()
        return True

    def default_labels_path(self) -> Path:
        return self.session.default_labels_path()

    # ================================================================== action slots
    def start_folder(self) -> str:
        """Where Open dialogs start: the open scan's folder, else the last scan's (Open recent),
        else the current directory."""
        if self.scan is not None and self.scan.path is not None:
            p = Path(self.scan.path)
            return str(p.parent.parent if self.scan.source == "dicom" else p.parent)
        recent = app_settings().value("recent_files", [], type=list) or []
        for r in recent:
            if Path(r).parent.is_dir():
                return str(Path(r).parent)
        return ""

    def on_open_scan(self) -> None:
        path = dialogs.get_open_path(self, "Open scan", SCAN_FILTER, self.start_folder())
        if path:
            self.open_scan(path)

    def on_open_labels(self) -> None:
        path = dialogs.get_open_path(self, "Open labels", LABEL_FILTER, self.start_folder())
        if path:
            self.open_labels(path)

    def on_open_dicom(self) -> None:
        d = dialogs.get_directory(self, "Open a DICOM series folder", self.start_folder())
        if d:
            self.open_scan(d)

    def on_open_demo(self) -> None:
        self.open_scan(DEMO_SCAN)

    def on_save_labels(self) -> bool:
        if self.labelmap is None:
            return False
        if self.labels_path is None:
            return self.on_save_labels_as()
        return self.save_labels_to(self.labels_path)

    def on_save_labels_as(self) -> bool:
        if self.labelmap is None:
            return False
        path = dialogs.get_save_path(self, "Save labels", "NIfTI (*.nii.gz *.nii);;Analyze as OASIS FSL_SEG (*.hdr)",
                                     str(self.default_labels_path()))
        return bool(path) and self.save_labels_to(label_file_name(path))

    def on_export_png(self) -> None:
        from .tools.label_ops import PngExportDialog

        if self.labelmap is None:
            return
        self.png_dialog = PngExportDialog(self)
        self.png_dialog.show()

    def on_batch(self) -> None:
        from .dialogs.batch_dialog import BatchDialog

        if getattr(self, "batch_dialog", None) is None:  # one per window: a running batch stays in sight
            self.batch_dialog = BatchDialog(self.model_dir, self)
        self.batch_dialog.show()
        self.batch_dialog.raise_()

    def on_reorient(self) -> None:
        from .dialogs.reorient_dialog import ReorientDialog

        if self.scan is None:
            return
        if getattr(self, "reorient_dialog", None) is None:  # one per window; it follows the scan opened
            self.reorient_dialog = ReorientDialog(self)
        self.reorient_dialog.show()
        self.reorient_dialog.raise_()

    def on_show_stats(self) -> None:
        from .dialogs.stats_dialog import StatsDialog

        if self.labelmap is None or self.scan is None:
            return
        folder = str((self.labels_path or self.scan.path).parent) if self.scan.path is not None else ""
        dlg = StatsDialog(self.labelmap.labels, self.scan.voxel_volume_ml, self.scan.name, self, default_dir=folder,
                          scan=self.scan)
        self._stats_dialog = dlg
        dlg.show()

    def on_quit(self) -> None:
        self.close()

    def on_undo(self) -> None:
        if self.labelmap is not None and self.labelmap.undo() is not None:
            self.statusBar().showMessage("Undone", 2000)
        self.session.flush_deferred()  # undo during a drag ends the stroke: a waiting prediction lands
        self.update_state()

    def on_redo(self) -> None:
        if self.labelmap is not None and self.labelmap.redo() is not None:
            self.statusBar().showMessage("Redone", 2000)
        self.session.flush_deferred()
        self.update_state()

    def _set_tool(self, tool: str) -> None:
        self.tool_state.tool = tool
        self.actions[f"tool_{tool}"].setChecked(True)
        if tool != "navigate" and self.scan is not None:
            self._ensure_labelmap()
        cursor = QtCore.Qt.CrossCursor if tool != "navigate" else QtCore.Qt.ArrowCursor
        for v in self.views.values():
            v.gv.viewport().setCursor(cursor)
            v.brush_cursor.setVisible(False)
        self.view_area.redraw_range()
        self.statusBar().showMessage(f"Tool: {tool}", 2000)

    def _set_class(self, v: int) -> None:
        self.tool_state.value = v
        self.actions[f"class_{v}"].setChecked(True)
        self.statusBar().showMessage(f"Class {v}: {tissue_classes()[v].name}", 2000)

    def on_brush_smaller(self):
        self.tool_panel.size_spin.setValue(self.tool_panel.size_spin.value() - 1)

    def on_brush_larger(self):
        self.tool_panel.size_spin.setValue(self.tool_panel.size_spin.value() + 1)

    def on_toggle_overlay(self):
        self.tool_panel.show_check.setChecked(self.actions["toggle_overlay"].isChecked())

    def on_toggle_outline(self):
        self.tool_panel.outline_check.setChecked(self.actions["toggle_outline"].isChecked())

    def on_opacity_up(self):
        self.tool_panel.opacity.setValue(self.tool_panel.opacity.value() + 10)

    def on_opacity_down(self):
        self.tool_panel.opacity.setValue(self.tool_panel.opacity.value() - 10)

    def on_single_view(self):
        self._apply_layout()

    def _apply_layout(self):
        plane = next((p for p in ("axial", "coronal", "sagittal") if self.actions[f"plane_{p}"].isChecked()), "axial")
        self.view_area.apply_layout(self.actions["single_view"].isChecked(), plane)
        self.update_state()

    def on_reset_view(self):
        self.view_area.reset_zoom()

    def on_auto_window(self):
        self.auto_window()

    def on_segment(self):
        self.start_segmentation()

    def on_extract_brain(self):
        if self.segmentation.extract_brain() is not None:
            self.update_state()

    def _show_brain_mask(self) -> None:
        mask = self.session.brain_mask
        a = self.actions["toggle_brain_outline"]
        if mask is not None and not a.isChecked():
            a.setChecked(True)
        for v in self.views.values():
            v.set_brain_mask(mask, a.isChecked())
        self.update_state()

    def on_toggle_brain_outline(self):
        for v in self.views.values():
            v.set_brain_mask(self.session.brain_mask, self.actions["toggle_brain_outline"].isChecked())

    def on_save_brain_mask(self):
        if self.session.brain_mask is None:
            return
        start = str(Path(self.scan.path).with_name(scan_stem(self.scan.path) + "_brainmask.nii.gz")) if self.scan.path else ""
        path = dialogs.get_save_path(self, "Save brain mask", "NIfTI (*.nii.gz *.nii);;Analyze (*.hdr)", start)
        if not path:
            return
        try:
            written = self.session.save_brain_mask(path)
        except (ValueError, OSError) as exc:
            dialogs.show_error(self, "Save brain mask", str(exc))
            return
        self.statusBar().showMessage("Saved the brain mask: " + ", ".join(str(p) for p in written), 10000)

    def on_segment_slice(self):
        if self.scan is not None:
            self.start_segmentation(slices=[self.view_area.view_of_axis(self.axial_axis).index])

    def on_cancel(self):
        # every job: the running one and any queued behind a model preload
        if self.engine.cancel_all():
            self.statusBar().showMessage("Cancelling (stops within one batch)...", 5000)

    def on_shortcuts(self):
        ShortcutsDialog(self).exec_()

    def on_about(self):
        from engine import __version__

        dialogs.show_info(self, "About BrainSeg",
                          f"BrainSeg {__version__}\nBrain MRI tissue segmentation (CSF, grey matter, white matter)\n"
                          "with an embedded Apache MXNet engine (U-Net, ENet).\n\n"
                          "Demo scan: MNI ICBM152 2009a template, (C) 1993-2009 Louis Collins, MNI, McGill University.")

    # ================================================================== drag & drop, close
    def dragEnterEvent(self, ev):
        if ev.mimeData().hasUrls():
            ev.acceptProposedAction()

    def dropEvent(self, ev):
        urls = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_scan(urls[0])
            ev.acceptProposedAction()

    def _restore_window_state(self) -> None:
        s = app_settings()
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        st = s.value("window/state")
        if st is not None:
            self.restoreState(st)

    def closeEvent(self, ev):
        self._end_preview()
        batch = getattr(self, "batch_dialog", None)
        if batch is not None and not batch.confirm_stop():  # a cohort batch still running
            ev.ignore()
            return
        if self.engine.is_busy and not dialogs.ask_yes_no(
                self, "Quit while working?", "A segmentation or fine-tuning is running. Cancel it and quit?"):
            ev.ignore()
            return
        if not self._confirm_discard("quit"):
            ev.ignore()
            return
        s = app_settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        # Saved or deliberately discarded: the recovery file has nothing left to offer.
        self.session.discard_recovery()
        self.session.shutdown()
        if self.surface_view is not None:
            self.surface_view.close_pool()
        self.engine.cancel_all()
        # a cancelled job stops within one batch; one MXNet call cannot be interrupted, so the wait
        # is bounded and then the user chooses
        while not self.engine.stop(QUIT_WAIT_MS):
            answer = dialogs.ask_choice(
                self, "Still stopping",
                f"The running job has not stopped after {QUIT_WAIT_MS // 1000} s (one step of the network cannot "
                "be interrupted). Your labels are already saved or discarded as you chose.",
                [("wait", "Keep waiting"), ("quit", "Quit now")], "wait")
            if answer == "quit":
                log.warning("quitting with the engine thread still running")
                app_settings().sync()
                logging.shutdown()
                self._exit_now()
                return
        ev.accept()

    @staticmethod
    def _exit_now() -> None:
        """End the process at once (a running QThread must not be destroyed; nothing of the
        user's is left unsaved when this is called)."""
        os._exit(0)


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


class ShortcutsDialog(QtWidgets.QDialog):
    """Every shortcut, generated from the action table, plus the mouse bindings."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts and mouse")
        self.resize(760, 640)
        table = QtWidgets.QTableWidget(0, 3)
        table.setObjectName("shortcuts_table")
        table.setHorizontalHeaderLabels(["Keys", "Action", "Menu"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        rows = [(" or ".join(s.shortcuts), s.text.replace("&", ""), s.menu) for s in ACTIONS if s.shortcuts]
        rows += [(k, v, "Mouse") for k, v in MOUSE_HELP]
        for keys, text, menu in rows:
            r = table.rowCount()
            table.insertRow(r)
            for c, val in enumerate((keys, text, menu)):
                table.setItem(r, c, QtWidgets.QTableWidgetItem(val))
        table.setWordWrap(True)
        hh = table.horizontalHeader()
        hh.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(1, QtWidgets.QHeaderView.Stretch)  # the action's name is never cut off
        hh.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeToContents)
        table.resizeRowsToContents()
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(table)
        bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)
        self.table = table
