"""The 3-D view: where OpenGL is missing (as offscreen here) it says so, builds nothing and breaks
nothing; with OpenGL the surfaces are built in a worker process after edits, old surfaces go when
a scan without labels opens, and per-class visibility and opacity work."""
import numpy as np

from tests.gui.helpers import click


def test_3d_view_without_opengl_says_so_and_builds_nothing(window, small_scan, qtbot):
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    win.actions["view3d"].trigger()
    sv = win.surface_view
    assert sv is not None and win.view3d_dock.isVisible()
    assert sv.gl is None and "needs OpenGL" in sv.message.text(), "offscreen Qt has no OpenGL"
    win.actions["tool_brush"].trigger()
    click(qtbot, win.views["axial"], 5, 5)
    qtbot.wait(50)
    assert sv.generation == 0 and not sv.timer.isActive(), "no meshes are built for nobody to see"
    sv.close_pool()


def test_surfaces_are_built_in_a_worker_and_drawn_with_opengl(qtbot, monkeypatch):
    """With OpenGL (faked as present; the widget is not shown): a real build in the worker
    process, GL items with the class colour, opacity and visibility; a map without labels
    clears them."""
    import pyqtgraph.opengl as gl

    from brainseg_gui.views import view3d

    monkeypatch.setattr(view3d, "opengl_problem", lambda: None)
    sv = view3d.SurfaceView()
    qtbot.addWidget(sv)
    assert isinstance(sv.gl, gl.GLViewWidget)
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[5:25, 5:25, 5:25] = 2
    lab[10:20, 10:20, 10:20] = 3
    current = {"labels": lab}
    sv.set_source(lambda: current["labels"], np.eye(4))
    with qtbot.waitSignal(sv.built, timeout=60000):
        sv.rebuild()
    assert set(sv.items) == {2, 3} and len(sv.meshes[3][1]) > 0
    sv.opacity_sliders[2].setValue(50)
    assert abs(sv.items[2].opts["color"][3] - 0.5) < 1e-6
    sv.visible_checks[3].setChecked(False)
    assert not sv.items[3].visible()
    sv.set_cursor((1, 2, 3))
    current["labels"] = np.zeros_like(lab)  # another scan, no labels yet
    sv.rebuild()
    assert not sv.items and "No labels yet" in sv.status.text()
    sv.close_pool()
    sv.rebuild()  # after closing: nothing starts again
    assert sv._pool is None
