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
from pathlib import Path

from PyQt5 import QtCore, QtWidgets

from engine.core.classes import NUM_CLASSES
from engine.io.volume import (
    Volume,
)
from engine.labels.labelmap import LabelMap

from . import dialogs
from .engine_thread import EngineThread
from .files import FileController
from .panels.tool_panels import SegmentPanel, ToolPanel, ToolState
from .segmentation import ModelChoice, SegmentActions, SegmentationController
from .session import AUTOSAVE_IDLE_MS, Session
from .settings import Preferences, app_settings
from .tools.actions import build_actions, build_menus
from .tools.editing import EditController
from .views.slice_view import SliceView
from .views.view_area import ViewArea

log = logging.getLogger(__name__)

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

        from engine.store.versions import ModelStore

        self.model_store = ModelStore()
        # what the actions do lives in controllers; the window holds actions and layout (issue #19)
        self.files = FileController(self)
        self.editing = EditController(self)
        self.models = ModelChoice(self)
        self.segment_actions = SegmentActions(self)
        self.actions = build_actions(self, handlers=(self, self.files, self.editing, self.segment_actions))
        self.menus = build_menus(self, self.actions)
        self.files._build_recent_menu()
        self._build_views()
        self._build_panels()
        self._build_toolbar()
        self._build_status()
        self._group_actions()

        self.engine = EngineThread(self)
        self.segmentation = SegmentationController(
            self.session, self.engine, self.segment_panel, self.models.model_dir, lambda: self.prefs.batch_size, self,
            strip_mode=lambda: self.prefs.strip)
        self.segmentation.stripWarning.connect(
            lambda why: dialogs.show_info(self, "Brain extraction unsure",
                                          f"The brain mask may be wrong: {why}.\n\nLook at the magenta outline in all "
                                          "three views; correct the labels with the brush and eraser (painting a "
                                          "class adds to the brain, erasing removes from it)."))
        self.session.brainMaskChanged.connect(self.segment_actions._show_brain_mask)
        self.segmentation.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.segmentation.uncertaintyChanged.connect(self.segment_actions._show_uncertainty)
        self.segmentation.finished.connect(self.segmentationFinished.emit)
        self._build_training_dock()
        self._build_3d_dock()
        self.engine.progress.connect(self.segment_actions._on_engine_progress)
        self.engine.finished_job.connect(self.segment_actions._on_engine_finished)
        self.engine.failed.connect(self.segment_actions._on_engine_failed)
        self.engine.cancelled.connect(self.segment_actions._on_engine_cancelled)
        self.engine.busy_changed.connect(lambda _b: self.update_state())
        self.toolbar.addAction(self.actions["training_panel"])
        if start_engine:
            self.engine.start()

        self.session.labelmapChanged.connect(self._on_labelmap_changed)
        self.session.changed.connect(self.update_state)
        self.session.autosaveChanged.connect(self.files._on_autosave_changed)
        self.session.predictionLanded.connect(lambda *_: self.update_state())

        self._restore_window_state()
        self.models._choose_model_reason()
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
        va.editFinished.connect(self.editing._on_edit_finished)
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
        self.segment_panel.model_combo.currentIndexChanged.connect(self.models._on_model_pref_changed)
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
                                            lambda: self.models.model_choice()[0])
        self.training_panel.versionActivated.connect(self.segment_actions._on_version_activated)
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
        # a long message (what opening a scan found, where a file was saved) is cut at the read-out
        # and goes after a while: the last one stays readable as the status bar's tooltip
        sb.messageChanged.connect(lambda text: sb.setToolTip(text) if text else None)

    def _group_actions(self) -> None:
        # the families of actions whose slot only differs by an argument
        a = self.actions
        for tool in ("navigate", "brush", "eraser", "fill"):
            a[f"tool_{tool}"].triggered.connect(lambda _c=False, t=tool: self.editing._set_tool(t))
        for v in range(NUM_CLASSES):
            a[f"class_{v}"].triggered.connect(lambda _c=False, v=v: self.editing._set_class(v))
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
        self.view_area.next_step.setText(self.segment_actions._next_step_text(has_labels, busy))
        self.view_area.refresh_readout()  # the read-out under a still mouse follows undo, strokes...
        if hasattr(self, "training_panel"):
            self.training_panel.update_state()
        if has_scan:
            name = self.scan.name
            self.setWindowTitle(f"{name}[*] - BrainSeg")
        else:
            self.setWindowTitle("BrainSeg[*]")

    # ================================================================== opening
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

    # what other parts and scripts call on the window: the controllers do it
    def open_scan(self, path: str | os.PathLike, series: str | None = None) -> bool:
        return self.files.open_scan(path, series)

    def open_labels(self, path: str | os.PathLike) -> bool:
        return self.files.open_labels(path)

    def save_labels_to(self, path: str | os.PathLike) -> bool:
        return self.files.save_labels_to(path)

    def default_labels_path(self) -> Path:
        return self.files.default_labels_path()

    def start_folder(self) -> str:
        return self.files.start_folder()

    def set_preview(self, on: bool) -> None:
        self.editing.set_preview(on)

    def model_dir(self) -> Path:
        return self.models.model_dir()

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
    # ================================================================== autosave
    # ================================================================== segmentation
    @property
    def axial_axis(self) -> int:
        """The open scan's array axis normal to anatomically axial slices (2 for OASIS files)."""
        return self.session.axial_axis

    # ================================================================== saving / export
    # ================================================================== action slots
    def on_quit(self) -> None:
        self.close()

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

    def on_shortcuts(self):
        from .dialogs.shortcuts import ShortcutsDialog

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
            self.files.open_scan(urls[0])
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
        if self.files.quit_confirmed():
            ev.accept()
        else:
            ev.ignore()

    @staticmethod
    def _exit_now() -> None:
        """End the process at once (a running QThread must not be destroyed; nothing of the
        user's is left unsaved when this is called)."""
        os._exit(0)
