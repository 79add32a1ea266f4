"""Label operations (engine/labels/ops.py), the label map's one write path for them, and
`brainseg postprocess` on files, bad input included."""
import nibabel as nib
import numpy as np
import pytest

from engine.cli import main
from engine.io.volume import save_labels
from engine.labels import ops
from engine.labels.labelmap import INTERPOLATED, LabelMap


def _disk(shape, centre, r):
    i, j = np.mgrid[: shape[0], : shape[1]]
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= r * r


def test_fill_between_interpolates_a_shrinking_region_and_keeps_key_slices():
    lab = np.zeros((40, 40, 11), np.uint8)
    lab[:, :, 0][_disk((40, 40), (20, 20), 12)] = 2
    lab[:, :, 10][_disk((40, 40), (20, 20), 4)] = 2
    lab[:, :, 0][_disk((40, 40), (20, 20), 3)] = 3  # a core on the first key only
    out = ops.fill_between(lab, 2, 0, 10)
    np.testing.assert_array_equal(out[:, :, 0], lab[:, :, 0])
    np.testing.assert_array_equal(out[:, :, 10], lab[:, :, 10])
    areas = [(out[:, :, k] > 0).sum() for k in range(11)]
    assert all(a >= b for a, b in zip(areas, areas[1:])), "the region shrinks steadily"
    mid = (out[:, :, 5] > 0).sum()
    assert np.pi * 7.5 ** 2 < mid < np.pi * 8.5 ** 2  # radius ~8 halfway between 12 and 4
    assert (out[:, :, 1] == 3).any() and not (out[:, :, 9] == 3).any(), "a region on one key tapers away"
    assert lab[:, :, 5].sum() == 0, "the input is not changed"


def test_fill_between_needs_two_drawn_slices_and_a_valid_range():
    lab = np.zeros((10, 10, 8), np.uint8)
    lab[2:5, 2:5, 1] = 1
    with pytest.raises(ops.OpError, match="at least two drawn slices"):
        ops.fill_between(lab, 2, 0, 7)
    with pytest.raises(ops.OpError, match="0 <= first < last < 8"):
        ops.fill_between(lab, 2, 3, 9)


def test_remove_islands_fills_specks_with_the_surrounding_tissue():
    lab = np.full((20, 20, 20), 3, np.uint8)
    lab[5, 5, 5] = 2  # a GM speck inside WM
    lab[10:12, 10:12, 10:12] = 0  # a background hole of 8 voxels inside WM
    lab[15:19, 15:19, 15:19] = 1  # a CSF blob of 64 voxels
    out = ops.remove_islands(lab, 10)
    assert out[5, 5, 5] == 3 and (out[10:12, 10:12, 10:12] == 3).all()
    assert (out[15:19, 15:19, 15:19] == 1).all(), "pieces at or above the size stay"
    out = ops.remove_islands(lab, 10, classes=[2])
    assert out[5, 5, 5] == 3 and (out[10:12, 10:12, 10:12] == 0).all(), "only the classes asked for"


def test_keep_largest_clears_detached_pieces():
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[5:20, 5:20, 5:20] = 3
    lab[8:12, 8:12, 8:12] = 2
    lab[25:28, 25:28, 25:28] = 2  # a detached piece outside the brain
    out = ops.keep_largest(lab)
    assert (out[25:28, 25:28, 25:28] == 0).all() and (out[8:12, 8:12, 8:12] == 2).all()
    per = ops.keep_largest(lab, per_class=True)
    assert (per[25:28, 25:28, 25:28] == 0).all(), "the detached GM piece takes the background around it"


def test_smoothing_removes_jaggies_without_gaps_or_overlaps():
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40, 40), np.uint8)
    x, y, z = np.mgrid[:40, :40, :40]
    r = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2) + rng.normal(0, 1.2, (40, 40, 40))
    lab[r < 15] = 2
    lab[r < 9] = 3
    out = ops.smooth(lab, 1.0, (1.0, 1.0, 1.0))
    assert set(np.unique(out)) <= {0, 2, 3}
    def islands(a):
        from scipy import ndimage as ndi
        return sum(ndi.label(a == c, structure=ops.FULL)[1] for c in (2, 3))
    assert islands(out) < islands(lab)
    for c in (2, 3):  # volumes about kept (a small ball loses some to its curvature)
        assert abs(int((out == c).sum()) - int((lab == c).sum())) < 0.15 * (lab == c).sum()
    med = ops.smooth(lab, 1, (1.0, 1.0, 1.0), method="median")  # +-1 mm: a 3x3x3 window, not a no-op
    assert islands(med) < islands(lab)
    ch = ops.volume_change(lab, out)
    assert set(ch) == {2, 3, ops.OUTLINE} and ops.describe_change(ch).startswith("GM ")
    assert ch[ops.OUTLINE] == 0.0 and "brain outline +0.0%" in ops.describe_change(ch)  # the outline is kept
    with pytest.raises(ops.OpError):
        ops.smooth(lab, -1)


def test_an_operation_is_one_undo_step_through_the_label_map():
    lab = np.zeros((20, 20, 9), np.uint8)
    lab[:, :, 0][_disk((20, 20), (10, 10), 6)] = 2
    lab[:, :, 8][_disk((20, 20), (10, 10), 6)] = 2
    lm = LabelMap(lab)
    atom = lm.apply_volume(ops.fill_between(lm.labels, 2, 0, 8), "fill between")
    assert atom is not None and lm.undo_steps == 1 and (lm.labels[:, :, 4] == 2).any()
    # interpolated voxels are the user's (kept by a prediction), but the slices were not drawn
    assert lm.count_origin(INTERPOLATED) == atom.voxels > 0 and lm.edited_axial_slices() == []
    lm.undo()
    assert lm.count_origin(INTERPOLATED) == 0
    np.testing.assert_array_equal(lm.labels, lab)
    assert lm.apply_volume(lm.labels.copy(), "nothing") is None, "no change, no step"


# ----------------------------------------------------------------------------- CLI
def _mask(tmp_path, name="mask.nii.gz"):
    aff = np.diag([0.9, 0.9, 1.2, 1.0])
    aff[:3, 3] = (-20, -30, 10)
    lab = np.zeros((30, 30, 12), np.uint8)
    lab[:, :, 2][_disk((30, 30), (15, 15), 9)] = 2
    lab[:, :, 8][_disk((30, 30), (15, 15), 5)] = 2
    lab[3, 3, 2] = 1  # a speck
    p = tmp_path / name
    save_labels(p, lab, aff)
    return p, lab, aff


def test_postprocess_cli_fills_cleans_and_keeps_the_grid(tmp_path, capsys):
    p, lab, aff = _mask(tmp_path)
    out = tmp_path / "clean.nii.gz"
    assert main(["postprocess", str(p), "-o", str(out), "--fill-between", "axial:3-9", "--remove-islands", "5",
                 "--keep-largest", "--smooth", "1"]) == 0
    text = capsys.readouterr().out
    assert "fill between axial slices 3-9 (drawn: 2)" in text  # numbered from 1, as in the app and "voxels changed" in text
    assert "tissue volumes changed: " in text and "GM +" in text
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    res = np.asanyarray(img.dataobj)
    assert res.shape == lab.shape and res[3, 3, 2] == 0 and (res[:, :, 5] == 2).any()


@pytest.mark.parametrize("argv,needle", [
    (["-o", "{out}"], "nothing to do"),
    (["-o", "{out}", "--fill-between", "axial:8-2"], "FIRST < LAST"),
    (["-o", "{out}", "--fill-between", "oblique:1-3"], "plane must be"),
    (["-o", "{out}", "--fill-between", "axial:3-5"], "at least two drawn slices"),
    (["-o", "{out}", "--remove-islands", "0"], "at least 1 voxel"),
    (["-o", "{out}", "--smooth", "-2"], "positive number"),
    (["-o", "{inp}", "--keep-largest"], "refusing to overwrite the input"),
    (["-o", "{tmp}/x.png", "--keep-largest"], "unknown output format"),
])
def test_postprocess_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    p, _, _ = _mask(tmp_path)
    argv = [a.format(out=tmp_path / "o.nii.gz", inp=p, tmp=tmp_path) for a in argv]
    assert main(["postprocess", str(p)] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o.nii.gz").exists()


def test_postprocess_cli_names_a_missing_or_broken_mask(tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["postprocess", str(bad), "-o", str(tmp_path / "o.nii.gz"), "--keep-largest"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err


def test_label_surfaces_are_closed_meshes_in_world_mm():
    from engine.labels.surface import label_surfaces

    lab = np.zeros((30, 30, 30), np.uint8)
    x, y, z = np.mgrid[:30, :30, :30]
    lab[(x - 15) ** 2 + (y - 15) ** 2 + (z - 15) ** 2 <= 100] = 3  # a ball of radius 10 voxels
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-30, -30, -30)
    meshes = label_surfaces(lab, aff, classes=(1, 3), step=1)
    assert meshes[1].empty and not meshes[3].empty
    v = meshes[3].vertices
    r = np.linalg.norm(v, axis=1)  # centre at world (0, 0, 0); radius 10 voxels = 20 mm
    assert abs(np.median(r) - 20) < 1.5
    assert meshes[3].faces.max() < len(v)
