"""The 3-D view: where OpenGL is missing (as offscreen here) it says so and nothing breaks; the
surfaces are built in a worker process after edits, and per-class visibility and opacity work."""
import numpy as np

from tests.gui.helpers import click


def test_3d_view_degrades_to_a_message_and_still_builds_surfaces(window, small_scan, qtbot):
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    win.actions["view3d"].trigger()
    sv = win.surface_view
    assert sv is not None and win.view3d_dock.isVisible()
    assert sv.gl is None and "needs OpenGL" in sv.message.text(), "offscreen Qt has no OpenGL"
    with qtbot.waitSignal(sv.built, timeout=60000):
        pass
    assert set(sv.meshes) == {1, 2, 3} and all(len(f) > 0 for _, f in sv.meshes.values())
    # an edit rebuilds them (a moment later, in the worker process), painting goes on meanwhile
    gen = sv.generation
    win.actions["tool_brush"].trigger()
    win.actions["class_3"].trigger()
    with qtbot.waitSignal(sv.built, timeout=60000):
        click(qtbot, win.views["axial"], 5, 5)
    assert sv.generation > gen
    sv.visible_checks[2].setChecked(False)
    sv.opacity_sliders[3].setValue(30)
    sv.close_pool()


def test_surface_view_draws_when_opengl_exists(qtbot, monkeypatch):
    """With OpenGL (faked as present; the widget is not shown), meshes become GL items with the
    class colour, opacity and visibility."""
    import pyqtgraph.opengl as gl

    from brainseg_gui import view3d

    monkeypatch.setattr(view3d, "opengl_problem", lambda: None)
    sv = view3d.SurfaceView()
    qtbot.addWidget(sv)
    assert isinstance(sv.gl, gl.GLViewWidget)
    verts = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32)
    sv._install(sv.generation, {1: (verts, faces), 2: (verts + 5, faces), 3: (np.zeros((0, 3)), np.zeros((0, 3)))})
    assert set(sv.items) == {1, 2}
    assert not sv.items[1].visible(), "CSF starts hidden: it would hide the brain"
    sv.opacity_sliders[2].setValue(50)
    assert abs(sv.items[2].opts["color"][3] - 0.5) < 1e-6
    sv.set_cursor((1, 2, 3))
