"""The 3-D view: label surfaces (marching cubes, engine/labels/surface.py) drawn with pyqtgraph's
OpenGL widget, per-class visibility and opacity, a marker at the cursor.

The meshes are rebuilt after edits (a second after the last one) in a separate process, so the
GUI thread never waits for marching cubes: scipy's and scikit-image's loops hold the GIL, and a
thread would stall painting for their whole run (bench/gui_bench.py measures the longest stall).
Where OpenGL is missing (a remote session, a headless machine) the dock says so and the rest of
the app works as before.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from engine.core.classes import tissue_classes

log = logging.getLogger(__name__)
REBUILD_DELAY_MS = 1000


def _build(labels: np.ndarray, affine: np.ndarray, step: int):
    """Runs in the worker process."""
    from engine.labels.surface import label_surfaces

    return {c: (m.vertices, m.faces) for c, m in label_surfaces(labels, affine, step=step).items()}


def opengl_problem() -> str | None:
    """None when an OpenGL context can be made here, else why not (in words)."""
    try:
        import OpenGL.GL  # noqa: F401
        import pyqtgraph.opengl  # noqa: F401
    except Exception as exc:  # PyOpenGL or the system's libGL missing
        return f"OpenGL could not be loaded ({type(exc).__name__}: {exc})"
    app = QtWidgets.QApplication.instance()
    if app is not None and app.platformName() in ("offscreen", "minimal"):
        return f"the '{app.platformName()}' Qt platform has no OpenGL"
    ctx = QtGui.QOpenGLContext()
    if not ctx.create():
        return "no OpenGL context could be created on this display"
    return None


class SurfaceView(QtWidgets.QWidget):
    meshesReady = QtCore.pyqtSignal(int, object)  # generation, {class: (vertices, faces)} or an error text
    built = QtCore.pyqtSignal()  # the meshes on screen were (re)built

    def __init__(self, parent=None, step: int = 2):
        super().__init__(parent)
        self.setObjectName("surface_view")
        self.step = step
        self.labels_fn = None  # () -> current labels (the GUI thread's)
        self.affine = np.eye(4)
        self.generation = 0
        self.meshes: dict = {}
        self.items: dict = {}
        self._pool: ProcessPoolExecutor | None = None
        self._busy = False
        self._pending = False
        self._stale = False  # edits while hidden: rebuild when shown
        self._closed = False
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.problem = opengl_problem()
        self.gl = None
        if self.problem is None:
            import pyqtgraph.opengl as gl

            self.gl = gl.GLViewWidget()
            self.gl.setObjectName("gl_view")
            self.gl.setBackgroundColor((20, 20, 24))
            self.gl.opts["distance"] = 320
            self.marker = gl.GLScatterPlotItem(pos=np.zeros((1, 3)), size=9, color=(1, 1, 0.2, 1))
            self.marker.setGLOptions("translucent")
            self.gl.addItem(self.marker)
            lay.addWidget(self.gl, 1)
        else:
            self.message = QtWidgets.QLabel(
                f"The 3-D view needs OpenGL: {self.problem}.\nEverything else works; on a desktop with "
                "graphics drivers the label surfaces appear here.")
            self.message.setObjectName("gl_message")
            self.message.setWordWrap(True)
            self.message.setAlignment(QtCore.Qt.AlignCenter)
            lay.addWidget(self.message, 1)
        self.status = QtWidgets.QLabel("")
        self.status.setObjectName("surface_status")
        lay.addWidget(self.status)
        grid = QtWidgets.QGridLayout()
        self.visible_checks, self.opacity_sliders = {}, {}
        for r, tc in enumerate(tissue_classes()[1:]):
            chk = QtWidgets.QCheckBox(tc.name)
            chk.setObjectName(f"surf_visible_{tc.key}")
            chk.setChecked(tc.key != "csf")  # CSF hides the brain; on when asked
            chk.toggled.connect(self._restyle)
            sl = QtWidgets.QSlider(QtCore.Qt.Horizontal)
            sl.setObjectName(f"surf_opacity_{tc.key}")
            sl.setRange(5, 100)
            sl.setValue(100 if tc.key == "wm" else 45)
            sl.valueChanged.connect(self._restyle)
            grid.addWidget(chk, r, 0)
            grid.addWidget(QtWidgets.QLabel("opacity"), r, 1)
            grid.addWidget(sl, r, 2)
            self.visible_checks[tc.value] = chk
            self.opacity_sliders[tc.value] = sl
        lay.addLayout(grid)
        self.timer = QtCore.QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(REBUILD_DELAY_MS)
        self.timer.timeout.connect(self.rebuild)
        self.meshesReady.connect(self._install)

    # ------------------------------------------------------------------ data
    def set_source(self, labels_fn, affine: np.ndarray) -> None:
        self.labels_fn, self.affine = labels_fn, np.asarray(affine, np.float64)
        self.schedule()

    def schedule(self) -> None:
        """Rebuild a moment after the last edit (while the view is shown; else when it is)."""
        if self.labels_fn is None or self.gl is None:  # nothing is drawn without OpenGL: build nothing
            return
        if self.isVisible():
            self.timer.start()
        else:
            self._stale = True

    def showEvent(self, ev):
        super().showEvent(ev)
        if self.labels_fn is not None and (self._stale or not self.meshes):
            self.timer.start(0)

    def rebuild(self) -> None:
        if self.labels_fn is None or self._closed or self.gl is None:
            return
        self._stale = False
        labels = self.labels_fn()
        if labels is None or not np.any(labels):  # a new scan without labels: no old surfaces
            self.generation += 1  # and a build still on its way from the old scan is dropped
            self.meshes = {}
            self._draw()
            self.status.setText("No labels yet: segment (Ctrl+R) or paint to see surfaces here.")
            return
        if self._busy:  # one build at a time; the newest edits get the next one
            self._pending = True
            return
        self._busy, self._pending = True, False
        self.generation += 1
        gen = self.generation
        self.status.setText("Building surfaces...")
        data = np.array(labels, dtype=np.uint8, copy=True)
        try:
            fut = self._submit(data)
        except Exception:  # the worker died (killed, out of memory): a new one, once
            self._pool = None
            try:
                fut = self._submit(data)
            except Exception as exc:
                self._busy = False
                self.status.setText(f"Could not build the surfaces: {type(exc).__name__}: {exc}")
                return
        fut.add_done_callback(lambda f, g=gen: self.meshesReady.emit(
            g, f.result() if f.exception() is None else f"{type(f.exception()).__name__}: {f.exception()}"))

    def _submit(self, data):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        return self._pool.submit(_build, data, self.affine, self.step)

    def _install(self, gen: int, meshes) -> None:
        self._busy = False
        if isinstance(meshes, str):
            self.status.setText(f"Could not build the surfaces: {meshes}")
            log.warning("3-D view: %s", meshes)
        elif gen == self.generation:
            self.meshes = meshes
            n = sum(len(f) for _, f in meshes.values())
            self.status.setText(f"{n:,} triangles; drag to turn, wheel to zoom")
            self._draw()
            self.built.emit()
        if self._pending:
            self.rebuild()

    def _draw(self) -> None:
        if self.gl is None:
            return
        import pyqtgraph.opengl as gl

        for item in self.items.values():
            self.gl.removeItem(item)
        self.items = {}
        centre = None
        for c, (verts, faces) in self.meshes.items():
            if len(faces) == 0:
                continue
            item = gl.GLMeshItem(vertexes=verts, faces=faces, smooth=True, shader="shaded", glOptions="translucent")
            self.items[c] = item
            self.gl.addItem(item)
            if centre is None:
                centre = verts.mean(axis=0)
        if centre is not None:
            allv = np.concatenate([v for v, f in self.meshes.values() if len(f)])
            lo, hi = allv.min(axis=0), allv.max(axis=0)
            centre = (lo + hi) / 2
            self.gl.opts["center"] = QtGui.QVector3D(*[float(v) for v in centre])
            self.gl.opts["distance"] = float(1.7 * (hi - lo).max())
        self._restyle()

    def _restyle(self, *_):
        for c, item in self.items.items():
            rgb = tissue_classes()[c].rgb
            a = self.opacity_sliders[c].value() / 100.0
            item.setColor((rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, a))
            item.setGLOptions("opaque" if a >= 0.99 else "translucent")
            item.setVisible(self.visible_checks[c].isChecked())

    def set_cursor(self, voxel) -> None:
        """The yellow marker at the slices' cursor, in world mm."""
        if self.gl is None or voxel is None:
            return
        w = self.affine @ np.array([*voxel, 1.0])
        self.marker.setData(pos=w[None, :3])

    def close_pool(self) -> None:
        self._closed = True
        self.timer.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
