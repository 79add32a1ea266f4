"""The main window as a user drives it: open, scroll, planes, window/level, bad input."""
import numpy as np
import pytest
from PyQt5 import QtCore

from tests.gui.helpers import click, wheel


def test_open_scroll_plane_and_window_level(window, small_scan, qtbot):
    scan, _, _ = small_scan
    assert window.open_scan(scan)
    ax = window.views["axial"]
    assert ax.geometry_.n_slices == 20 and ax.index == 10
    assert "slice 11 / 20" in ax.title.text()
    # scrolling: wheel, slider, keys
    wheel(ax, 1)
    assert ax.index == 11
    ax.slider.setValue(3)
    assert ax.index == 3 and "slice 4 / 20" in ax.title.text()
    ax.setFocus()
    qtbot.keyClick(ax, QtCore.Qt.Key_PageUp)
    assert ax.index == 13
    # the displayed image is that slice in radiological orientation
    np.testing.assert_array_equal(ax.image.image, ax.geometry_.display(window.scan.data, 13))
    assert ax.edge_labels["left"].text() == "R" and ax.edge_labels["top"].text() == "A"
    # coronal view of anisotropic voxels keeps the true aspect
    cor = window.views["coronal"]
    assert cor.geometry_.row_spacing == pytest.approx(1.2)
    # window / level
    window.view_area.histogram.item.setLevels(10, 90)
    assert ax.image.levels == pytest.approx([10, 90])
    assert window.views["sagittal"].image.levels == pytest.approx([10, 90])
    # one view with a plane switch
    window.actions["single_view"].trigger()
    window.actions["plane_coronal"].trigger()
    assert cor.isVisible() and not ax.isVisible()
    window.actions["single_view"].trigger()
    assert ax.isVisible()


def test_cursor_readout_and_linked_navigation(window, small_scan, qtbot):
    scan, labels, lab = small_scan
    window.open_scan(scan)
    window.open_labels(labels)
    ax = window.views["axial"]
    click(qtbot, ax, 20, 30)
    vox = window.cursor_voxel
    assert window.views["coronal"].index == vox[1] and window.views["sagittal"].index == vox[0]
    ax.cursorMoved.emit(vox)
    text = window.readout.text()
    assert f"voxel ({vox[0]}, {vox[1]}, {vox[2]})" in text and "intensity" in text and "label" in text


BAD_INPUTS = {
    "empty.nii": b"",
    "junk.nii": b"this is not an image at all" * 20,
    "odd_size.img": b"\x00" * 1000,
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_shows_error_and_keeps_scan(window, small_scan, tmp_path, dialogs, name):
    scan, _, _ = small_scan
    window.open_scan(scan)
    bad = tmp_path / name
    bad.write_bytes(BAD_INPUTS[name])
    assert not window.open_scan(bad)
    assert dialogs.errors and name in dialogs.errors[-1]
    assert window.scan.path == scan and window.stack.currentIndex() == 1


def test_bad_input_nan_2d_truncated_directory(window, small_scan, tmp_path, dialogs):
    import nibabel as nib

    scan, _, _ = small_scan
    window.open_scan(scan)
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii"))
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2, 2), np.float32), np.eye(4)), str(tmp_path / "five.nii"))
    trunc = tmp_path / "trunc.img"
    (tmp_path / "trunc.hdr").write_bytes(scan.read_bytes())
    trunc.write_bytes(scan.with_suffix(".img").read_bytes()[:500])
    for p in ("nan.nii", "flat.nii", "five.nii", "trunc.img", "."):
        assert not window.open_scan(tmp_path / p), p
    assert len(dialogs.errors) == 5
    assert "NaN" in dialogs.errors[0] and "2-D" in dialogs.errors[1] and "truncated" in dialogs.errors[3]
    assert "directory" in dialogs.errors[4]
    assert window.scan.path == scan


def test_headerless_img_says_which_layout(window, tmp_path, dialogs):
    data = np.zeros((176, 208, 176), ">i2")
    data[60:120, 60:140, 60:120] = 100
    p = tmp_path / "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img"
    data.ravel(order="F").tofile(p)
    assert window.open_scan(p)
    assert dialogs.infos and "176x208x176 big-endian int16" in dialogs.infos[-1]
    assert "assumed" in window.statusBar().currentMessage()


def test_recent_files_and_demo(window, small_scan):
    scan, _, _ = small_scan
    window.open_scan(scan)
    assert str(scan.resolve()) in [a.text() for a in window.recent_menu.actions()]
    window.actions["open_demo"].trigger()
    assert window.scan.shape == (176, 208, 176)


def test_shortcuts_dialog_lists_every_shortcut(window):
    from brainseg_gui.dialogs.shortcuts import ShortcutsDialog

    dlg = ShortcutsDialog(window)
    keys = [dlg.table.item(r, 0).text() for r in range(dlg.table.rowCount())]
    assert "Ctrl+Z" in keys and "B" in keys and "1" in keys and "Wheel" in keys


def test_scan_with_skull_on_is_flagged(window, tmp_path, dialogs):
    import nibabel as nib

    head = np.full((60, 70, 50), 80.0, np.float32)  # foreground up to the edges, like a whole head
    nib.save(nib.Nifti1Image(head, np.eye(4) * [4, 4, 4, 1]), str(tmp_path / "head_t88_gfc.nii"))
    assert window.open_scan(tmp_path / "head_t88_gfc.nii")
    # said in the status bar, not in a dialog: Segment handles it (brain extraction first)
    assert "skull on: Segment extracts the brain first" in window.statusBar().currentMessage()
