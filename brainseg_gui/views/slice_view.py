"""One anatomical view of the volume: scan, label overlay, crosshair, brush cursor and the mouse.

Mouse: with a paint tool the left button paints (a stroke is one undo step; segments are drawn
from the last point so fast drags leave no gaps); the middle button (or Shift + left) pans;
the right button drags to zoom; the wheel scrolls slices and Ctrl + wheel zooms. With the
navigate tool the left button sets the linked cursor. The overlay is redrawn only inside the box
that an edit changed.
"""
from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from engine.io.orientation import ViewGeometry
from engine.labels.labelmap import LabelMap

log = logging.getLogger(__name__)

PAINT_TOOLS = ("brush", "eraser")
ZOOM_STEP = 1.15  # Ctrl+wheel: zoom per click


def overlay_lut(colors: list[tuple[int, int, int]]) -> np.ndarray:
    """256-entry RGBA lookup table: 0 transparent, 1..n the class colours, opaque."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for v, rgb in enumerate(colors):
        if v == 0:
            continue
        lut[v, :3] = rgb
        lut[v, 3] = 255
    return lut


UNSURE_RGB = (205, 40, 215)  # magenta: no class colour is near it (Okabe-Ito blue, orange, green)


def heat_lut() -> np.ndarray:
    """How unsure the model is: transparent where it is sure, more and more opaque magenta up to
    the maximum (entropy ln 4). Magenta, because orange is grey matter's colour."""
    t = np.linspace(0, 1, 256)
    lut = np.zeros((256, 4), dtype=np.uint8)
    lut[:, :3] = UNSURE_RGB
    lut[:, 3] = (np.clip(t * 1.8, 0, 1) * 235).astype(np.uint8)
    return lut


def heat_legend_pixmap(width: int = 160, height: int = 12):
    """The heat map's colour bar over black (as over a dark scan), for the legend."""
    from PyQt5 import QtGui

    lut = heat_lut()
    t = np.linspace(0, 255, width).astype(int)
    a = lut[t, 3:4].astype(np.float32) / 255
    row = (lut[t, :3] * a + 40 * (1 - a)).astype(np.uint8)  # over a dark grey
    img = np.ascontiguousarray(np.repeat(row[None], height, axis=0))
    qimg = QtGui.QImage(img.data, width, height, 3 * width, QtGui.QImage.Format_RGB888)
    return QtGui.QPixmap.fromImage(qimg.copy())


# the brain mask's outline: magenta stands apart from the three class colours (Okabe-Ito sky blue,
# orange, bluish green) and from a grey scan; the cyan it used to be sat on the CSF rim's sky blue
BRAIN_OUTLINE_RGBA = (255, 64, 200, 235)


def outline_of(labels2d: np.ndarray) -> np.ndarray:
    """Labels kept only where a neighbour differs (the class boundaries)."""
    edge = np.zeros(labels2d.shape, dtype=bool)
    edge[1:, :] |= labels2d[1:, :] != labels2d[:-1, :]
    edge[:-1, :] |= labels2d[:-1, :] != labels2d[1:, :]
    edge[:, 1:] |= labels2d[:, 1:] != labels2d[:, :-1]
    edge[:, :-1] |= labels2d[:, :-1] != labels2d[:, 1:]
    return np.where(edge, labels2d, 0).astype(np.uint8)


class _ViewBox(pg.ViewBox):
    def __init__(self, owner: "SliceView"):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.owner = owner

    def wheelEvent(self, ev, axis=None):
        delta = ev.delta() if hasattr(ev, "delta") else ev.angleDelta().y()
        if ev.modifiers() & QtCore.Qt.ControlModifier:
            # 15% per wheel click around the mouse (pyqtgraph's default made five clicks 8x)
            factor = ZOOM_STEP ** (-delta / 120.0)
            self.scaleBy((factor, factor), self.mapToView(ev.pos()))
            ev.accept()
            return
        self.owner.step_slice(1 if delta > 0 else -1)
        ev.accept()

    def mouseDragEvent(self, ev, axis=None):
        # a stroke in progress keeps its drag even if Shift is pressed midway
        if ev.button() == QtCore.Qt.LeftButton and (
                self.owner._stroking or not (ev.modifiers() & QtCore.Qt.ShiftModifier)):
            if self.owner.handle_left_drag(ev):
                return
        super().mouseDragEvent(ev, axis)

    def mouseClickEvent(self, ev):
        if ev.button() == QtCore.Qt.LeftButton:
            self.owner.handle_left_click(ev)
            ev.accept()
            return
        super().mouseClickEvent(ev)

    def hoverEvent(self, ev):
        if ev.isExit():
            self.owner.hover_at(None)
        else:
            self.owner.hover_at(ev.pos())
        super().hoverEvent(ev) if hasattr(super(), "hoverEvent") else None


class SliceView(QtWidgets.QFrame):
    """Shows one plane. The main window owns the volume and label map and hands them in."""

    sliceChanged = QtCore.pyqtSignal(int)
    cursorMoved = QtCore.pyqtSignal(object)  # voxel tuple or None (hover read-out)
    cursorSet = QtCore.pyqtSignal(object)  # voxel tuple (navigate click)
    editFinished = QtCore.pyqtSignal(object)  # EditAtom or None
    activated = QtCore.pyqtSignal(object)  # self, when the mouse enters

    def __init__(self, view: str, tool_state, parent=None):
        super().__init__(parent)
        self.view = view
        self.tools = tool_state  # object with .tool, .value, .radius, .protect
        self.geometry_: ViewGeometry | None = None
        self.scan: np.ndarray | None = None
        self.labelmap: LabelMap | None = None
        self.index = 0
        self.outline = False
        self._hover: tuple[float, float] | None = None  # display point under the mouse
        self._overlay_buf: np.ndarray | None = None
        self._stroking = False
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.setFocusPolicy(QtCore.Qt.StrongFocus)
        self.setMouseTracking(True)

        self.title = QtWidgets.QLabel(view.capitalize())
        self.title.setObjectName(f"title_{view}")
        f = self.title.font()
        f.setBold(True)
        self.title.setFont(f)
        self.gv = pg.GraphicsView()
        self.gv.setBackground("k")
        self.vb = _ViewBox(self)
        self.gv.setCentralItem(self.vb)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.overlay.setZValue(10)
        self.heat = pg.ImageItem(axisOrder="row-major")  # uncertainty map
        self.heat.setZValue(15)
        self.heat.setLookupTable(heat_lut())
        self.heat.setVisible(False)
        self.uncertainty: np.ndarray | None = None
        # threshold painting: the pixels the brush and fill may change, tinted
        self.range_item = pg.ImageItem(axisOrder="row-major")
        self.range_item.setZValue(9)  # under the label overlay: painted labels stay visible
        self.range_item.setVisible(False)
        # the brain mask's outline (brain extraction), magenta, above the labels
        self.mask_item = pg.ImageItem(axisOrder="row-major")
        self.mask_item.setZValue(12)
        self.mask_item.setVisible(False)
        self.brain_mask: np.ndarray | None = None
        self.brain_mask_follows_labels = False
        self.vb.addItem(self.image)
        self.vb.addItem(self.mask_item)
        self.vb.addItem(self.overlay)
        self.vb.addItem(self.range_item)
        self.vb.addItem(self.heat)
        pen = pg.mkPen((255, 255, 0, 110), width=1, style=QtCore.Qt.DashLine)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        for ln in (self.hline, self.vline):
            ln.setZValue(20)
            self.vb.addItem(ln, ignoreBounds=True)
        self.brush_cursor = QtWidgets.QGraphicsEllipseItem()
        self.brush_cursor.setPen(pg.mkPen((255, 255, 255, 220), width=1))
        self.brush_cursor.setZValue(30)
        self.brush_cursor.setVisible(False)
        self.vb.addItem(self.brush_cursor, ignoreBounds=True)

        self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.slider.setObjectName(f"slider_{view}")
        self.slider.valueChanged.connect(self.set_slice)

        self.edge_labels = {}
        for edge in ("left", "right", "top", "bottom"):
            lab = QtWidgets.QLabel("", self.gv)
            # on a dark chip, so the letter stays readable where the crosshair line crosses it
            lab.setStyleSheet("color: #ffd24d; font-weight: bold; background: rgba(0, 0, 0, 170); "
                              "padding: 0px 3px; border-radius: 3px;")
            lab.setAttribute(QtCore.Qt.WA_TransparentForMouseEvents)
            self.edge_labels[edge] = lab

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.setSpacing(2)
        lay.addWidget(self.title)
        lay.addWidget(self.gv, 1)
        lay.addWidget(self.slider)
        self.gv.installEventFilter(self)

    # ------------------------------------------------------------------ data
    def set_volume(self, scan: np.ndarray, affine: np.ndarray) -> None:
        self.scan = scan
        self.geometry_ = ViewGeometry.for_view(self.view, affine, scan.shape)
        g = self.geometry_
        self.slider.blockSignals(True)
        self.slider.setRange(0, g.n_slices - 1)
        self.slider.blockSignals(False)
        nr, nc = g.display_shape
        self._rect = QtCore.QRectF(0, 0, nc * g.col_spacing, nr * g.row_spacing)
        for edge, lab in self.edge_labels.items():
            lab.setText(g.edges[edge])
            lab.adjustSize()
        self._place_edge_labels()
        self.index = -1
        self.set_slice(g.n_slices // 2)
        self.vb.autoRange(padding=0.02)

    def set_labelmap(self, lm: LabelMap | None) -> None:
        self.labelmap = lm
        self.redraw_overlay()
        if self.brain_mask_follows_labels:
            self.redraw_mask()

    def set_levels(self, lo: float, hi: float) -> None:
        self.image.setLevels((lo, hi))

    def set_overlay_style(self, opacity: float, visible: bool, outline: bool) -> None:
        self.overlay.setOpacity(opacity)
        self.overlay.setVisible(visible)
        if outline != self.outline:
            self.outline = outline
            self.redraw_overlay()

    def set_lut(self, lut: np.ndarray) -> None:
        self.overlay.setLookupTable(lut)
        self.overlay.setLevels((0, 255))

    # ------------------------------------------------------------------ slices
    def set_slice(self, k: int) -> None:
        if self.geometry_ is None:
            return
        k = int(np.clip(k, 0, self.geometry_.n_slices - 1))
        if k == self.index:
            return
        self.index = k
        self.slider.blockSignals(True)
        self.slider.setValue(k)
        self.slider.blockSignals(False)
        self.image.setImage(self.geometry_.display(self.scan, k), autoLevels=False)
        self.image.setRect(self._rect)
        self.redraw_overlay()
        self.redraw_heat()
        self.redraw_range()
        self.redraw_mask()
        self._update_title()
        if self._hover is not None:  # the read-out follows the wheel: same point, new slice
            self.cursorMoved.emit(self.geometry_.voxel_at(self._hover[0], self._hover[1], k))
        self.sliceChanged.emit(k)

    def step_slice(self, delta: int) -> None:
        self.set_slice(self.index + delta)

    def _update_title(self) -> None:
        g = self.geometry_
        self.title.setText(f"{self.view.capitalize()}   slice {self.index + 1} / {g.n_slices}"
                           f"   (index {self.index})")

    def redraw_overlay(self) -> None:
        if self.geometry_ is None or self.labelmap is None or self.labelmap.shape != self.geometry_.shape:
            self.overlay.clear()
            self._overlay_buf = None
            return
        disp = self.geometry_.display(self.labelmap.labels, self.index)
        self._overlay_buf = outline_of(disp) if self.outline else np.array(disp, dtype=np.uint8, copy=True)
        self.overlay.setImage(self._overlay_buf, autoLevels=False, levels=(0, 255))
        self.overlay.setRect(self._rect)

    # ------------------------------------------------------------------ threshold painting
    def _range_active(self) -> bool:
        return getattr(self.tools, "intensity_range", None) is not None and self.tools.tool in ("brush", "eraser", "fill")

    def allowed_slice(self) -> np.ndarray | None:
        """Pixels of the current slice (array slice, as the label map indexes it) whose scan
        intensity is in the painting range; None when painting is not limited."""
        if not self._range_active() or self.scan is None:
            return None
        lo, hi = self.tools.intensity_range
        sl = np.take(self.scan, self.index, axis=self.geometry_.axis)
        return (sl >= lo) & (sl <= hi)

    def redraw_range(self) -> None:
        """Tint the pixels the brush may change while painting is limited to an intensity range."""
        if self.geometry_ is None or not self._range_active():
            self.range_item.setVisible(False)
            return
        lo, hi = self.tools.intensity_range
        disp = self.geometry_.display(self.scan, self.index)
        inside = (disp >= lo) & (disp <= hi)
        rgba = np.zeros(disp.shape + (4,), np.uint8)
        rgba[inside] = (255, 235, 60, 55)
        self.range_item.setImage(rgba, autoLevels=False, levels=(0, 255))
        self.range_item.setRect(self._rect)
        self.range_item.setVisible(True)

    def set_brain_mask(self, mask: np.ndarray | None, visible: bool = True, follows_labels: bool = False) -> None:
        """`follows_labels`: a segmentation landed inside the mask, so the mask is now the labels'
        nonzero voxels (ScanDocument.current_brain_mask): the outline follows every brush and
        eraser stroke, as what Save brain mask writes does."""
        self.brain_mask = mask
        self.brain_mask_follows_labels = bool(follows_labels)
        self.mask_item.setVisible(visible and mask is not None)
        self.redraw_mask()

    def _brain_mask_slice(self) -> np.ndarray | None:
        g = self.geometry_
        if self.brain_mask is None or g is None or self.brain_mask.shape != g.shape:
            return None
        lm = self.labelmap
        if self.brain_mask_follows_labels and lm is not None and lm.shape == g.shape:
            here = g.display(lm.labels, self.index) > 0
            if here.any() or lm.labels.any():  # (the whole map only on a slice without labels)
                return here
        return g.display(self.brain_mask, self.index)

    def redraw_mask(self) -> None:
        """The outline of the brain mask on this slice (one pixel wide, BRAIN_OUTLINE_RGBA)."""
        mask = self._brain_mask_slice()
        if mask is None:
            self.mask_item.clear()
            return
        disp = mask.astype(np.uint8)
        edge = outline_of(disp) > 0
        rgba = np.zeros(disp.shape + (4,), np.uint8)
        rgba[edge] = BRAIN_OUTLINE_RGBA
        self.mask_item.setImage(rgba, autoLevels=False, levels=(0, 255))
        self.mask_item.setRect(self._rect)

    def set_uncertainty(self, unc: np.ndarray | None, visible: bool) -> None:
        self.uncertainty = unc
        self.heat.setVisible(visible and unc is not None)
        self.redraw_heat()

    def redraw_heat(self) -> None:
        if self.uncertainty is None or self.geometry_ is None or self.uncertainty.shape != self.geometry_.shape:
            self.heat.clear()
            return
        disp = self.geometry_.display(self.uncertainty, self.index)
        self.heat.setImage(np.ascontiguousarray(disp), autoLevels=False, levels=(0.0, float(np.log(4))))
        self.heat.setRect(self._rect)

    def labels_changed(self, box) -> None:
        """Label map listener: redraw only the part of the overlay inside `box`."""
        g = self.geometry_
        if g is None or self._overlay_buf is None or self.labelmap is None:
            return
        b = box[g.axis]
        if not (b.start <= self.index < b.stop):
            return
        if self.brain_mask_follows_labels and self.brain_mask is not None:
            self.redraw_mask()
        if self.outline:
            self.redraw_overlay()
            return
        rs, cs = g.display_box(box)
        disp = g.display(self.labelmap.labels, self.index)
        self._overlay_buf[rs, cs] = disp[rs, cs]
        self.overlay.updateImage()

    # ------------------------------------------------------------------ cursor & mouse
    def set_cursor_voxel(self, voxel) -> None:
        g = self.geometry_
        if g is None or voxel is None:
            return
        nr, nc = g.display_shape
        r = voxel[g.row_axis]
        c = voxel[g.col_axis]
        r = (nr - 1 - r) if g.row_flip else r
        c = (nc - 1 - c) if g.col_flip else c
        self.hline.setPos((r + 0.5) * g.row_spacing)
        self.vline.setPos((c + 0.5) * g.col_spacing)

    def _display_point(self, scene_pos) -> tuple[float, float] | None:
        if self.geometry_ is None:
            return None
        p = self.vb.mapSceneToView(scene_pos)
        g = self.geometry_
        return p.y() / g.row_spacing, p.x() / g.col_spacing

    def hover_at(self, pos) -> None:
        if pos is None or self.geometry_ is None:
            self._hover = None
            self.brush_cursor.setVisible(False)
            self.cursorMoved.emit(None)
            return
        p = self.vb.mapToView(pos)
        g = self.geometry_
        row, col = p.y() / g.row_spacing, p.x() / g.col_spacing
        self._hover = (row, col)
        self.cursorMoved.emit(g.voxel_at(row, col, self.index))
        self.activated.emit(self)
        if self.tools.tool in PAINT_TOOLS:
            r = self.tools.radius
            self.brush_cursor.setRect(QtCore.QRectF((col - r) * g.col_spacing, (row - r) * g.row_spacing,
                                                    2 * r * g.col_spacing, 2 * r * g.row_spacing))
            self.brush_cursor.setVisible(True)
        else:
            self.brush_cursor.setVisible(False)

    def _paint_value(self) -> int:
        return 0 if self.tools.tool == "eraser" else int(self.tools.value)

    def handle_left_drag(self, ev) -> bool:
        if not self._stroking and (self.tools.tool not in PAINT_TOOLS or self.labelmap is None):
            return False
        ev.accept()
        pt = self._display_point(ev.scenePos())
        if ev.isStart():
            start = self._display_point(ev.buttonDownScenePos())
            self._begin_stroke()
            self._stroke_to(start)
        if self._stroking:
            self._stroke_to(pt)
            if ev.isFinish():
                self._end_stroke()
        return True

    def handle_left_click(self, ev) -> None:
        pt = self._display_point(ev.scenePos())
        if pt is None:
            return
        tool = self.tools.tool
        if tool in PAINT_TOOLS and self.labelmap is not None:
            self._begin_stroke()
            self._stroke_to(pt)
            self._end_stroke()
        elif tool == "fill" and self.labelmap is not None:
            vox = self.geometry_.voxel_at(pt[0], pt[1], self.index)
            if vox is None:
                return
            seed = tuple(v for a, v in enumerate(vox) if a != self.geometry_.axis)
            atom = self.labelmap.fill(self.geometry_.axis, self.index, seed, int(self.tools.value),
                                      self.tools.protect, allowed=self.allowed_slice())
            self.editFinished.emit(atom)
        else:
            vox = self.geometry_.voxel_at(pt[0], pt[1], self.index)
            if vox is not None:
                self.cursorSet.emit(vox)

    def _begin_stroke(self) -> None:
        value = self._paint_value()
        self.labelmap.begin_stroke(self.geometry_.axis, self.index, value,
                                   "erase" if self.tools.tool == "eraser" else "stroke", allowed=self.allowed_slice())
        self._stroking = True

    def _stroke_to(self, pt) -> None:
        if pt is None:
            return
        if not self.labelmap.in_stroke:  # ended elsewhere (undo mid-drag): stop quietly
            self._stroking = False
            return
        i, j = self.geometry_.slice_point(pt[0], pt[1])
        self.labelmap.stroke_to((i, j), self.tools.radius, self.tools.protect)

    def _end_stroke(self) -> None:
        self._stroking = False
        if not self.labelmap.in_stroke:
            return
        atom = self.labelmap.end_stroke()
        self.editFinished.emit(atom)

    # ------------------------------------------------------------------ keys & layout
    def keyPressEvent(self, ev: QtGui.QKeyEvent) -> None:
        key = ev.key()
        if key in (QtCore.Qt.Key_Up, QtCore.Qt.Key_Right):
            self.step_slice(1)
        elif key in (QtCore.Qt.Key_Down, QtCore.Qt.Key_Left):
            self.step_slice(-1)
        elif key == QtCore.Qt.Key_PageUp:
            self.step_slice(10)
        elif key == QtCore.Qt.Key_PageDown:
            self.step_slice(-10)
        elif key == QtCore.Qt.Key_Home:
            self.set_slice(0)
        elif key == QtCore.Qt.Key_End:
            self.set_slice(10**9)
        else:
            super().keyPressEvent(ev)

    def eventFilter(self, obj, ev):
        if obj is self.gv and ev.type() == QtCore.QEvent.Resize:
            self._place_edge_labels()
        return super().eventFilter(obj, ev)

    def _place_edge_labels(self) -> None:
        w, h = self.gv.width(), self.gv.height()
        L = self.edge_labels
        L["left"].move(4, h // 2 - L["left"].height() // 2)
        L["right"].move(w - L["right"].width() - 4, h // 2 - L["right"].height() // 2)
        L["top"].move(w // 2 - L["top"].width() // 2, 2)
        L["bottom"].move(w // 2 - L["bottom"].width() // 2, h - L["bottom"].height() - 2)

    def reset_zoom(self) -> None:
        self.vb.autoRange(padding=0.02)
