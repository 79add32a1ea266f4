"""Drive SliceView with real Qt mouse events (QTest.mouseMove cannot carry a held button)."""
from PyQt5 import QtCore, QtGui, QtWidgets

MOVE_INTERVAL_MS = 25


def widget_pos(view, row: float, col: float) -> QtCore.QPoint:
    """Viewport position of display pixel centre (row, col) of a SliceView."""
    g = view.geometry_
    scene = view.vb.mapViewToScene(QtCore.QPointF((col + 0.5) * g.col_spacing, (row + 0.5) * g.row_spacing))
    return view.gv.mapFromScene(scene)


def _send(widget, etype, pos, button, buttons, modifiers=QtCore.Qt.NoModifier):
    ev = QtGui.QMouseEvent(etype, QtCore.QPointF(pos), widget.mapToGlobal(pos), button, buttons, modifiers)
    QtWidgets.QApplication.sendEvent(widget, ev)


def drag(qtbot, view, points, button=QtCore.Qt.LeftButton, modifiers=QtCore.Qt.NoModifier):
    """Press at points[0], move through the others, release at the last (display pixel coords)."""
    vp = view.gv.viewport()
    pos = [widget_pos(view, r, c) for r, c in points]
    _send(vp, QtCore.QEvent.MouseMove, pos[0], QtCore.Qt.NoButton, QtCore.Qt.NoButton, modifiers)
    _send(vp, QtCore.QEvent.MouseButtonPress, pos[0], button, button, modifiers)
    for p in pos[1:]:
        qtbot.wait(MOVE_INTERVAL_MS)  # pyqtgraph drops moves closer than its rate limit
        _send(vp, QtCore.QEvent.MouseMove, p, QtCore.Qt.NoButton, button, modifiers)
    _send(vp, QtCore.QEvent.MouseButtonRelease, pos[-1], button, QtCore.Qt.NoButton, modifiers)
    qtbot.wait(10)


def click(qtbot, view, row, col, button=QtCore.Qt.LeftButton):
    vp = view.gv.viewport()
    p = widget_pos(view, row, col)
    _send(vp, QtCore.QEvent.MouseMove, p, QtCore.Qt.NoButton, QtCore.Qt.NoButton)
    _send(vp, QtCore.QEvent.MouseButtonPress, p, button, button)
    _send(vp, QtCore.QEvent.MouseButtonRelease, p, button, QtCore.Qt.NoButton)
    qtbot.wait(10)


def open_with_brush(win, small_scan, value: int = 1):
    """Open the small scan and its labels, and pick the brush painting class `value` (CSF)."""
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    win.actions["tool_brush"].trigger()
    win.actions[f"class_{value}"].trigger()


def wheel(view, steps: int, modifiers=QtCore.Qt.NoModifier):
    vp = view.gv.viewport()
    pos = QtCore.QPointF(vp.width() / 2, vp.height() / 2)
    ev = QtGui.QWheelEvent(pos, vp.mapToGlobal(pos.toPoint()), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120 * steps),
                           QtCore.Qt.NoButton, modifiers, QtCore.Qt.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(vp, ev)
