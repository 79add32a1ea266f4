"""Side panels: tools (class picker with legend, brush size, paint-over), overlay, segmentation."""
from __future__ import annotations

from dataclasses import dataclass

from PyQt5 import QtCore, QtGui, QtWidgets

from engine.core.classes import tissue_classes


@dataclass
class ToolState:
    """What the mouse does now; read by every SliceView."""

    tool: str = "navigate"  # navigate | brush | eraser | fill
    value: int = 2
    radius: float = 3.0
    protect: int | None = None  # paint over only this class; None = all classes
    intensity_range: tuple[float, float] | None = None  # paint only where the scan is in [lo, hi]


def swatch(rgb, size=14) -> QtGui.QIcon:
    pm = QtGui.QPixmap(size, size)
    pm.fill(QtGui.QColor(*rgb) if rgb != (0, 0, 0) else QtGui.QColor(0, 0, 0, 0))
    p = QtGui.QPainter(pm)
    p.setPen(QtGui.QColor(90, 90, 90))
    p.drawRect(0, 0, size - 1, size - 1)
    p.end()
    return QtGui.QIcon(pm)


class ToolPanel(QtWidgets.QWidget):
    """Tools, class picker (doubles as the legend), brush size, paint-over mode, overlay style."""

    overlay_changed = QtCore.pyqtSignal(float, bool, bool)  # opacity, visible, outline
    range_changed = QtCore.pyqtSignal()  # the threshold-painting range was turned on/off or moved
    range_from_window = QtCore.pyqtSignal()  # "Use window" clicked: the window sets the range

    def __init__(self, state: ToolState, actions: dict, parent=None):
        super().__init__(parent)
        self.state = state
        lay = QtWidgets.QVBoxLayout(self)

        tools = QtWidgets.QGroupBox("Tool")
        tl = QtWidgets.QGridLayout(tools)
        self.tool_buttons = {}
        for i, key in enumerate(("navigate", "brush", "eraser", "fill")):
            b = QtWidgets.QToolButton()
            b.setDefaultAction(actions[f"tool_{key}"])
            b.setToolButtonStyle(QtCore.Qt.ToolButtonTextOnly)
            b.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
            b.setFocusPolicy(QtCore.Qt.NoFocus)  # after a click, arrow keys still scroll the slices
            tl.addWidget(b, i // 2, i % 2)
            self.tool_buttons[key] = b
        lay.addWidget(tools)

        classes = QtWidgets.QGroupBox("Class (keys 0-3) - legend")
        cl = QtWidgets.QVBoxLayout(classes)
        self.class_buttons = {}
        for tc in tissue_classes():
            b = QtWidgets.QToolButton()
            actions[f"class_{tc.value}"].setIcon(swatch(tc.rgb))
            b.setDefaultAction(actions[f"class_{tc.value}"])
            b.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
            b.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
            b.setFocusPolicy(QtCore.Qt.NoFocus)
            cl.addWidget(b)
            self.class_buttons[tc.value] = b
        lay.addWidget(classes)

        brush = QtWidgets.QGroupBox("Brush")
        bl = QtWidgets.QFormLayout(brush)
        self.size_spin = QtWidgets.QSpinBox()
        self.size_spin.setObjectName("brush_size")
        self.size_spin.setRange(1, 60)
        self.size_spin.setValue(int(state.radius * 2))
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush diameter ([ and ] change it)")
        self.size_spin.valueChanged.connect(self._size_changed)
        bl.addRow("Size", self.size_spin)
        self.protect_combo = QtWidgets.QComboBox()
        self.protect_combo.setObjectName("paint_over")
        self.protect_combo.addItem("All classes", None)
        for tc in tissue_classes():
            self.protect_combo.addItem(f"Only {tc.name}", tc.value)
        self.protect_combo.setToolTip("Paint over: everything, or only voxels of one class")
        self.protect_combo.currentIndexChanged.connect(self._protect_changed)
        bl.addRow("Paint over", self.protect_combo)
        # threshold painting (Slicer's "editable intensity range"): brush, eraser and fill change only
        # voxels whose intensity is in [lo, hi]; the view tints them
        self.range_check = QtWidgets.QCheckBox("Only intensities from")
        self.range_check.setObjectName("range_check")
        self.range_check.setToolTip("Brush, eraser and fill change only voxels whose scan intensity is in this "
                                    "range (tinted yellow in the views); drag the yellow band on the histogram")
        self.range_lo = QtWidgets.QDoubleSpinBox()
        self.range_hi = QtWidgets.QDoubleSpinBox()
        for sb, name in ((self.range_lo, "range_lo"), (self.range_hi, "range_hi")):
            sb.setObjectName(name)
            sb.setRange(-1e6, 1e6)
            sb.setDecimals(1)
            sb.setKeyboardTracking(False)
            sb.valueChanged.connect(self._range_changed)
        self.range_check.toggled.connect(self._range_changed)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.range_lo)
        row.addWidget(QtWidgets.QLabel("to"))
        row.addWidget(self.range_hi)
        self.range_window = QtWidgets.QPushButton("Use window")
        self.range_window.setObjectName("range_window")
        self.range_window.setToolTip("Set the range from the window/level shown now")
        self.range_window.clicked.connect(self.range_from_window.emit)
        self.range_window.setFocusPolicy(QtCore.Qt.NoFocus)
        bl.addRow(self.range_check)
        bl.addRow(row)
        bl.addRow(self.range_window)
        lay.addWidget(brush)

        ov = QtWidgets.QGroupBox("Overlay")
        ol = QtWidgets.QFormLayout(ov)
        self.show_check = QtWidgets.QCheckBox("Show (V)")
        self.show_check.setChecked(True)
        self.outline_check = QtWidgets.QCheckBox("Outline (O)")
        self.opacity = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.opacity.setObjectName("opacity")
        self.opacity.setRange(0, 100)
        self.opacity.setValue(40)
        for w in (self.show_check, self.outline_check):
            w.toggled.connect(self._overlay)
        self.opacity.valueChanged.connect(self._overlay)
        ol.addRow(self.show_check)
        ol.addRow(self.outline_check)
        ol.addRow("Opacity", self.opacity)
        lay.addWidget(ov)
        self.segment_box = QtWidgets.QGroupBox("Segment")
        lay.addWidget(self.segment_box)
        lay.addStretch(1)

    def _size_changed(self, v: int) -> None:
        self.state.radius = max(0.5, v / 2.0)

    def _protect_changed(self, _i: int) -> None:
        self.state.protect = self.protect_combo.currentData()

    def set_decimals(self, n: int) -> None:
        """Decimals of the range boxes: 1 for scans in the hundreds, 3 for scans scaled 0-1."""
        for sb in (self.range_lo, self.range_hi):
            sb.setDecimals(n)
            sb.setSingleStep(10 ** (1 - n))

    def set_range(self, lo: float, hi: float, enable: bool | None = None) -> None:
        for sb, v in ((self.range_lo, lo), (self.range_hi, hi)):
            sb.blockSignals(True)
            sb.setValue(float(v))
            sb.blockSignals(False)
        if enable is not None and enable != self.range_check.isChecked():
            self.range_check.setChecked(enable)  # emits through _range_changed
        else:
            self._range_changed()

    def _range_changed(self, *_):
        lo, hi = sorted((self.range_lo.value(), self.range_hi.value()))
        self.state.intensity_range = (lo, hi) if self.range_check.isChecked() else None
        self.range_changed.emit()

    def _overlay(self, *_):
        self.overlay_changed.emit(self.opacity.value() / 100.0, self.show_check.isChecked(),
                                  self.outline_check.isChecked())

    def overlay_style(self) -> tuple[float, bool, bool]:
        return self.opacity.value() / 100.0, self.show_check.isChecked(), self.outline_check.isChecked()


class SegmentPanel(QtWidgets.QWidget):
    """Model choice (auto/U-Net/ENet with the reason), segment buttons, progress and cancel."""

    def __init__(self, actions: dict, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Model"))
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setObjectName("model_combo")
        self.model_combo.addItem("Auto", "auto")
        self.model_combo.addItem("U-Net (workstation)", "unet")
        self.model_combo.addItem("ENet (low-power)", "enet")
        row.addWidget(self.model_combo, 1)
        lay.addLayout(row)
        self.reason = QtWidgets.QLabel("")
        self.reason.setObjectName("model_reason")
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet("color: #666;")
        lay.addWidget(self.reason)
        self.int8_check = QtWidgets.QCheckBox("INT8 (faster)")
        self.int8_check.setObjectName("int8_check")
        self.int8_check.setEnabled(False)
        lay.addWidget(self.int8_check)
        for key in ("segment", "segment_slice"):
            b = QtWidgets.QToolButton()
            b.setDefaultAction(actions[key])
            b.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
            b.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
            b.setFocusPolicy(QtCore.Qt.NoFocus)
            lay.addWidget(b)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("segment_progress")
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self.uncertain_label = QtWidgets.QLabel("Check these slices first (most voxels likely wrong; click one to go there):")
        self.uncertain_label.setWordWrap(True)
        self.uncertain_label.setVisible(False)
        lay.addWidget(self.uncertain_label)
        self.uncertain_list = QtWidgets.QListWidget()
        self.uncertain_list.setObjectName("uncertain_slices")
        self.uncertain_list.setMinimumHeight(80)
        self.uncertain_list.setVisible(False)
        lay.addWidget(self.uncertain_list)
        self.cancel_button = QtWidgets.QToolButton()
        self.cancel_button.setDefaultAction(actions["cancel"])
        self.cancel_button.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        lay.addWidget(self.cancel_button)
