"""Provenance in the label map (issue #19): every voxel knows what last set it, undo restores it,
the merge rule and the drawn slices read it, recovery files carry it and belong to one scan."""
import os
import time

import numpy as np
import pytest

from engine.io import recovery
from engine.labels import ops
from engine.labels.labelmap import CLEANUP, INTERPOLATED, NETWORK, OPENED, PREVIEW, STROKE, LabelMap


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))


def _segmented(shape=(24, 28, 16)):
    """A segmented-looking map: WM core, GM shell, CSF rim, asymmetric (shifted right)."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x - 0.1) ** 2 + y ** 2 + (z * 0.8) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.9] = 1
    lab[r < 0.8] = 2
    lab[r < 0.5] = 3
    lm = LabelMap(np.zeros(shape, np.uint8))
    lm.set_prediction(lab)
    return lm, lab


def test_every_step_records_its_origin_and_undo_restores_it():
    lm, lab = _segmented()
    assert (lm.origin == NETWORK).all()
    lm.paint("coronal", 10, [(5, 5), (5, 10)], 2, 3)
    stroked = lm.origin == STROKE[1]
    assert stroked.any() and lm.edited_slices(1) == [10] and lm.edited_axial_slices() == []
    lm.fill("axial", 3, (0, 0), 1)  # a fill click is a stroke in its plane
    assert lm.edited_axial_slices() == [3] and (lm.origin[:, :, 3][lm.labels[:, :, 3] == 1] == STROKE[2]).any()
    smoothed = ops.smooth(lm.labels, 1.0)
    lm.apply_volume(smoothed, "smooth", user=False)
    assert lm.count_origin(CLEANUP) > 0
    for _ in range(3):
        lm.undo()
    assert (lm.origin == NETWORK).all() and not lm.has_manual_edits
    lm.redo()
    np.testing.assert_array_equal(lm.origin == STROKE[1], stroked)


def test_the_merge_rule_keeps_strokes_and_replaces_clean_ups():
    lm, lab = _segmented()
    lm.paint("axial", 8, [(12, 6), (12, 20)], 1, 3)
    lm.apply_volume(ops.smooth(lm.labels, 1.5), "smooth", user=False)
    mine = lm.origin == STROKE[2]  # what last set a voxel counts: a stroke smoothed over is the clean-up's
    cleaned = lm.origin == CLEANUP
    assert cleaned.any()
    new = np.where(lab > 0, 2, 0).astype(np.uint8)  # another model's prediction
    atom = lm.set_prediction(new, keep=lm.corrected_mask())
    assert (lm.labels[mine] == 3).all(), "the user's stroke stays"
    np.testing.assert_array_equal(lm.labels[~mine], new[~mine])
    assert atom.replaced_cleanup == int((cleaned & ~mine).sum()) > 0
    assert lm.count_origin(CLEANUP) == 0


def test_a_preview_is_not_committed_until_applied():
    lm, lab = _segmented()
    lm.paint("axial", 4, [(12, 10)], 3, 1)
    lm.paint("axial", 10, [(12, 10)], 3, 1)
    labels0, origin0 = lm.committed()
    steps = lm.undo_steps
    new = ops.fill_between_drawn(lm.labels, lm.origin == STROKE[2], 2, [4, 10])
    atom = lm.show_preview(new, "fill between")
    assert atom is not None and lm.count_origin(PREVIEW) == atom.voxels > 0
    labels1, origin1 = lm.committed()
    np.testing.assert_array_equal(labels1, labels0)
    np.testing.assert_array_equal(origin1, origin0)
    lm.cancel_preview()
    np.testing.assert_array_equal(lm.labels, labels0)
    assert not lm.can_redo and lm.undo_steps == steps
    lm.show_preview(new, "fill between")
    lm.apply_preview()
    assert lm.count_origin(INTERPOLATED) > 0 and lm.count_origin(PREVIEW) == 0 and lm.undo_steps == steps + 1
    np.testing.assert_array_equal(lm.committed()[0], lm.labels)
    lm.undo()
    np.testing.assert_array_equal(lm.labels, labels0)


def test_fill_between_drawn_interpolates_strokes_and_keeps_the_rest():
    lm, lab = _segmented()
    lm.paint("axial", 3, [(10, 8), (10, 14)], 3, 1)
    lm.paint("axial", 11, [(14, 12), (14, 18)], 3, 1)
    before = lm.labels.copy()
    out = ops.fill_between_drawn(lm.labels, lm.origin == STROKE[2], 2, [3, 11])
    changed = out != before
    assert changed.any() and (out[changed] == 1).all()
    assert not changed[:, :, :4].any() and not changed[:, :, 11:].any()
    # the drawn blob moves from row 10 to row 14: in the middle slice it sits in between
    mid = np.argwhere(changed[:, :, 7])
    assert len(mid) and 11 <= mid[:, 0].mean() <= 13
    with pytest.raises(ops.OpError, match="at least two drawn slices"):
        ops.fill_between_drawn(lm.labels, lm.origin == STROKE[2], 2, [3])


@pytest.mark.parametrize("method", ["gaussian", "median"])
def test_smoothing_keeps_the_outline(method):
    _, lab = _segmented()
    out = ops.smooth(lab, 1.5, (1.0, 1.0, 1.2), method=method)
    np.testing.assert_array_equal(out > 0, lab > 0)
    assert (out != lab).any()
    free = ops.smooth(lab, 1.5, (1.0, 1.0, 1.2), method=method, keep_outline=False)
    assert ((free > 0) != (lab > 0)).any()
    assert ops.volume_change(lab, out)[ops.OUTLINE] == 0.0


def test_recovery_round_trip_keeps_provenance(home, tmp_path):
    lm, lab = _segmented()
    lm.paint("sagittal", 9, [(5, 5), (12, 5)], 2, 1)
    lm.apply_volume(ops.smooth(lm.labels, 1.0), "smooth", user=False)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"x")
    data = np.arange(np.prod(lab.shape), dtype=np.float32).reshape(lab.shape)
    key = recovery.scan_key(data, np.eye(4))
    labels, origin = lm.committed()
    recovery.save_recovery(scan, labels, lm.edited_axial_slices(), 1, lm.predicted, lm.edited_pairs(), None,
                           origin=origin, key=key)
    info = recovery.find_recovery(scan, lab.shape, key=key)
    assert info.format == recovery.FORMAT and info.scan_key == key
    other = LabelMap(np.zeros(lab.shape, np.uint8))
    got = recovery.load_recovery(info)
    other.restore(got[0], info.edited_slices, info.edit_count, got[1], info.edited_pairs, got[2], got[3])
    np.testing.assert_array_equal(other.origin, lm.origin)
    assert other.edited_slices(0) == [9] and other.count_origin(CLEANUP) == lm.count_origin(CLEANUP)
    # another scan's content under the same path and shape: not offered
    assert recovery.find_recovery(scan, lab.shape, key=recovery.scan_key(data + 1, np.eye(4))) is None
    # the same content at another path (moved): offered
    assert recovery.find_recovery(tmp_path / "moved" / "scan.nii.gz", lab.shape, key=key) is not None


def test_old_path_keyed_recovery_is_offered_after_an_identity_check(home, tmp_path):
    lm, lab = _segmented()
    lm.paint("axial", 5, [(10, 10)], 2, 1)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"x")
    old = time.time() - 100
    os.utime(scan, (old, old))
    recovery.save_recovery(scan, lm.labels, lm.edited_axial_slices(), 1, lm.predicted, lm.edited_pairs())
    info = recovery.find_recovery(scan, lab.shape, key="cnotthis")
    assert info is not None and info.format == 1
    got = recovery.load_recovery(info)
    other = LabelMap(np.zeros(lab.shape, np.uint8))
    other.restore(got[0], info.edited_slices, info.edit_count, got[1], info.edited_pairs, got[2], got[3])
    assert other.edited_axial_slices() == [5] and other.corrected_mask().sum() == (lm.labels != lab).sum()
    assert (other.origin[~other.corrected_mask()] == NETWORK).all()
    assert recovery.find_recovery(scan, (1, 2, 3)) is None, "another shape"
    scan.write_bytes(b"another scan written later under the same name")
    later = time.time() + 100
    os.utime(scan, (later, later))
    assert recovery.find_recovery(scan, lab.shape) is None, "modified after the snapshot"
    assert OPENED == 0  # recovery files store these codes: never renumber
