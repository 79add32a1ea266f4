"""Correcting labels with the real widgets: brush strokes, eraser, fill, protection, undo/redo,
the unsaved marker, saving and exporting masks that nibabel reads back with the scan's affine."""
import nibabel as nib
import numpy as np
from PyQt5 import QtCore

from tests.gui.helpers import click, drag


def _open(window, small_scan):
    scan, labels, lab = small_scan
    window.open_scan(scan)
    window.open_labels(labels)
    return window.views["axial"], lab


def test_brush_stroke_undo_redo(window, small_scan, qtbot):
    ax, lab = _open(window, small_scan)
    window.actions["tool_brush"].trigger()
    window.actions["class_1"].trigger()
    window.tool_panel.size_spin.setValue(3)
    k = ax.index
    before = window.labelmap.labels.copy()
    drag(qtbot, ax, [(10, 10), (10, 40), (30, 40)])  # two long segments: no gaps allowed
    after = window.labelmap.labels
    changed = np.argwhere(after != before)
    assert changed.size and (changed[:, 2] == k).all(), "only the shown slice changes"
    disp = ax.geometry_.display(after, k)
    assert (disp[10, 10:41] == 1).all() and (disp[10:31, 40] == 1).all()
    assert window.labelmap.undo_steps == 1, "a whole stroke is one undo step"
    assert window.isWindowModified() and "1 edit" in window.edit_label.text()
    # the overlay shows the stroke
    assert ax._overlay_buf[10, 25] == 1
    window.actions["undo"].trigger()
    np.testing.assert_array_equal(window.labelmap.labels, before)
    assert ax._overlay_buf[10, 25] == ax.geometry_.display(before, k)[10, 25]
    window.actions["redo"].trigger()
    assert (ax.geometry_.display(window.labelmap.labels, k)[10, 10:41] == 1).all()


def test_keyboard_shortcuts_pick_tool_and_class(window, small_scan, qtbot):
    _open(window, small_scan)
    qtbot.keyClick(window, QtCore.Qt.Key_B)
    qtbot.keyClick(window, QtCore.Qt.Key_3)
    assert window.tool_state.tool == "brush" and window.tool_state.value == 3
    qtbot.keyClick(window, QtCore.Qt.Key_BracketRight)
    assert window.tool_panel.size_spin.value() == 7
    qtbot.keyClick(window, QtCore.Qt.Key_E)
    assert window.tool_state.tool == "eraser"


def test_eraser_and_protected_painting(window, small_scan, qtbot):
    ax, lab = _open(window, small_scan)
    k = ax.index
    g = ax.geometry_
    window.tool_panel.size_spin.setValue(60)
    window.actions["tool_brush"].trigger()
    window.actions["class_1"].trigger()
    window.tool_panel.protect_combo.setCurrentIndex(window.tool_panel.protect_combo.findData(3))  # only WM
    before = g.display(window.labelmap.labels, k).copy()
    click(qtbot, ax, 28, 24)
    after = g.display(window.labelmap.labels, k)
    assert (after[before == 3] == 1).any(), "white matter under the brush became CSF"
    assert (after[before != 3] == before[before != 3]).all(), "other classes untouched"
    window.tool_panel.protect_combo.setCurrentIndex(0)
    window.actions["tool_eraser"].trigger()
    window.tool_panel.size_spin.setValue(4)
    click(qtbot, ax, 28, 24)
    assert g.display(window.labelmap.labels, k)[28, 24] == 0


def test_fill_and_click_that_changes_nothing(window, small_scan, qtbot):
    ax, lab = _open(window, small_scan)
    k, g = ax.index, ax.geometry_
    window.actions["tool_fill"].trigger()
    window.actions["class_2"].trigger()
    disp = g.display(window.labelmap.labels, k)
    r, c = np.argwhere(disp == 3)[0]
    click(qtbot, ax, r, c)
    after = g.display(window.labelmap.labels, k)
    assert (after[disp == 3] == 2).all() and window.labelmap.undo_steps == 1
    click(qtbot, ax, r, c)  # same class already: nothing changes, no step
    assert window.labelmap.undo_steps == 1


def test_save_and_export_read_back_with_scan_affine(window, small_scan, qtbot, tmp_path, dialogs):
    ax, lab = _open(window, small_scan)
    window.actions["tool_brush"].trigger()
    window.actions["class_1"].trigger()
    drag(qtbot, ax, [(5, 5), (5, 20)])
    for name in ("mask.nii.gz", "mask_fseg.hdr"):
        dialogs.save_path = str(tmp_path / name)
        window.actions["save_labels_as"].trigger()
        img = nib.load(str(tmp_path / name))
        np.testing.assert_allclose(img.affine, window.scan.affine, atol=1e-5)
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data.reshape(window.scan.shape), window.labelmap.labels)
    assert not window.isWindowModified()
    assert nib.load(str(tmp_path / "mask_fseg.hdr")).shape == window.scan.shape + (1,), "4-D singleton like OASIS"
    import imageio.v2 as imageio
    from PyQt5 import QtCore

    from engine.core.classes import tissue_classes

    # colour images over the scan, as the axial view shows them
    dialogs.directory = str(tmp_path / "png")
    window.actions["export_png"].trigger()
    dlg = window.png_dialog
    assert dlg.plane.currentData() == "axial" and dlg.over_scan.isChecked()
    qtbot.mouseClick(dlg.export_button, QtCore.Qt.LeftButton)
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == window.scan.shape[2] and pngs[0].name == "axial_001.png"
    shown = imageio.imread(pngs[ax.index])
    g = ax.geometry_
    disp = g.display(window.labelmap.labels, ax.index)
    assert shown.shape[:2] == disp.shape and shown.shape[2] == 3
    csf = np.array(tissue_classes()[1].rgb, float)
    tinted = shown[disp == 1].astype(float)
    grey = shown[disp == 0].astype(float)
    assert len(tinted) and np.abs(tinted - tinted.mean(axis=1, keepdims=True)).mean() > 5, "coloured"
    assert np.abs(grey - grey.mean(axis=1, keepdims=True)).max() < 1e-6, "the scan is grey"
    assert np.linalg.norm(tinted.mean(axis=0) / 255 - csf / 255) < np.linalg.norm(grey.mean(axis=0) / 255 - csf / 255)
    assert f"Wrote {len(pngs)} PNG images" in window.statusBar().currentMessage()
    # a montage of another plane, and the class values for training data
    dialogs.directory = str(tmp_path / "montage")
    window.actions["export_png"].trigger()
    dlg = window.png_dialog
    dlg.plane.setCurrentIndex(dlg.plane.findData("coronal"))
    dlg.montage.setChecked(True)
    qtbot.mouseClick(dlg.export_button, QtCore.Qt.LeftButton)
    assert [p.name for p in (tmp_path / "montage").glob("*.png")] == ["coronal_montage.png"]
    dialogs.directory = str(tmp_path / "values")
    window.actions["export_png"].trigger()
    window.png_dialog.values.setChecked(True)
    qtbot.mouseClick(window.png_dialog.export_button, QtCore.Qt.LeftButton)
    vals = sorted((tmp_path / "values").glob("*.png"))
    np.testing.assert_array_equal(imageio.imread(vals[ax.index]), window.labelmap.labels[:, :, ax.index])


def test_saving_an_oblique_scan_as_analyze_asks_first(window, qtbot, tmp_path, dialogs):
    """Analyze cannot store a NIfTI scan's rotation: the user is told before anything is written,
    and answering no writes nothing and keeps the edits unsaved."""
    data = np.zeros((24, 28, 6), np.float32)
    data[4:20, 5:24, :] = 100.0
    angle = np.deg2rad(20)
    affine = np.array([[np.cos(angle), -np.sin(angle), 0, -10], [np.sin(angle), np.cos(angle), 0, 5],
                       [0, 0, 1.2, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "oblique.nii.gz"))
    window.open_scan(tmp_path / "oblique.nii.gz")
    ax = window.views["axial"]
    window.actions["tool_brush"].trigger()
    drag(qtbot, ax, [(8, 8), (8, 14)])
    assert window.isWindowModified()
    dialogs.yes = False
    dialogs.save_path = str(tmp_path / "mask.hdr")
    window.actions["save_labels_as"].trigger()
    assert "orientation" in dialogs.questions[-1] and "NIfTI" in dialogs.questions[-1]
    assert not (tmp_path / "mask.hdr").exists() and window.isWindowModified()
    dialogs.yes = True
    window.actions["save_labels_as"].trigger()
    assert (tmp_path / "mask.hdr").exists() and not window.isWindowModified()
    dialogs.save_path = str(tmp_path / "mask.nii.gz")  # NIfTI keeps it: no question
    asked = len(dialogs.questions)
    window.actions["save_labels_as"].trigger()
    assert len(dialogs.questions) == asked
    np.testing.assert_allclose(nib.load(str(tmp_path / "mask.nii.gz")).affine, affine, atol=1e-5)


def test_quit_with_unsaved_edits_asks(window, small_scan, qtbot, dialogs):
    ax, _ = _open(window, small_scan)
    window.actions["tool_brush"].trigger()
    click(qtbot, ax, 20, 20)
    dialogs.save_discard = "cancel"
    assert not window.close()
    assert dialogs.questions and "unsaved" in dialogs.questions[-1]
    assert window.isVisible()


def test_volume_statistics_dialog_matches_numpy(window, small_scan, tmp_path, dialogs):
    import json

    _open(window, small_scan)
    window.actions["show_stats"].trigger()
    dlg = window._stats_dialog
    lab = window.labelmap.labels
    vox_ml = window.scan.voxel_volume_ml
    assert abs(vox_ml - 0.0012) < 1e-9
    for row, value in ((1, 1), (2, 2), (3, 3)):
        assert dlg.table.item(row, 1).text() == f"{int((lab == value).sum()):,}"
        assert float(dlg.table.item(row, 2).text()) == round((lab == value).sum() * vox_ml, 2)
    dialogs.save_path = str(tmp_path / "vol.json")
    dlg.json_button.click()
    data = json.loads((tmp_path / "vol.json").read_text())
    assert abs(data["volumes_ml"]["wm"] - (lab == 3).sum() * vox_ml) < 1e-9
    dialogs.save_path = str(tmp_path / "vol.csv")
    dlg.csv_button.click()
    assert (tmp_path / "vol.csv").read_text().startswith("class,name,voxels,volume_ml,icv_fraction")
    assert len(dlg.plot.getPlotItem().items) >= 1, "bar chart drawn"
    dlg.close()
