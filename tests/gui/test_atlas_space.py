"""The volumes dialog in native and atlas space (issue #18): atlas-space mL in the title, axis, table
and exports; OASIS's ASF gives native mL and eTIV; the atlas checkbox; a saved mask keeps the scan's
sform/qform code (or says atlas space when the user ticked it)."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from engine.io.volume import save_labels


def _scan_and_labels(tmp_path, code: int):
    """A RAS NIfTI 'brain' with the given sform/qform code, and its labels."""
    shape = (40, 44, 16)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.95] = 1
    lab[r < 0.85] = 2
    lab[r < 0.6] = 3
    aff = np.diag([1.0, 1.0, 1.5, 1.0])
    img = nib.Nifti1Image(np.choose(lab, [0, 60, 120, 200]).astype(np.float32), aff)
    img.set_sform(aff, code=code)
    img.set_qform(aff, code=code)
    scan = tmp_path / f"brain_code{code}.nii.gz"
    nib.save(img, str(scan))
    labels = tmp_path / f"brain_code{code}_fseg.nii.gz"
    save_labels(labels, lab, aff)
    return scan, labels, lab


def test_t88_volumes_are_atlas_space_ml_and_an_asf_gives_native_and_etiv(window, small_scan, tmp_path, dialogs):
    scan, labels, lab = small_scan  # small_t88_masked_gfc.hdr: OASIS atlas space
    window.open_scan(scan)
    window.open_labels(labels)
    window.actions["show_stats"].trigger()
    dlg = window._stats_dialog
    assert dlg.atlas_check.isChecked() and not dlg.atlas_check.isEnabled(), "found from the file, not a choice"
    assert "_t88_" in dlg.atlas_check.text()
    assert "atlas-space mL" in dlg.windowTitle()
    assert "atlas-space mL" in dlg.plot.getAxis("left").labelString()
    assert dlg.table.horizontalHeaderItem(2).text() == "Volume (atlas-space mL)"
    assert dlg.table.columnCount() == 4, "no native column without an ASF"
    assert "Give OASIS's ASF" in dlg.space_note.text()
    vox_ml = window.scan.voxel_volume_ml
    dlg.asf_spin.setValue(1.2)
    assert dlg.table.columnCount() == 5 and dlg.table.horizontalHeaderItem(4).text() == "Native (mL)"
    wm_atlas = (lab == 3).sum() * vox_ml
    assert float(dlg.table.item(3, 2).text()) == round(wm_atlas, 2)
    assert float(dlg.table.item(3, 4).text()) == round(wm_atlas / 1.2, 2)
    last = dlg.table.rowCount() - 1
    assert dlg.table.item(last, 0).text() == "eTIV (OASIS, 1755/ASF)" and dlg.table.item(last, 4).text() == "1462.50"
    assert "1462.5" in dlg.space_note.text()
    dialogs.save_path = str(tmp_path / "vol.csv")
    dlg.csv_button.click()
    rows = {r["class"]: r for r in csv.DictReader(open(tmp_path / "vol.csv"))}
    assert rows["wm"]["unit"] == "atlas-space mL"
    assert float(rows["wm"]["native_volume_ml"]) == pytest.approx(wm_atlas / 1.2, abs=1e-4)
    assert float(rows["etiv_oasis"]["native_volume_ml"]) == pytest.approx(1462.5)
    dialogs.save_path = str(tmp_path / "vol.json")
    dlg.json_button.click()
    data = json.loads((tmp_path / "vol.json").read_text())
    assert data["space"] == "atlas" and data["volume_unit"] == "atlas-space mL" and data["asf"] == 1.2
    assert data["etiv_oasis_ml"] == pytest.approx(1462.5)
    dlg.close()


def test_native_scan_can_be_marked_atlas_and_the_saved_mask_says_so(window, tmp_path, dialogs):
    scan, labels, _ = _scan_and_labels(tmp_path, 1)
    window.open_scan(scan)
    window.open_labels(labels)
    window.actions["show_stats"].trigger()
    dlg = window._stats_dialog
    assert not dlg.atlas_check.isChecked() and dlg.atlas_check.isEnabled() and not dlg.asf_spin.isEnabled()
    assert "atlas" not in dlg.windowTitle() and dlg.table.horizontalHeaderItem(2).text() == "Volume (mL)"
    assert dlg.plot.getAxis("left").labelString().count("mL") == 1 and "atlas" not in dlg.plot.getAxis("left").labelString()
    out = tmp_path / "native_seg.nii.gz"
    assert window.save_labels_to(out)
    assert int(nib.load(str(out)).header["sform_code"]) == 1
    dlg.atlas_check.setChecked(True)
    assert "atlas-space mL" in dlg.windowTitle() and dlg.asf_spin.isEnabled()
    assert dlg.stats["space_reason"] == "marked atlas-registered"
    marked = tmp_path / "marked_seg.nii.gz"
    assert window.save_labels_to(marked)
    assert int(nib.load(str(marked)).header["sform_code"]) == 1, "a code in the scan's header is kept"
    dlg.close()


def test_a_scan_without_a_code_marked_atlas_saves_a_template_code(window, tmp_path, dialogs):
    _, labels, lab = _scan_and_labels(tmp_path, 1)
    scan = tmp_path / "plain.hdr"  # Analyze: no sform/qform code, no _t88_ in the name
    nib.save(nib.AnalyzeImage(np.choose(lab, [0, 60, 120, 200]).astype(np.int16), np.diag([-1.0, 1.0, 1.5, 1.0])),
             str(scan))
    window.open_scan(scan)
    window.open_labels(labels)
    assert window.save_labels_to(tmp_path / "before_seg.nii.gz")
    assert int(nib.load(str(tmp_path / "before_seg.nii.gz")).header["sform_code"]) == 1
    window.actions["show_stats"].trigger()
    dlg = window._stats_dialog
    dlg.atlas_check.setChecked(True)
    assert window.save_labels_to(tmp_path / "marked_seg.nii.gz")
    hdr = nib.load(str(tmp_path / "marked_seg.nii.gz")).header
    assert int(hdr["sform_code"]) == 5 and int(hdr["qform_code"]) == 5, "NIFTI_XFORM_TEMPLATE_OTHER"
    dlg.close()
    window.actions["show_stats"].trigger()
    assert window._stats_dialog.atlas_check.isChecked(), "the mark stays with the scan"
    window._stats_dialog.close()


def test_mask_of_an_mni_scan_keeps_code_4(window, tmp_path, dialogs):
    scan, labels, _ = _scan_and_labels(tmp_path, 4)
    window.open_scan(scan)
    window.open_labels(labels)
    out = tmp_path / "mni_seg.nii.gz"
    assert window.save_labels_to(out)
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 4
    window.actions["show_stats"].trigger()
    assert "MNI" in window._stats_dialog.atlas_check.text()
    window._stats_dialog.close()
