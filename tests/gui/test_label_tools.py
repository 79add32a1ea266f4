"""The Labels menu driven through the real window: fill between slices with its preview, remove
small islands, keep the largest piece, smoothing; each is one undo step."""
import numpy as np
from PyQt5 import QtCore

from tests.gui.helpers import click, drag


def _paint_disk(qtbot, win, k, centre, size=14):
    ax = win.views["axial"]
    ax.set_slice(k)
    win.tool_panel.size_spin.setValue(size)
    r, c = centre
    drag(qtbot, ax, [(r, c), (r, c + 1)])


def _two_drawn_slices(qtbot, win, small_scan):
    """The small scan with a big grey-matter disk drawn on axial slice 4 and a small one on 12."""
    win.open_scan(small_scan[0])
    win.actions["tool_brush"].trigger()
    win.actions["class_2"].trigger()
    _paint_disk(qtbot, win, 4, (28, 24), size=20)
    _paint_disk(qtbot, win, 12, (28, 24), size=8)


def test_fill_between_previews_locks_editing_then_applies_as_one_step(window, small_scan, qtbot):
    win = window
    _two_drawn_slices(qtbot, win, small_scan)
    lm = win.labelmap
    z = win.axial_axis
    drawn = lm.labels.copy()
    assert drawn[:, :, 8].sum() == 0 and lm.undo_steps == 2
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    assert dlg.isVisible() and dlg.plane.currentData() == "axial"
    assert (dlg.first.value(), dlg.last.value()) == (5, 13), "1-based, as the view titles"
    assert "7 slices between them (6-12)" in dlg.info.text()
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    assert (lm.labels[:, :, 8] == 2).sum() > 0, "the preview is in the views"
    assert not win.actions["tool_brush"].isEnabled() and not win.actions["undo"].isEnabled()
    assert win.tool_state.tool == "navigate"
    areas = [(lm.labels[:, :, k] == 2).sum() for k in range(4, 13)]
    assert all(a >= b for a, b in zip(areas, areas[1:])), "a big disk shrinks to a small one"
    qtbot.mouseClick(dlg.cancel_button, QtCore.Qt.LeftButton)
    np.testing.assert_array_equal(lm.labels, drawn)
    assert not lm.can_redo and lm.undo_steps == 2 and win.actions["tool_brush"].isEnabled()
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    qtbot.mouseClick(dlg.apply_button, QtCore.Qt.LeftButton)
    assert not dlg.isVisible() and lm.undo_steps == 3 and (lm.labels[:, :, 8] == 2).any()
    assert "Filled between slices" in win.statusBar().currentMessage()
    assert z == 2
    win.actions["undo"].trigger()
    np.testing.assert_array_equal(lm.labels, drawn)


def test_fill_between_says_why_when_there_is_nothing_to_fill(window, small_scan, qtbot):
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)  # every slice holds labels
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    # labelled, not drawn: the user's own slices are what counts, and there are none
    assert dlg.source.currentData() == "corrected"
    assert "0 axial slices you drew on in this range" in dlg.info.text()
    dlg.source.setCurrentIndex(dlg.source.findData("labelled"))
    assert "no other slice between them: nothing to fill" in dlg.info.text()
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    assert win.labelmap.undo_steps == 0 and win.actions["tool_brush"].isEnabled()
    dlg.reject()


def test_islands_largest_and_smoothing_are_each_one_undo_step(window, small_scan, qtbot, dialogs):
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    win.actions["tool_brush"].trigger()
    win.actions["class_1"].trigger()
    win.tool_panel.size_spin.setValue(1)
    ax = win.views["axial"]
    ax.set_slice(10)
    click(qtbot, ax, 28, 24)  # a one-voxel CSF speck in the white matter
    lm = win.labelmap
    speck = np.argwhere(lm.labels != lm.reference())
    assert len(speck) == 1
    x, y, zz = speck[0]
    dialogs.number = 5
    win.actions["remove_islands"].trigger()
    msg = win.statusBar().currentMessage()
    assert lm.labels[x, y, zz] == 3 and ": 1 voxel;" in msg and "outline +0.0%" in msg, msg
    win.actions["undo"].trigger()
    assert lm.labels[x, y, zz] == 1
    dialogs.number = None  # cancelled: nothing happens
    steps = lm.undo_steps
    win.actions["remove_islands"].trigger()
    assert lm.undo_steps == steps
    lm.labels[0:2, 0:2, 0:2] = 2  # a detached piece in a corner
    win.actions["keep_largest"].trigger()
    assert (lm.labels[0:2, 0:2, 0:2] == 0).all() and lm.undo_steps == steps + 1
    before = lm.labels.copy()
    dialogs.number = 1.5
    win.actions["smooth_labels"].trigger()
    assert lm.undo_steps == steps + 2 and (lm.labels != before).any()
    win.actions["undo"].trigger()
    np.testing.assert_array_equal(lm.labels, before)


def test_threshold_painting_limits_the_brush_and_shows_the_range(window, small_scan, qtbot):
    """With 'Only intensities from' on, a brush stroke across tissue boundaries changes only
    voxels whose intensity is in the range; the views tint them and the histogram shows the band."""
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    panel = win.tool_panel
    win.actions["tool_brush"].trigger()
    win.actions["class_1"].trigger()
    panel.size_spin.setValue(10)
    panel.set_range(110, 130, enable=True)  # the grey-matter shell of the phantom is 120
    assert win.tool_state.intensity_range == (110.0, 130.0)
    ax = win.views["axial"]
    assert ax.range_item.isVisible() and win.view_area.range_region.isVisible()
    before = win.labelmap.labels.copy()
    rows = ax.geometry_.display_shape[0]
    drag(qtbot, ax, [(rows // 2, 2), (rows // 2, 45)])  # across background, GM, WM, GM
    changed = win.labelmap.labels != before
    assert changed.any()
    vals = win.scan.data[changed]
    assert ((vals >= 110) & (vals <= 130)).all(), "only in-range voxels were painted"
    assert (before[changed] == 2).all()
    # the band on the histogram moves the range
    win.view_area.range_region.setRegion((190, 210))
    win.view_area.range_region.sigRegionChangeFinished.emit(win.view_area.range_region)
    assert win.tool_state.intensity_range == (190.0, 210.0)
    panel.range_check.setChecked(False)
    assert win.tool_state.intensity_range is None and not ax.range_item.isVisible()


def test_corrections_are_counted_in_the_plane_they_were_made_in(window, small_scan, qtbot):
    """Three axial strokes and one coronal stroke: '4 edits on 3 axial + 1 coronal slices', and
    fine-tuning learns from each in its own plane."""
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    win.actions["tool_brush"].trigger()
    win.actions["class_1"].trigger()
    ax, co = win.views["axial"], win.views["coronal"]
    for k in (6, 9, 12):
        ax.set_slice(k)
        click(qtbot, ax, 20, 20)
    rows = co.geometry_.display_shape[0]
    drag(qtbot, co, [(2, 20), (rows - 3, 20)])  # crosses every axial slice
    assert win.edit_label.text().startswith("4 edits on 3 axial + 1 coronal slices")
    assert win.labelmap.edited_axial_slices() == [6, 9, 12]
    panel = win.training_panel
    panel.update_state()
    assert "4 slices to learn from (3 axial, 1 coronal)" in panel.status.text()
    assert panel.plane_slices_to_learn() == {"axial": [6, 9, 12], "coronal": [co.index]}


def test_a_preview_is_taken_back_when_another_scan_opens_and_range_edits_update_it(window, small_scan, qtbot,
                                                                                 dialogs):
    """Review findings: opening a scan while a preview shows takes the preview back and unlocks
    editing; editing the range after a preview takes it back; cancelling leaves a saved map saved;
    the brush still chosen paints on the next scan at once."""
    win = window
    _two_drawn_slices(qtbot, win, small_scan)
    win.labelmap.mark_clean()
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    assert win._preview, dlg.info.text()
    assert not win.actions["save_labels"].isEnabled()
    dlg.first.setValue(dlg.first.value() - 1)  # the range changed: the preview is out of date
    assert not win._preview and dlg.preview_atom is None and win.labelmap.is_clean
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    assert win._preview
    win.open_scan(small_scan[0])  # e.g. from Open recent, with the preview still showing
    assert not win._preview and win.actions["tool_brush"].isEnabled() and not win.session.preview_active
    win.actions["tool_brush"].trigger()
    win.open_scan(small_scan[0])  # the brush still chosen
    assert win.labelmap is not None, "the brush, still chosen, has a label map to paint on"
