"""Orientation from anatomy (engine/io/anatomy.py) through read_volume, on the bundled demo brain
stored in other orders, a head built around it, and a phantom with no anatomy."""
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from engine.core.paths import DEMO_LABELS, DEMO_SCAN
from engine.io.anatomy import find_orientation, proper_rotations
from engine.io.volume import read_volume


def _ras(vol):
    """The volume's array turned to RAS storage by its affine: equal arrays = same anatomy."""
    ornt = nib.orientations.io_orientation(vol.affine)
    return nib.orientations.apply_orientation(vol.data, ornt)


@pytest.fixture(scope="module")
def demo():
    return read_volume(DEMO_SCAN)


def _head() -> np.ndarray:
    """A head with its skull (LAS, 2 mm): the shipped 4 mm head template (ROBEX's reference head),
    upsampled, scaled 0.92 / 1.05 / 0.97, turned 6 degrees and given noise, so it is not the
    template itself. That the 24 scores tell real heads apart (ROBEX's and pydeface's heads in every
    storage order) is measured in docs/BENCHMARKS.md; this checks the machinery end to end."""
    from engine.core.paths import RESOURCES

    with np.load(RESOURCES / "templates" / "orient_templates.npz") as z:
        t = z["head_4mm"].astype(np.float32)
    t = ndi.zoom(t, (2 * 0.92, 2 * 1.05, 2 * 0.97), order=1)
    t = ndi.rotate(t, 6, axes=(1, 2), reshape=False, order=1)
    return np.clip(t + np.random.default_rng(0).normal(0, 4, t.shape), 0, None)[::-1]  # RAS -> LAS


def test_24_proper_rotations():
    rots = proper_rotations()
    assert len(rots) == 24 and np.array_equal(rots[0], np.eye(3))
    assert all(round(np.linalg.det(r)) == 1 for r in rots)
    assert len({r.tobytes() for r in rots}) == 24


def test_sagittal_analyze_without_orientation_is_found(tmp_path, demo):
    """An OASIS-RAW-like copy: sagittal slices in an Analyze file whose header says nothing (orient 0).
    Assumed LAS it lies on its side; the anatomy puts it back, so it reads as the same brain."""
    d = np.transpose(demo.data, (1, 2, 0))  # array axes: A, S, L
    nib.save(nib.AnalyzeImage(d.astype(np.int16), np.diag([-1.0, 1, 1, 1])), str(tmp_path / "sag.hdr"))
    vol = read_volume(tmp_path / "sag.hdr")
    assert vol.orientation == "ASL"
    assert vol.orientation_source == "anatomy"
    assert "found from the anatomy" in vol.geometry_note and "left-right" in vol.geometry_note
    assert np.array_equal(_ras(vol), _ras(demo))
    # its label map, stored the same way, is turned the same way: labels stay on their scan
    lab = read_volume(DEMO_LABELS).data
    nib.save(nib.AnalyzeImage(np.transpose(lab, (1, 2, 0)), np.diag([-1.0, 1, 1, 1])), str(tmp_path / "sag_seg.hdr"))
    lvol = read_volume(tmp_path / "sag_seg.hdr")
    assert lvol.is_labels and np.allclose(lvol.affine, vol.affine)


def test_orient_field_is_read_and_checked(tmp_path, demo):
    d = np.transpose(demo.data, (1, 2, 0))
    img = nib.AnalyzeImage(d.astype(np.int16), np.diag([-1.0, 1, 1, 1]))
    img.header["orient"] = 2  # sagittal unflipped: right
    nib.save(img, str(tmp_path / "o2.hdr"))
    vol = read_volume(tmp_path / "o2.hdr")
    assert vol.orientation == "ASL" and vol.orientation_source == "assumed"
    assert "orient field (2: sagittal)" in vol.geometry_note
    # the field says coronal, the anatomy says sagittal: anatomy wins, and says so
    img.header["orient"] = 1
    nib.save(img, str(tmp_path / "o1.hdr"))
    vol = read_volume(tmp_path / "o1.hdr")
    assert vol.orientation == "ASL" and vol.orientation_source == "anatomy"
    assert "orient field (1: coronal)" in vol.geometry_note


def test_head_with_skull_in_nifti_without_codes(tmp_path):
    """A head (skull on), stored coronally at 2 x 3 x 2 mm in a NIfTI with qform and sform 0."""
    head = _head()
    coarse = ndi.zoom(head, (1.0, 2 / 3, 1.0), order=1)  # x 2 mm, y 3 mm, z 2 mm
    stored = np.transpose(coarse, (2, 0, 1))  # axes: S, L, A -> zooms 2, 2, 3
    img = nib.Nifti1Image(stored.astype(np.float32), None)
    img.header.set_zooms((2.0, 2.0, 3.0))
    nib.save(img, str(tmp_path / "head.nii.gz"))
    vol = read_volume(tmp_path / "head.nii.gz")
    assert vol.orientation_source == "anatomy", vol.geometry_note
    assert vol.orientation == "SLA"
    assert np.allclose(sorted(vol.voxel_size), [2.0, 2.0, 3.0])
    f = find_orientation(vol.data, vol.affine)
    assert f.template == "head" and not f.changed


def test_real_affine_is_kept_and_contradiction_warned(tmp_path, demo):
    d = np.transpose(demo.data, (1, 2, 0))
    nib.save(nib.Nifti1Image(d, np.diag([-1.0, 1, 1, 1])), str(tmp_path / "wrong.nii.gz"))  # says LAS, is ASL
    vol = read_volume(tmp_path / "wrong.nii.gz")
    assert vol.orientation == "LAS" and vol.orientation_source == "header"
    assert any("anatomy looks like ASL" in w for w in vol.warnings)
    nib.save(nib.Nifti1Image(demo.data, demo.affine), str(tmp_path / "right.nii.gz"))
    assert read_volume(tmp_path / "right.nii.gz").warnings == []


def test_no_anatomy_keeps_the_assumption(tmp_path):
    """A phantom that looks like no head: the convention stands, and the note says it was assumed."""
    rng = np.random.default_rng(3)
    box = np.zeros((60, 40, 50), np.int16)
    box[10:50, 5:35, 10:20] = 100 + rng.integers(0, 20, (40, 30, 10))
    nib.save(nib.AnalyzeImage(box, np.diag([-1.0, 1, 1, 1])), str(tmp_path / "box.hdr"))
    vol = read_volume(tmp_path / "box.hdr")
    assert vol.orientation == "LAS" and vol.orientation_source == "assumed"
    assert "assumed LAS" in vol.geometry_note


def test_info_says_what_was_found(tmp_path, demo, capsys):
    from engine.cli import main

    d = np.transpose(demo.data, (1, 2, 0))
    nib.save(nib.AnalyzeImage(d.astype(np.int16), np.diag([-1.0, 1, 1, 1])), str(tmp_path / "sag.hdr"))
    assert main(["info", str(tmp_path / "sag.hdr")]) == 0
    out = capsys.readouterr().out
    assert "orientation: ASL (found from the anatomy" in out


def test_reoriented_affine_points_the_axes_and_keeps_centre_and_voxel_sizes():
    from engine.io.anatomy import reoriented_affine

    shape = (4, 6, 8)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[:3, 3] = [10.0, -20.0, 5.0]
    new = reoriented_affine(las, shape, "ASL")
    # i towards anterior (+y), j towards superior (+z), k towards left (-x)
    assert np.array_equal(new[:3, :3], [[0, 0, -1], [1, 0, 0], [0, 1, 0]])
    assert "".join(nib.aff2axcodes(new)) == "ASL"
    centre = (np.array(shape) - 1) / 2
    assert np.allclose(new[:3, :3] @ centre + new[:3, 3], las[:3, :3] @ centre + las[:3, 3])
    assert np.allclose(reoriented_affine(las, shape, "LAS"), las), "the present codes change nothing"
    # each axis keeps its own voxel size; a slight tilt is kept
    tilt = np.deg2rad(5)
    rot = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([-1.0, 2.0, 3.0])
    turned = reoriented_affine(oblique, shape, "sPr")
    assert "".join(nib.aff2axcodes(turned)) == "SPR"
    assert np.allclose(np.sqrt((turned[:3, :3] ** 2).sum(0)), [1, 2, 3])
    assert np.allclose(np.sort(abs(turned[:3, :3]), 0), np.sort(abs(oblique[:3, :3]), 0)), "tilted as before"
    with pytest.raises(ValueError, match="A/P more than once and S/I not at all"):
        reoriented_affine(las, shape, "AAL")
    with pytest.raises(ValueError, match="3 letters"):
        reoriented_affine(las, shape, "LAX")
