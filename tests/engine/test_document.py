"""The engine-level document (issue #19): one way to open a scan and say what was found, shared by
the GUI's Session, the CLI and batch; the merge rule, saving and the recovery snapshot without Qt."""
import nibabel as nib
import numpy as np
import pytest

from engine.document import ScanDocument, open_scan
from engine.io.volume import VolumeWriteError
from engine.labels.labelmap import CLEANUP


def _head(tmp_path, codes=("P", "I", "R"), zooms=(1.0, 1.0, 1.0), name="scan.nii.gz"):
    """An asymmetric blob brain stored in the given axis codes."""
    shape = (40, 48, 36)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x - 0.15) ** 2 + y ** 2 + (z * 0.8) ** 2)
    img = np.where(r < 0.8, 100.0, 0.0) + np.where(r < 0.5, 80.0, 0.0)
    aff = nib.orientations.inv_ornt_aff(nib.orientations.axcodes2ornt(codes), shape)
    aff[:3, :3] = aff[:3, :3] @ np.diag(zooms)
    p = tmp_path / name
    nib.save(nib.Nifti1Image(img.astype(np.float32), aff), str(p))
    return p


def test_facts_name_a_reorientation_as_such(tmp_path):
    doc = open_scan(_head(tmp_path))
    facts = doc.facts(check_skull=False)
    assert facts.flags == [], facts.flags  # a lossless reorientation is no QC matter (batch called it "resampled")
    assert facts.of("network")[0].text.startswith("reoriented ") and "resampled" not in facts.of("network")[0].text
    ras = open_scan(_head(tmp_path, ("R", "A", "S"), name="ras.nii.gz"))  # the usual BIDS / dcm2niix layout
    assert ras.facts(check_skull=False).flags == []
    doc2 = open_scan(_head(tmp_path, ("L", "A", "S"), (1.0, 1.0, 1.5), "thick.nii.gz"))
    assert doc2.facts(check_skull=False).flags == ["resampled for the network"]
    lines = doc2.facts(check_skull=False).lines("thick.nii.gz")
    assert lines[0].startswith("note: thick.nii.gz: resampled 1x1x1.5 mm -> 1 mm")


def test_batch_and_the_document_say_the_same(tmp_path, tiny_model_dir):
    from engine.batch import ScanItem, process_scan

    p = _head(tmp_path)
    row = process_scan(ScanItem(key="s1", subject="s1", session="", path=str(p)), str(tmp_path / "out"), str(tiny_model_dir))
    assert row["status"] == "ok", row["error"]
    assert "resampled" not in row["qc_flags"] and "reoriented" not in row["qc_flags"], row["qc_flags"]


def test_merge_rule_saving_and_snapshot(tmp_path):
    p = _head(tmp_path)
    doc = open_scan(p)
    lm = doc.ensure_labelmap()
    lm.paint("axial", 10, [(20, 20)], 2, 1)
    lm.apply_volume(np.full(doc.scan.shape, 3, np.uint8), "islands", user=False)  # a (crude) clean-up
    pred = np.full(doc.scan.shape, 2, np.uint8)
    atom = doc.land_prediction(pred, None)
    assert atom.replaced_cleanup > 0 and lm.count_origin(CLEANUP) == 0
    with pytest.raises(VolumeWriteError, match="own file"):
        doc.save_labels(p)
    lm.show_preview(np.zeros(doc.scan.shape, np.uint8), "fill between")
    snap = doc.snapshot()
    assert (snap["labels"] == 2).sum() > 0, "the snapshot holds the committed labels, not the preview"
    assert snap["key"] == doc.key == ScanDocument(doc.scan).key
    out = tmp_path / "labels.nii.gz"
    lm.cancel_preview()
    doc.save_labels(out)
    assert lm.is_clean and doc.labels_path == out


def test_a_mask_of_an_mni_scan_keeps_sform_code_4(tmp_path):
    """Saved masks said code 1 (scanner) when the scan said 4 (MNI): the space was lost."""
    p = _head(tmp_path, ("L", "A", "S"), name="mni.nii.gz")
    img = nib.load(str(p))
    img.set_sform(img.affine, code=4)
    img.set_qform(img.affine, code=4)
    nib.save(img, str(p))
    doc = open_scan(p)
    doc.ensure_labelmap().paint("axial", 10, [(20, 20)], 3, 2)
    out = tmp_path / "mask.nii.gz"
    doc.save_labels(out)
    saved = nib.load(str(out))
    assert int(saved.header["sform_code"]) == 4 and int(saved.header["qform_code"]) == 4
    assert any("atlas space" in f.text for f in doc.facts(check_skull=False).facts)


def test_corrections_on_a_prediction_name_every_plane_and_only_the_covered_slices(tmp_path):
    doc = open_scan(_head(tmp_path, ("L", "A", "S"), name="las.nii.gz"))
    lm = doc.ensure_labelmap()
    assert doc.corrections_on(None) == {} and doc.edit_summary() == "no corrections"
    lm.paint("axial", 10, [(20, 20)], 2, 1)
    lm.paint("axial", 30, [(20, 20)], 2, 1)
    lm.paint("coronal", 24, [(5, 3), (5, 30)], 1, 3)  # crosses axial slices 3..30
    assert doc.corrections_on(None) == {"axial": [10, 30], "coronal": [24]}
    assert doc.corrections_on([10, 11]) == {"axial": [10], "coronal": [24]}
    assert doc.corrections_on([31, 33]) == {}
    assert doc.edit_summary() == "3 edits on 2 axial + 1 coronal slices"
    lm.show_preview(np.full(doc.scan.shape, 2, np.uint8), "fill between")
    lm.apply_preview()
    assert "interpolated" in doc.corrections_on(None)


def test_landing_a_prediction_keeps_corrections_unless_replaced_then_only_later_ones(tmp_path):
    doc = open_scan(_head(tmp_path, ("L", "A", "S"), name="las.nii.gz"))
    lm = doc.ensure_labelmap()
    lm.paint("axial", 10, [(20, 20)], 2, 1)
    start = lm.labels.copy()  # the job starts here
    lm.paint("axial", 12, [(20, 20)], 2, 1)  # corrected while it ran
    pred = np.full(doc.scan.shape, 3, np.uint8)
    doc.land_prediction(pred, None, replace=True, start_labels=start)
    assert lm.labels[20, 20, 10] == 3, "replaced, as asked"
    assert lm.labels[20, 20, 12] == 1, "corrected while the job ran: kept"
    lm.undo()
    doc.land_prediction(pred, None)
    assert lm.labels[20, 20, 10] == 1 and lm.labels[20, 20, 12] == 1, "kept by default"


def test_summary_brain_mask_and_the_recovery_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    p = _head(tmp_path, ("L", "A", "S"), name="las.nii.gz")
    doc = open_scan(p, atlas_marked=True)
    text = doc.summary()
    assert text.startswith("Opened las.nii.gz: 40x48x36, voxel 1 x 1 x 1 mm") and "atlas space" in text
    assert doc.scan.atlas_marked and "skull on" not in text
    assert doc.current_brain_mask() is None
    mask = doc.scan.data > 0
    doc.brain_mask, doc.brain_mask_in_labels = mask, False
    assert doc.current_brain_mask() is mask
    lm = doc.ensure_labelmap()
    lm.paint("axial", 10, [(20, 20)], 3, 2)
    doc.brain_mask_in_labels = True
    assert (doc.current_brain_mask() == (lm.labels > 0)).all(), "once in the labels, the labels' outline"
    lm.apply_volume(np.where(lm.labels > 0, 3, 0).astype(np.uint8), "smooth", user=False)
    snap = doc.snapshot()
    assert set(snap) >= {"labels", "origin", "predicted", "edited", "pairs", "count", "baseline", "key"}
    ScanDocument.write_snapshot(snap)
    info = open_scan(p).find_recovery()
    assert info is not None and info.scan_key == doc.key and info.edit_count == 1
    other = open_scan(p)
    other.restore_recovery(info)
    np.testing.assert_array_equal(other.labelmap.labels, lm.labels)
    np.testing.assert_array_equal(other.labelmap.origin, lm.origin)
    doc.discard_recovery()
    assert open_scan(p).find_recovery() is None
