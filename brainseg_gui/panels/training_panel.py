"""Fine-tune panel: settings, progress with time left, live loss and per-epoch validation Dice,
before/after Dice and confusion matrices, and the list of model versions (activate, compare,
roll back). Training runs as a job on the engine thread; the GUI thread only draws."""
from __future__ import annotations

import logging
import math

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from engine.core.classes import CLASS_KEYS, NUM_CLASSES, TISSUE_KEYS, tissue_classes
from engine.core.metrics import row_normalised
from engine.train.finetune import FinetuneConfig

from .. import dialogs

log = logging.getLogger(__name__)


def _n_slices(n: int) -> str:
    return f"{n} slice{'s' if n != 1 else ''}"


class StillPlot(pg.PlotWidget):
    """A plot that does not pan or zoom: the wheel over it scrolls the panel it sits in (a loss
    axis zoomed by a stray wheel ended at -150000)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setMouseEnabled(False, False)
        self.hideButtons()

    def wheelEvent(self, ev):
        ev.ignore()


class ConfusionView(pg.PlotWidget):
    """4x4 confusion matrix heatmap with counts and row-normalised fractions in each cell."""

    def __init__(self, parent=None):
        super().__init__(parent, background="w")
        self.setObjectName("confusion_view")
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.img = pg.ImageItem(axisOrder="row-major")
        self.img.setLookupTable(pg.colormap.get("viridis").getLookupTable(0, 1, 256))
        self.addItem(self.img)
        self.getViewBox().invertY(True)
        self.getViewBox().setAspectLocked(True)
        names = [tc.name.replace("Grey matter", "GM").replace("White matter", "WM") for tc in tissue_classes()]
        ticks = [[(i + 0.5, n) for i, n in enumerate(names)]]
        self.getAxis("bottom").setTicks(ticks)
        self.getAxis("left").setTicks(ticks)
        self.setLabel("bottom", "predicted")
        self.setLabel("left", "reference")
        self.texts: list[pg.TextItem] = []
        self.matrix: np.ndarray | None = None

    def wheelEvent(self, ev):  # scroll the panel, not the matrix
        ev.ignore()

    def set_matrix(self, cm) -> None:
        for t in self.texts:
            self.removeItem(t)
        self.texts = []
        if cm is None:
            self.img.clear()
            self.matrix = None
            return
        cm = np.asarray(cm)
        self.matrix = cm
        frac = row_normalised(cm)
        self.img.setImage(frac, levels=(0, 1))
        self.img.setRect(QtCore.QRectF(0, 0, cm.shape[1], cm.shape[0]))
        for r in range(cm.shape[0]):
            for c in range(cm.shape[1]):
                color = "k" if frac[r, c] > 0.6 else "w"
                t = pg.TextItem(f"{cm[r, c]:,}\n{100 * frac[r, c]:.1f}%", color=color, anchor=(0.5, 0.5))
                t.setPos(c + 0.5, r + 0.5)
                self.addItem(t)
                self.texts.append(t)


class TrainingPanel(QtWidgets.QWidget):
    versionActivated = QtCore.pyqtSignal(str)
    trainingFinished = QtCore.pyqtSignal(object)

    def __init__(self, session, engine, store, arch, parent=None):
        """session: the open document (scan, labels); engine: the engine thread; store: the
        ModelStore; arch: a callable giving the architecture Segment would use now."""
        super().__init__(parent)
        self.session, self.engine, self._store, self._arch = session, engine, store, arch
        self.job_id: int | None = None
        self._job_arch: str | None = None
        self.result = None
        lay = QtWidgets.QVBoxLayout(self)

        form_box = QtWidgets.QGroupBox("Fine-tune the active model")
        form = QtWidgets.QFormLayout(form_box)
        self.source = QtWidgets.QComboBox()
        self.source.setObjectName("ft_source")
        self.source.addItem("Slices I corrected", "corrected")
        self.source.addItem("All labelled slices", "all")
        form.addRow("Learn from", self.source)
        self.epochs = QtWidgets.QSpinBox()
        self.epochs.setObjectName("ft_epochs")
        self.epochs.setRange(1, 500)
        self.epochs.setValue(FinetuneConfig.epochs)
        form.addRow("Epochs", self.epochs)
        self.lr = QtWidgets.QDoubleSpinBox()
        self.lr.setObjectName("ft_lr")
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1e-2)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(3e-4)
        form.addRow("Learning rate", self.lr)
        self.batch = QtWidgets.QSpinBox()
        self.batch.setRange(1, 32)
        self.batch.setValue(4)
        form.addRow("Batch size", self.batch)
        self.augment = QtWidgets.QCheckBox("Augmentation")
        self.augment.setChecked(True)
        form.addRow(self.augment)
        self.layers = QtWidgets.QComboBox()
        self.layers.setObjectName("ft_layers")
        self.layers.addItem("All layers", "all")
        self.layers.addItem("Decoder only (faster)", "decoder")
        form.addRow("Train", self.layers)
        self.steps_per_epoch = None  # tests may set a small value
        row = QtWidgets.QHBoxLayout()
        self.start_button = QtWidgets.QPushButton("Start fine-tuning")
        self.start_button.setObjectName("ft_start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setObjectName("ft_cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("ft_progress")
        form.addRow(self.progress)
        self.status = QtWidgets.QLabel("")
        self.status.setObjectName("ft_status")
        self.status.setWordWrap(True)
        form.addRow(self.status)
        lay.addWidget(form_box)

        self.loss_plot = StillPlot(background="w", title="Training loss")
        self.loss_plot.setObjectName("ft_loss_plot")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen("k", width=1.5))
        self.dice_plot = StillPlot(background="w", title="Validation Dice per epoch")
        self.dice_plot.setObjectName("ft_dice_plot")
        self.dice_plot.addLegend(offset=(-5, 5))
        self.dice_plot.setYRange(0, 1)
        self.dice_curves = {
            tc.key: self.dice_plot.plot(pen=pg.mkPen(tc.rgb, width=2), symbol="o", symbolSize=5,
                                        symbolBrush=tc.rgb, name=tc.name)
            for tc in tissue_classes() if tc.value > 0
        }
        for p in (self.loss_plot, self.dice_plot):
            p.setMinimumHeight(140)
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.dice_plot)

        res_box = QtWidgets.QGroupBox("Held-back slices: before / after")
        rl = QtWidgets.QVBoxLayout(res_box)
        self.dice_table = QtWidgets.QTableWidget(NUM_CLASSES, 3)
        self.dice_table.setObjectName("ft_dice_table")
        self.dice_table.setHorizontalHeaderLabels(["Class", "Dice before", "Dice after"])
        self.dice_table.verticalHeader().setVisible(False)
        self.dice_table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        for r, tc in enumerate(tissue_classes()):
            self.dice_table.setItem(r, 0, QtWidgets.QTableWidgetItem(tc.name))
        self.dice_table.setMaximumHeight(150)
        rl.addWidget(self.dice_table)
        cm_row = QtWidgets.QHBoxLayout()
        self.cm_choice = QtWidgets.QComboBox()
        self.cm_choice.addItem("Confusion matrix after", "after")
        self.cm_choice.addItem("Confusion matrix before", "before")
        self.cm_choice.currentIndexChanged.connect(self._show_cm)
        cm_row.addWidget(self.cm_choice)
        rl.addLayout(cm_row)
        self.cm_view = ConfusionView()
        self.cm_view.setMinimumHeight(220)
        rl.addWidget(self.cm_view)
        lay.addWidget(res_box)

        ver_box = QtWidgets.QGroupBox("Model versions")
        vl = QtWidgets.QVBoxLayout(ver_box)
        self.versions = QtWidgets.QListWidget()
        self.versions.setObjectName("ft_versions")
        self.versions.setSelectionMode(QtWidgets.QAbstractItemView.ExtendedSelection)
        vl.addWidget(self.versions)
        br = QtWidgets.QHBoxLayout()
        self.activate_button = QtWidgets.QPushButton("Use selected")
        self.activate_button.clicked.connect(self.activate_selected)
        self.compare_button = QtWidgets.QPushButton("Compare two")
        self.compare_button.clicked.connect(self.compare_selected)
        self.rollback_button = QtWidgets.QPushButton("Roll back")
        self.rollback_button.clicked.connect(self.rollback)
        for b in (self.activate_button, self.compare_button, self.rollback_button):
            br.addWidget(b)
        vl.addLayout(br)
        self.compare_label = QtWidgets.QLabel("")
        self.compare_label.setObjectName("ft_compare")
        self.compare_label.setWordWrap(True)
        vl.addWidget(self.compare_label)
        # what went wrong reading the store (a corrupt active.json, an unreadable version): said
        # here, never silently reset
        self.problems_label = QtWidgets.QLabel("")
        self.problems_label.setObjectName("ft_store_problems")
        self.problems_label.setWordWrap(True)
        self.problems_label.setStyleSheet("color: #c00000;")
        self.problems_label.setVisible(False)
        vl.addWidget(self.problems_label)
        lay.addWidget(ver_box)
        lay.addStretch(1)
        self._losses: list[tuple[int, float]] = []
        self._epochs: list = []
        self.refresh_versions()
        self.update_state()

    def showEvent(self, ev):  # versions may have been added from the command line meanwhile
        super().showEvent(ev)
        self.refresh_versions()

    # ------------------------------------------------------------------ state
    @property
    def store(self):
        return self._store

    def arch(self) -> str:
        return self._arch()

    def slices_to_learn(self) -> list[int]:
        """Axial slices to learn from (what the panel counts first)."""
        return self.plane_slices_to_learn().get("axial", [])

    def plane_slices_to_learn(self) -> dict[str, list[int]]:
        """Per plane, the slices to learn from: those corrected in that plane (a coronal stroke
        teaches with its coronal slice), or with "all labelled slices" every axial slice that
        holds labels."""
        lm = self.session.labelmap
        if lm is None:
            return {}
        if self.source.currentData() == "all":
            other = tuple(a for a in range(3) if a != lm.axial_axis)
            return {"axial": [int(k) for k in np.where(lm.labels.any(axis=other))[0]]}
        axes = self.session.plane_axes
        out = {p: lm.edited_slices(axes[p]) for p in ("axial", "coronal", "sagittal")}
        return {p: ks for p, ks in out.items() if ks}

    def update_state(self) -> None:
        running = self.job_id is not None
        per = self.plane_slices_to_learn()
        n = sum(len(v) for v in per.values())
        busy = self.engine.is_busy
        # not while a label operation's preview shows: the snapshot would learn from it
        self.start_button.setEnabled(not running and not busy and n >= 1 and self.session.scan is not None
                                     and not self.session.preview_active)
        self.cancel_button.setEnabled(running)
        current = self.status.text()
        idle_text = (not current or "to learn from" in current or current.startswith("Correct some"))
        if not running and idle_text:
            where = ", ".join(f"{len(v)} {p}" for p, v in per.items())
            self.status.setText(f"{n} slice{'s' if n != 1 else ''} to learn from ({where})." if n else
                                "Correct some slices first (brush, eraser, fill), then fine-tune.")

    def refresh_versions(self) -> None:
        self.versions.clear()
        problems = list(dict.fromkeys(self.store.problems))
        self.problems_label.setText("\n".join(problems))
        self.problems_label.setVisible(bool(problems))
        try:
            arch = self.arch()
        except Exception:
            return
        from engine.store.versions import MissingVersionError

        try:
            active = str(self.store.active_dir(arch))
        except MissingVersionError as exc:  # said in the panel; segmenting asks what to do
            active = ""
            self.problems_label.setText("\n".join(problems + [str(exc)]))
            self.problems_label.setVisible(True)
        for v in self.store.versions(arch):
            dice = (v.after or {}).get("mean_tissue_dice")
            text = f"{v.version}"
            if v.shipped:
                text += "  (shipped)"
            if v.parent:
                text += f"  <- {v.parent}"
            if dice is not None:
                text += f"  mean Dice {dice:.3f}"
            if str(v.directory) == active:
                text += "  [active]"
            item = QtWidgets.QListWidgetItem(text)
            item.setData(QtCore.Qt.UserRole, str(v.directory))
            self.versions.addItem(item)

    # ------------------------------------------------------------------ run
    def start(self) -> int | None:
        from engine.train.finetune import FinetuneConfig, finetune

        session = self.session
        per = self.plane_slices_to_learn()
        slices = per.get("axial", [])
        others = {p: ks for p, ks in per.items() if p != "axial"}
        if session.scan is None or session.labelmap is None or not per or self.engine.is_busy:
            return None
        arch = self._job_arch = self.arch()
        parent = self.store.active_dir(arch)
        name, out = self.store.new_version_dir(arch)
        cfg = FinetuneConfig(epochs=self.epochs.value(), lr=self.lr.value(), batch_size=self.batch.value(),
                             augment=self.augment.isChecked(), layers=self.layers.currentData(),
                             steps_per_epoch=self.steps_per_epoch)
        scan, affine = session.scan.data, session.scan.affine
        labels = session.labelmap.labels.copy()  # a snapshot: the user may keep editing
        brain = session.current_brain_mask()
        if brain is not None:  # a head scan: learn from what the network saw, the brain inside its mask
            from engine.infer.scan import masked_scan

            scan = masked_scan(scan, brain)
        scan_name = str(session.scan.path)

        def job(state, progress, cancel):
            return finetune(scan, labels, slices, parent, out, cfg,
                            on_progress=lambda p: progress(("step", p)),
                            on_epoch=lambda e: progress(("epoch", e)), cancel=cancel,
                            scan_name=scan_name, version=name, affine=affine, plane_slices=others)

        self._losses, self._epochs = [], []
        self.loss_curve.setData([], [])
        for c in self.dice_curves.values():
            c.setData([], [])
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status.setText(f"Fine-tuning {parent.name} on {sum(len(v) for v in per.values())} slices -> {name}...")
        self.job_id = self.engine.submit("finetune", job)
        self.update_state()
        return self.job_id

    def cancel(self) -> None:
        if self.job_id is not None:
            self.engine.cancel(self.job_id)
            self.status.setText("Cancelling (stops within one batch)...")

    def on_progress(self, payload) -> None:
        kind, p = payload
        if kind == "step":
            self._losses.append((p.step, p.loss))
            xs, ys = zip(*[(s, v) for s, v in self._losses if math.isfinite(v)]) if any(
                math.isfinite(v) for _, v in self._losses) else ((), ())
            self.loss_curve.setData(list(xs), list(ys))
            self.progress.setValue(int(100 * p.step / max(p.steps, 1)))
            self.status.setText(f"Step {p.step}/{p.steps}, loss {p.loss:.3f}, about {p.eta_s:.0f} s left")
        elif kind == "epoch":
            self._epochs.append(p)
            for key, curve in self.dice_curves.items():
                pts = [(e.epoch, e.val_dice.get(key)) for e in self._epochs if e.val_dice.get(key) is not None]
                if pts:
                    curve.setData(*zip(*pts))

    def on_finished(self, result) -> None:
        from engine.nets.weights import WeightsError

        self.job_id = None
        self.result = result
        b, a = result.before.get("mean_tissue_dice"), result.after.get("mean_tissue_dice")
        # the parent and the new version, measured on the same held-back slices: activated without
        # asking only on enough evidence of a gain (engine/train/finetune.py activation_verdict)
        from engine.train.finetune import activation_verdict

        ok, why = activation_verdict(result.before, result.after)
        activate = ok or dialogs.ask_yes_no(
            self, "Activate the new version?",
            f"The new version {result.version_dir.name} against its parent on the same "
            f"{_n_slices(len(result.val_slices))} held back: {why}.\n\n"
            "Activate it anyway? (No keeps the current model; the new version stays in the list.)")
        activated = False
        if activate:
            try:
                self.store.activate(self._job_arch, result.version_dir)
                activated = True
            except WeightsError as exc:
                self.status.setText(f"The new version could not be activated: {exc}")
        for r, key in enumerate(CLASS_KEYS):
            for c, which in ((1, result.before), (2, result.after)):
                v = (which.get("dice") or {}).get(key)
                self.dice_table.setItem(r, c, QtWidgets.QTableWidgetItem("-" if v is None else f"{v:.3f}"))
        self._show_cm()
        self.progress.setValue(100)
        if activated:
            msg = (f"Done in {result.seconds:.0f} s: {result.version_dir.name} is now active. Segment again "
                   "to use it on the open scan.")
        else:
            msg = f"Done in {result.seconds:.0f} s: {result.version_dir.name} was kept but not activated."
        if a is not None and b is not None:
            msg += f" Mean tissue Dice on the same {_n_slices(len(result.val_slices))} held back: {b:.3f} -> {a:.3f}."
        self.status.setText(msg)
        self.refresh_versions()
        if activated:
            self.versionActivated.emit(str(result.version_dir))
        self.trainingFinished.emit(result)
        self.update_state()

    def on_cancelled(self) -> None:
        self.job_id = None
        self.status.setText("Cancelled: no version was written; the active model is unchanged.")
        self.update_state()

    def on_failed(self, message: str) -> None:
        self.job_id = None
        self.status.setText(f"Failed: {message}")
        self.update_state()

    def _show_cm(self, *_):
        if self.result is None:
            return
        which = self.cm_choice.currentData()
        self.cm_view.set_matrix((self.result.after if which == "after" else self.result.before).get("confusion_matrix"))

    # ------------------------------------------------------------------ versions
    def _selected_dirs(self) -> list[str]:
        return [i.data(QtCore.Qt.UserRole) for i in self.versions.selectedItems()]

    def activate_selected(self) -> None:
        sel = self._selected_dirs()
        if len(sel) != 1:
            dialogs.show_info(self, "Use a version", "Select one version.")
            return
        self.store.activate(self.arch(), sel[0])
        self.refresh_versions()
        self.versionActivated.emit(sel[0])

    def rollback(self) -> None:
        from engine.nets.weights import WeightsError

        try:
            d = self.store.rollback(self.arch())
        except WeightsError as exc:
            dialogs.show_info(self, "Roll back", str(exc))
            return
        self.refresh_versions()
        self.versionActivated.emit(str(d))

    def compare_selected(self) -> None:
        sel = self._selected_dirs()
        if len(sel) != 2:
            dialogs.show_info(self, "Compare versions", "Select two versions (Ctrl+click).")
            return
        cmp = self.store.compare(sel[0], sel[1])
        lines = []
        for key in TISSUE_KEYS:
            a = (cmp["a"]["dice"] or {}).get(key)
            b = (cmp["b"]["dice"] or {}).get(key)
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"{key.upper()}: {fmt(a)} vs {fmt(b)}")
        self.compare_label.setText(f"{cmp['a']['version']} vs {cmp['b']['version']}, Dice on {cmp['basis']}: "
                                   + ";  ".join(lines))
