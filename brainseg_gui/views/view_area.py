"""The central area: the three linked slice views, window/level on the volume's histogram (with
the threshold-painting band), the review column (next step, uncertainty legend, least-certain
slices) and the one-view / three-view layout.

It links the views (one cursor; a click in one moves the others), reads out the voxel under the
mouse, and shows what it is given; it owns no document. The window hands it the scan and label
map from the session and listens to its signals.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from engine.core.classes import tissue_classes

from .slice_view import SliceView, heat_legend_pixmap, overlay_lut

PLANES = ("axial", "coronal", "sagittal")


class ViewArea(QtWidgets.QWidget):
    cursorChanged = QtCore.pyqtSignal(object)  # the linked cursor voxel
    readoutChanged = QtCore.pyqtSignal(str)  # the voxel under the mouse, in words ('' when none)
    sliceChanged = QtCore.pyqtSignal()  # any view changed slice
    editFinished = QtCore.pyqtSignal(object)  # a view finished a stroke or fill (EditAtom or None)
    rangeDragged = QtCore.pyqtSignal(float, float)  # the threshold band was dragged on the histogram
    uncertainSliceChosen = QtCore.pyqtSignal(int)

    def __init__(self, tool_state, parent=None):
        super().__init__(parent)
        self.scan = None  # engine.io.volume.Volume
        self.labelmap = None
        self.cursor_voxel: tuple[int, int, int] | None = None
        self._readout_voxel = None
        self.views = {v: SliceView(v, tool_state) for v in PLANES}
        lut = overlay_lut([tc.rgb for tc in tissue_classes()])
        for v in self.views.values():
            v.set_lut(lut)
            v.cursorMoved.connect(self._on_cursor_moved)
            v.cursorSet.connect(self.set_cursor)
            v.editFinished.connect(self.editFinished.emit)
            v.sliceChanged.connect(self._on_slice_changed)
            v.activated.connect(self._on_view_activated)
        self.active_view = self.views["axial"]
        self.histogram = pg.HistogramLUTWidget(gradientPosition="right")
        self.histogram.setObjectName("histogram")
        # Not linked to one view's image: its histogram would be of one slice, dominated by the
        # zero background. We plot the volume's foreground histogram and sync levels ourselves.
        self.histogram.item.sigLevelsChanged.connect(self._on_levels_changed)
        self.histogram.setMinimumWidth(120)
        # the threshold-painting range, shown and dragged on the histogram
        self.range_region = pg.LinearRegionItem(orientation="horizontal", brush=pg.mkBrush(255, 235, 60, 60),
                                                pen=pg.mkPen(255, 200, 0))
        self.range_region.setZValue(5)
        self.range_region.setVisible(False)
        self.histogram.item.vb.addItem(self.range_region, ignoreBounds=True)
        self.range_region.sigRegionChangeFinished.connect(
            lambda *_: self.rangeDragged.emit(*[float(v) for v in self.range_region.getRegion()]))
        self.hist_box = QtWidgets.QWidget()
        outer = QtWidgets.QHBoxLayout(self.hist_box)
        outer.setContentsMargins(2, 2, 2, 2)
        hcol = QtWidgets.QWidget()
        hl = QtWidgets.QVBoxLayout(hcol)
        hl.setContentsMargins(0, 0, 0, 0)
        title = QtWidgets.QLabel("Window / level")
        title.setStyleSheet("font-weight: bold;")
        hl.addWidget(title)
        hl.addWidget(self.histogram, 1)
        self.level_label = QtWidgets.QLabel("")
        hl.addWidget(self.level_label)
        outer.addWidget(hcol, 1)
        outer.addWidget(self._build_review(), 1)
        self.grid = QtWidgets.QGridLayout(self)
        self.grid.setSpacing(3)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.apply_layout(False, "axial")

    def _build_review(self) -> QtWidgets.QWidget:
        """Beside the histogram, always in sight: what to do next, and where the model is unsure."""
        self.review_box = QtWidgets.QWidget()
        self.review_box.setObjectName("review_box")
        rl = self.review_layout = QtWidgets.QVBoxLayout(self.review_box)
        rl.setContentsMargins(6, 0, 0, 0)
        rtitle = QtWidgets.QLabel("Review")
        rtitle.setStyleSheet("font-weight: bold;")
        rl.addWidget(rtitle)
        self.next_step = QtWidgets.QLabel("")
        self.next_step.setObjectName("next_step")
        self.next_step.setWordWrap(True)
        rl.addWidget(self.next_step)
        self.legend = QtWidgets.QWidget()
        self.legend.setObjectName("uncertainty_legend")
        lg = QtWidgets.QGridLayout(self.legend)
        lg.setContentsMargins(0, 4, 0, 4)
        lg_title = QtWidgets.QLabel("How unsure the model is (U shows it on the views):")
        lg_title.setWordWrap(True)
        lg.addWidget(lg_title, 0, 0, 1, 3)
        bar = QtWidgets.QLabel()
        bar.setPixmap(heat_legend_pixmap())
        bar.setScaledContents(True)  # as wide as its labels: "50%" sits at the middle
        bar.setFixedHeight(12)
        bar.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        lg.addWidget(bar, 1, 0, 1, 3)
        lg.addWidget(QtWidgets.QLabel("sure"), 2, 0)
        half = QtWidgets.QLabel("50%")
        half.setAlignment(QtCore.Qt.AlignCenter)
        lg.addWidget(half, 2, 1)
        most = QtWidgets.QLabel("unsure")
        most.setAlignment(QtCore.Qt.AlignRight)
        lg.addWidget(most, 2, 2)
        self.legend.setToolTip("Entropy of the network's class probabilities, as a share of its maximum "
                               "(ln 4: all four classes equally likely). 0% = certain.")
        rl.addWidget(self.legend)
        self.legend.setVisible(False)
        return self.review_box

    def adopt_uncertain_list(self, label: QtWidgets.QLabel, lst: QtWidgets.QListWidget) -> None:
        """Place the least-certain list (made by the segment panel) in the review column."""
        self.uncertain_label, self.uncertain_list = label, lst
        # wide enough for "axial slice 176: 100% unsure" when a dock narrows the views
        lst.setMinimumWidth(lst.fontMetrics().horizontalAdvance("axial 176: ~12,345 voxels (10%) likely wrong") + 24)
        self.review_layout.addWidget(label)
        self.review_layout.addWidget(lst, 1)
        lst.itemClicked.connect(lambda item: self.uncertainSliceChosen.emit(int(item.data(QtCore.Qt.UserRole))))

    # ------------------------------------------------------------------ data
    def set_scan(self, vol) -> None:
        self.scan = vol
        self.cursor_voxel = None
        if vol is None:
            return
        for v in self.views.values():
            v.set_volume(vol.data, vol.affine)
        self.auto_window()
        self.sync_cursor()

    def set_labelmap(self, lm) -> None:
        self.labelmap = lm
        if lm is not None:
            for v in self.views.values():
                lm.listeners.append(v.labels_changed)
        for v in self.views.values():
            v.set_labelmap(lm)

    def view_axis(self, plane: str) -> int:
        """The array axis that the named view's slices run along."""
        return self.views[plane].geometry_.axis

    def view_of_axis(self, axis: int) -> SliceView:
        return next(v for v in self.views.values() if v.geometry_ is not None and v.geometry_.axis == axis)

    # ------------------------------------------------------------------ window / level, range
    def auto_window(self) -> None:
        if self.scan is None:
            return
        from engine.io.export import grey_window

        d = self.scan.data
        lo, hi = grey_window(d)
        sample = d[::2, ::2, ::2]
        nz = sample[sample > 0]
        vals = nz if nz.size else sample.ravel()
        counts, edges = np.histogram(vals, bins=128)
        self.histogram.item.plot.setData((edges[:-1] + edges[1:]) / 2, counts)
        self.histogram.item.setHistogramRange(float(d.min()), float(d.max()))
        self.histogram.item.setLevels(float(lo), float(hi))
        self._on_levels_changed()

    def levels(self) -> tuple[float, float]:
        lo, hi = self.histogram.item.getLevels()
        return float(lo), float(hi)

    def _on_levels_changed(self, *_):
        lo, hi = self.levels()
        for v in self.views.values():
            v.set_levels(lo, hi)
        self.level_label.setText(f"window {hi - lo:.0f}, level {(hi + lo) / 2:.0f}")

    def show_range(self, rng: tuple[float, float] | None) -> None:
        """The threshold-painting range: the band on the histogram and the tint in the views."""
        self.range_region.setVisible(rng is not None)
        if rng is not None:
            self.range_region.blockSignals(True)
            self.range_region.setRegion(rng)
            self.range_region.blockSignals(False)
        self.redraw_range()

    def redraw_range(self) -> None:
        for v in self.views.values():
            v.redraw_range()

    def set_overlay_style(self, opacity: float, visible: bool, outline: bool) -> None:
        for v in self.views.values():
            v.set_overlay_style(opacity, visible, outline)

    def redraw_overlay(self) -> None:
        for v in self.views.values():
            v.redraw_overlay()

    # ------------------------------------------------------------------ the linked cursor
    def set_cursor(self, voxel) -> None:
        vox = tuple(int(v) for v in voxel)
        for v in self.views.values():  # each set_slice rebuilds cursor_voxel: use the local copy
            v.set_slice(vox[v.geometry_.axis])
        self.cursor_voxel = vox
        self.sync_cursor()

    def sync_cursor(self) -> None:
        if self.scan is None:
            return
        if self.cursor_voxel is None or any(c >= s for c, s in zip(self.cursor_voxel, self.scan.shape)):
            self.cursor_voxel = tuple(v.index for v in sorted(self.views.values(), key=lambda w: w.geometry_.axis))
        for v in self.views.values():
            v.set_cursor_voxel(self.cursor_voxel)
        self.cursorChanged.emit(self.cursor_voxel)

    def _on_slice_changed(self, _k: int) -> None:
        if self.scan is not None and all(v.geometry_ is not None for v in self.views.values()):
            vox = [0, 0, 0]
            for v in self.views.values():
                vox[v.geometry_.axis] = v.index
            self.cursor_voxel = tuple(vox)
            for v in self.views.values():
                v.set_cursor_voxel(self.cursor_voxel)
            self.cursorChanged.emit(self.cursor_voxel)
        self.sliceChanged.emit()

    def _on_view_activated(self, view) -> None:
        self.active_view = view

    def _on_cursor_moved(self, voxel) -> None:
        self._readout_voxel = voxel
        self.refresh_readout()

    def refresh_readout(self) -> None:
        """The voxel under the mouse in words; called again after undo, strokes and predictions."""
        voxel, scan = self._readout_voxel, self.scan
        if voxel is None or scan is None or any(c >= s for c, s in zip(voxel, scan.shape)):
            self.readoutChanged.emit("")
            return
        x, y, z = voxel
        txt = f"voxel ({x}, {y}, {z})   intensity {scan.data[x, y, z]:g}"
        if self.labelmap is not None:
            lab = int(self.labelmap.labels[x, y, z])
            txt += f"   label {lab} {tissue_classes()[lab].name}"
        world = scan.affine @ np.array([x, y, z, 1.0])
        txt += f"   ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm"
        self.readoutChanged.emit(txt)

    # ------------------------------------------------------------------ uncertainty
    def show_uncertainty(self, unc, visible: bool, axial_axis: int, p_wrong=None) -> None:
        """The heat map on the views, the legend and the slices to check: ordered by the number of
        voxels expected to be wrong, spread over the brain (engine.infer.inference.slices_to_check);
        without `p_wrong`, by mean entropy."""
        from engine.infer.inference import least_certain_slices, slices_to_check

        for v in self.views.values():
            v.set_uncertainty(unc, visible)
        lst = self.uncertain_list
        lst.clear()
        if unc is not None and p_wrong is not None:
            for c in slices_to_check(p_wrong, 10, axis=axial_axis):
                item = QtWidgets.QListWidgetItem(f"axial {c.index + 1}: ~{c.expected_wrong:,.0f} voxels "
                                                 f"({100 * c.fraction:.0f}%) likely wrong")
                item.setData(QtCore.Qt.UserRole, c.index)
                item.setToolTip(f"About {c.expected_wrong:,.0f} of this slice's {c.brain_voxels:,} brain voxels are "
                                "expected to be labelled wrongly: the sum, over them, of 1 minus the network's "
                                "probability for the label it chose. The list is ordered by that number and "
                                "spread over the brain (one entry per few slices).")
                lst.addItem(item)
        elif unc is not None:
            for k, score in least_certain_slices(unc, 10, axis=axial_axis):
                item = QtWidgets.QListWidgetItem(f"axial slice {k + 1}: {100 * score / np.log(4):.0f}% unsure")
                item.setData(QtCore.Qt.UserRole, k)
                item.setToolTip(f"mean entropy {score:.3f} (maximum ln 4 = 1.386) over the brain in this slice")
                lst.addItem(item)
        lst.setVisible(unc is not None)
        self.uncertain_label.setVisible(unc is not None)
        self.legend.setVisible(unc is not None)

    def set_uncertainty_visible(self, unc, visible: bool) -> None:
        for v in self.views.values():
            v.set_uncertainty(unc, visible)

    # ------------------------------------------------------------------ layout
    def apply_layout(self, single: bool, plane: str) -> None:
        for p, v in self.views.items():
            v.setVisible(not single or p == plane)
        if single:  # window/level and the review list stay beside the one large view
            self.grid.addWidget(self.views[plane], 0, 0, 2, 1)
            self.grid.addWidget(self.hist_box, 0, 1, 2, 1)
            self.grid.setColumnStretch(0, 3)
            self.grid.setColumnStretch(1, 1)
        else:
            self.grid.setColumnStretch(0, 1)
            self.grid.setColumnStretch(1, 1)
            self.grid.addWidget(self.views["axial"], 0, 0)
            self.grid.addWidget(self.views["coronal"], 0, 1)
            self.grid.addWidget(self.views["sagittal"], 1, 0)
            self.grid.addWidget(self.hist_box, 1, 1)
        for v in self.views.values():
            if v.geometry_ is not None:
                QtCore.QTimer.singleShot(0, v.reset_zoom)

    def reset_zoom(self) -> None:
        for v in self.views.values():
            v.reset_zoom()
