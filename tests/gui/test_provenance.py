"""Labels you can trust (issue #19), through the real window: previews never reach the recovery
file, clean-ups are not corrections, fill between on a segmented scan interpolates the user's
strokes only, smoothing keeps the brain's outline, recovery files belong to one scan's content."""
import numpy as np
import pytest
from PyQt5 import QtCore

from engine.io import recovery
from engine.labels.labelmap import CLEANUP, INTERPOLATED, NETWORK, STROKE
from tests.gui.helpers import drag


def _wait_autosaved(qtbot, win):
    win.session.autosave()
    qtbot.waitUntil(lambda: win.session.autosave_state in ("saved", "failed"), timeout=5000)
    assert win.session.autosave_state == "saved", win.session.autosave_text


def _stroke_two_axial_slices(qtbot, win, value=3, rows=(20, 20)):
    """A white-matter blob drawn on axial slices 4 and 12 (array), over labels that fill them."""
    win.actions["tool_brush"].trigger()
    win.actions[f"class_{value}"].trigger()
    ax = win.views["axial"]
    win.tool_panel.size_spin.setValue(6)
    for k in (4, 12):
        ax.set_slice(k)
        drag(qtbot, ax, [(rows[0], 6), (rows[1], 9)])


def test_a_cancelled_preview_never_reaches_the_recovery_file(window, small_scan, qtbot, dialogs):
    """Preview a fill between, autosave (the GUI does on idle and on slice changes), 'crash': the
    recovery offered on reopening holds the user's strokes, not the preview. After Cancel, too."""
    from brainseg_gui.session import Session

    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    _stroke_two_axial_slices(qtbot, win)
    committed = win.labelmap.labels.copy()
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    assert win._preview and (win.labelmap.labels != committed).any(), dlg.info.text()
    _wait_autosaved(qtbot, win)  # written while the preview shows
    other = Session(autosave_idle_ms=10**6)  # the app started again after a kill
    report = other.open_scan(scan)
    assert report.recovery is not None
    other.restore_recovery(report.recovery)
    np.testing.assert_array_equal(other.labelmap.labels, committed)
    assert other.labelmap.count_origin(INTERPOLATED) == 0 and other.labelmap.edited_axial_slices() == [4, 12]
    other.close_scan()  # (discards the file; the window writes it again below)
    qtbot.mouseClick(dlg.cancel_button, QtCore.Qt.LeftButton)
    win.labelmap.paint("axial", 8, [(30, 30)], 1, 2)  # one more real edit after the cancel
    _wait_autosaved(qtbot, win)
    info = recovery.find_recovery(scan, key=win.session.scan_key)
    restored = recovery.load_recovery(info)[0]
    np.testing.assert_array_equal(restored, win.labelmap.labels)


def test_a_clean_up_is_replaced_by_the_next_segmentation_and_the_message_says_so(enet_window, small_scan, qtbot,
                                                                                 dialogs):
    win = enet_window
    win.open_scan(small_scan[0])
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000):
        win.actions["segment"].trigger()
    lm = win.labelmap
    dialogs.number = 1.5
    win.actions["smooth_labels"].trigger()
    smoothed = lm.origin == CLEANUP
    assert smoothed.sum() > 0, "the clean-up changed something"
    n_questions = len(dialogs.questions)
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000) as blocker:
        win.actions["segment"].trigger()
    assert len(dialogs.questions) == n_questions, "a clean-up is not a correction: no question"
    res = blocker.args[0]
    np.testing.assert_array_equal(lm.labels, res.labels)  # the new prediction everywhere
    assert lm.count_origin(CLEANUP) == 0 and (lm.origin == NETWORK).all()
    msg = win.statusBar().currentMessage()
    assert "set by a clean-up" in msg and "apply the clean-up again" in msg, msg


def test_a_coronal_stroke_does_not_make_axial_slices_drawn_and_fill_between_keeps_the_labels_between(
        window, small_scan, qtbot):
    win = window
    scan, labels, lab = small_scan
    win.open_scan(scan)
    win.open_labels(labels)  # labels on every slice, as after a segmentation
    win.actions["tool_brush"].trigger()
    win.actions["class_1"].trigger()
    co = win.views["coronal"]
    rows = co.geometry_.display_shape[0]
    drag(qtbot, co, [(2, 20), (rows - 3, 20)])  # crosses every axial slice
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    assert dlg.source.currentData() == "corrected" and dlg.plane.currentData() == "coronal"  # the view used
    assert "1 coronal slice you drew on" in dlg.info.text(), dlg.info.text()
    dlg.plane.setCurrentIndex(dlg.plane.findData("axial"))
    assert "0 axial slices you drew on" in dlg.info.text(), dlg.info.text()
    dlg.reject()
    win.actions["undo"].trigger()
    _stroke_two_axial_slices(qtbot, win)
    before = win.labelmap.labels.copy()
    drawn = win.labelmap.origin == STROKE[win.axial_axis]
    win.actions["fill_between"].trigger()
    dlg = win.fill_dialog
    assert (dlg.first.value(), dlg.last.value()) == (5, 13) and "7 slices between them (6-12)" in dlg.info.text()
    qtbot.mouseClick(dlg.preview_button, QtCore.Qt.LeftButton)
    qtbot.mouseClick(dlg.apply_button, QtCore.Qt.LeftButton)
    lm = win.labelmap
    changed = lm.labels != before
    assert changed.any() and (lm.labels[changed] == 3).all(), "only the drawn white matter is interpolated"
    assert not changed[:, :, :5].any() and not changed[:, :, 12:].any()
    # the labels between, away from the strokes' path, are the ones opened - not wiped
    path = drawn.any(axis=2)
    for k in range(5, 12):
        np.testing.assert_array_equal(lm.labels[:, :, k][~path], lab[:, :, k][~path])
    assert (lm.origin[changed] == INTERPOLATED).all() and lm.edited_axial_slices() == [4, 12]


def test_smoothing_keeps_the_brain_outline_unless_asked(window, small_scan, qtbot, dialogs):
    win = window
    scan, labels, lab = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    lm = win.labelmap
    dialogs.number = 2.0
    win.actions["smooth_labels"].trigger()
    assert (lm.labels != lab).any(), "the classes inside were smoothed"
    np.testing.assert_array_equal(lm.labels > 0, lab > 0)
    msg = win.statusBar().currentMessage()
    assert "outline +0.0%" in msg, msg
    win.actions["undo"].trigger()
    dialogs.smooth_outline = True
    win.actions["smooth_labels"].trigger()
    assert ((lm.labels > 0) != (lab > 0)).any(), "asked to: the outline is smoothed too"
    assert "outline " in win.statusBar().currentMessage()


@pytest.mark.parametrize("same_content", [True, False])
def test_recovery_belongs_to_the_scan_content_not_its_path(window, small_scan, qtbot, dialogs, same_content):
    """Another scan saved under the same name and shape (every OASIS scan is 176x208x176) is not
    offered the first one's edits; the same content is, even after a rewrite of the file."""
    import nibabel as nib

    win = window
    scan = small_scan[0]
    win.open_scan(scan)
    win.session.ensure_labelmap()
    win.labelmap.paint("axial", 8, [(20, 20)], 3, 2)
    _wait_autosaved(qtbot, win)
    key = win.session.scan_key
    img = nib.load(str(scan))
    data = np.asanyarray(img.dataobj).copy()
    if not same_content:
        data[10:20, 10:20] += 7  # another person's scan, same name and shape
    nib.save(nib.AnalyzeImage(data, img.affine, header=img.header), str(scan))
    from brainseg_gui.session import Session

    other = Session(autosave_idle_ms=10**6)
    report = other.open_scan(scan)
    assert (other.scan_key == key) == same_content
    assert (report.recovery is not None) == same_content


def test_open_dialogs_start_in_the_scans_folder(window, small_scan, dialogs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the current directory is not the scan's folder
    win = window
    win.actions["open_scan"].trigger()  # nothing opened yet: wherever (no recent scan in this fresh home)
    win.open_scan(small_scan[0])
    win.actions["open_labels"].trigger()
    win.actions["open_scan"].trigger()
    assert dialogs.open_dirs[1:] == [str(small_scan[0].parent)] * 2
    win.session.close_scan()
    win.actions["open_scan"].trigger()  # closed: the last scan's folder, from Open recent
    assert dialogs.open_dirs[-1] == str(small_scan[0].parent.resolve())



def test_a_clean_up_message_fits_the_status_bar(window, small_scan, dialogs):
    """Issue #19: status messages were cut off beside the edit count and the autosave state."""
    win = window
    win.resize(1400, 900)  # the default size
    win.open_scan(small_scan[0])
    win.open_labels(small_scan[1])
    win.labelmap.paint("axial", 8, [(20, 20)], 3, 1)  # an edit: the edit count shows
    dialogs.number = 1.5
    win.actions["smooth_labels"].trigger()
    sb = win.statusBar()
    msg = sb.currentMessage()
    assert "outline" in msg
    room = sb.width() - sum(w.sizeHint().width() for w in (win.edit_label, win.autosave_label, win.readout)
                            if w.isVisible()) - 40
    assert sb.fontMetrics().horizontalAdvance(msg) <= room, (msg, room)
