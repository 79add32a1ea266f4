"""The small things a clinician notices (issue #13's list), each driven through the real widgets."""
import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from brainseg_gui.files import label_file_name
from tests.gui.helpers import _send, click, wheel, widget_pos


def _width(view):
    (x0, x1), _ = view.vb.viewRange()
    return x1 - x0


def test_ctrl_wheel_zooms_gently(window, small_scan, qtbot):
    window.open_scan(small_scan[0])
    ax = window.views["axial"]
    before = _width(ax)
    for _ in range(5):
        wheel(ax, 1, QtCore.Qt.ControlModifier)
    ratio = before / _width(ax)
    assert 1.8 < ratio < 2.3, f"five clicks zoomed {ratio:.1f}x (was 8x)"


def test_readout_follows_the_wheel_and_undo(window, small_scan, qtbot):
    scan, labels, _ = small_scan
    window.open_scan(scan)
    window.open_labels(labels)
    ax = window.views["axial"]
    vp = ax.gv.viewport()
    _send(vp, QtCore.QEvent.MouseMove, widget_pos(ax, 28, 24), QtCore.Qt.NoButton, QtCore.Qt.NoButton)
    k = ax.index
    assert f", {k})" in window.readout.text()
    wheel(ax, 1)
    assert ax.index == k + 1 and f", {k + 1})" in window.readout.text(), "not stale after the wheel"
    window.actions["tool_brush"].trigger()
    window.actions["class_1"].trigger()
    click(qtbot, ax, 28, 24)
    assert "label 1 CSF" in window.readout.text()
    window.actions["undo"].trigger()
    assert "label 1 CSF" not in window.readout.text(), "not stale after undo"


def test_arrow_keys_scroll_slices_after_clicking_a_panel_button(window, small_scan, qtbot):
    window.open_scan(small_scan[0])
    ax = window.views["axial"]
    ax.setFocus()
    qtbot.mouseClick(window.tool_panel.tool_buttons["brush"], QtCore.Qt.LeftButton)
    assert window.tool_state.tool == "brush"
    k = ax.index
    qtbot.keyClick(QtWidgets.QApplication.focusWidget() or ax, QtCore.Qt.Key_Up)
    assert ax.index == k + 1


def test_the_wheel_over_a_training_plot_does_not_zoom_it(window):
    plot = window.training_panel.loss_plot
    before = plot.getViewBox().viewRange()
    pos = QtCore.QPointF(plot.width() / 2, plot.height() / 2)
    ev = QtGui.QWheelEvent(pos, plot.mapToGlobal(pos.toPoint()), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120 * 5),
                           QtCore.Qt.NoButton, QtCore.Qt.NoModifier, QtCore.Qt.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(plot.viewport(), ev)
    assert plot.getViewBox().viewRange() == before


def test_one_view_keeps_window_level_and_review_in_sight(window, small_scan):
    window.open_scan(small_scan[0])
    window.actions["single_view"].trigger()
    assert window.view_area.hist_box.isVisible() and window.view_area.review_box.isVisible()
    assert not window.views["coronal"].isVisible()


def test_first_time_user_is_told_how_to_segment(window, small_scan):
    window.open_scan(small_scan[0])
    assert "Ctrl+R" in window.view_area.next_step.text()


def test_volumes_dialog_axis_and_csv_name(window, small_scan, tmp_path, dialogs):
    scan, labels, _ = small_scan
    window.open_scan(scan)
    window.open_labels(labels)
    window.actions["show_stats"].trigger()
    dlg = window._stats_dialog
    axis = dlg.plot.getAxis("left")
    assert "kmL" not in axis.labelString() and "mL" in axis.labelString()
    dialogs.save_path = str(tmp_path / "volumes")  # typed without the extension
    dlg.csv_button.click()
    assert (tmp_path / "volumes.csv").exists() and "Saved" in dlg.saved_label.text()
    dlg.close()


def test_save_as_keeps_one_format_suffix():
    assert label_file_name("/d/labels.nii.hdr") == "/d/labels.hdr"
    assert label_file_name("/d/labels.nii.gz.hdr") == "/d/labels.hdr"
    assert label_file_name("/d/labels.hdr.nii.gz") == "/d/labels.nii.gz"
    assert label_file_name("/d/labels.nii.gz") == "/d/labels.nii.gz"


def test_uncertainty_has_a_legend_and_plain_words(enet_window, small_scan, qtbot):
    win = enet_window
    win.open_scan(small_scan[0])
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000):
        win.actions["segment"].trigger()
    assert win.view_area.legend.isVisible() and "How unsure" in win.view_area.legend.findChildren(QtWidgets.QLabel)[0].text()
    lst = win.segment_panel.uncertain_list
    assert lst.isVisible() and lst.count() > 0 and lst.item(0).text().endswith("likely wrong")
    assert lst.item(0).text().startswith("axial ") and "voxels (" in lst.item(0).text()
    assert "expected to be labelled wrongly" in lst.item(0).toolTip()  # what the number means
    ks = sorted(lst.item(i).data(QtCore.Qt.UserRole) for i in range(lst.count()))
    assert min(np.diff(ks), default=3) >= 3, f"spread over the brain, not neighbours: {ks}"
    # the heat map's colour is far from every class colour
    from brainseg_gui.views.slice_view import UNSURE_RGB
    from engine.core.classes import tissue_classes

    for tc in tissue_classes()[1:]:
        assert np.linalg.norm(np.subtract(UNSURE_RGB, tc.rgb)) > 150
