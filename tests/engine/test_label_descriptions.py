"""Masks other tools understand (issue #20): class names and colours beside every saved mask for
ITK-SNAP and FreeSurfer-style viewers, the NIfTI label intent, and read back when labels are opened."""
import nibabel as nib
import numpy as np

from engine.document import open_scan
from engine.io.labeldesc import INTENT_LABEL, read_descriptions, remap_by_names, sidecar_paths, write_descriptions
from engine.io.volume import save_labels


def test_every_saved_mask_carries_its_classes(tmp_path):
    lab = np.zeros((6, 7, 5), np.uint8)
    lab[1:3, 2:5, 1:4] = 3
    files = save_labels(tmp_path / "sub_seg.nii.gz", lab, np.diag([-1.0, 1, 1, 1]))
    itk, lut = sidecar_paths(tmp_path / "sub_seg.nii.gz")
    assert itk in files and lut in files and itk.name == "sub_seg.itksnap.txt"
    text = itk.read_text()
    assert '    3     0   158   115     1.00  1  1    "White matter"' in text  # ITK-SNAP's columns
    assert '    0     0     0     0     0.00  0  0    "Background"' in text
    assert "2    Grey-matter" in lut.read_text()
    img = nib.load(str(tmp_path / "sub_seg.nii.gz"))
    assert int(img.header["intent_code"]) == INTENT_LABEL
    assert read_descriptions(tmp_path / "sub_seg.nii.gz") == {0: "Background", 1: "CSF", 2: "Grey matter",
                                                               3: "White matter"}
    save_labels(tmp_path / "oasis_fseg.hdr", lab, np.diag([-1.0, 1, 1, 1]))  # Analyze: beside it too
    assert sidecar_paths(tmp_path / "oasis_fseg.hdr")[0].exists()
    assert save_labels(tmp_path / "bare.nii", lab, np.eye(4), classes=None) == [tmp_path / "bare.nii"]


def test_labels_from_another_tool_are_mapped_by_name_when_opened(tmp_path):
    shape = (10, 12, 8)
    scan = np.zeros(shape, np.float32)
    scan[2:8, 2:10, 2:6] = 100
    nib.save(nib.Nifti1Image(scan, np.diag([-1.0, 1, 1, 1])), str(tmp_path / "t1.nii.gz"))
    theirs = np.zeros(shape, np.uint8)
    theirs[2:8, 2:10, 2:4] = 1  # white matter, as that tool numbers it
    theirs[2:8, 2:10, 4:6] = 3  # CSF
    nib.save(nib.Nifti1Image(theirs, np.diag([-1.0, 1, 1, 1])), str(tmp_path / "other.nii.gz"))
    write_descriptions(tmp_path / "other.nii.gz", [(0, "Clear Label", (0, 0, 0)), (1, "White Matter", (1, 1, 1)),
                                                   (3, "CSF", (2, 2, 2)), (9, "Lesion", (3, 3, 3))])
    doc = open_scan(tmp_path / "t1.nii.gz")
    warning = doc.open_labels(tmp_path / "other.nii.gz")
    lm = doc.labelmap
    assert (lm.labels[2:8, 2:10, 2:4] == 3).all() and (lm.labels[2:8, 2:10, 4:6] == 1).all()
    assert "White Matter 1->3" in warning and "CSF 3->1" in warning and "Lesion" not in warning  # (absent)
    # our own files read back unchanged, and without a word
    same, note = remap_by_names(lm.labels, read_descriptions(_ours(tmp_path)))
    assert same is lm.labels and note == ""


def _ours(tmp_path):
    p = tmp_path / "ours.nii.gz"
    save_labels(p, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    return p
