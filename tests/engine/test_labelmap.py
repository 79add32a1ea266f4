"""Label map editing: strokes, fill, protection, prediction replacement, undo/redo and its caps."""
import numpy as np

from engine.labels.labelmap import LabelMap, capsule_mask


def test_fast_drag_leaves_no_gap():
    lm = LabelMap(np.zeros((64, 64, 3), np.uint8))
    lm.begin_stroke("axial", 1, 2)
    lm.stroke_to((5.0, 5.0), 2)
    lm.stroke_to((5.0, 55.0), 2)  # one event 50 px away
    lm.end_stroke()
    row = lm.labels[5, :, 1]
    assert (row[5:56] == 2).all(), "every pixel between the two events is painted"


def test_stroke_is_one_undo_step_and_redo_restores():
    lm = LabelMap(np.zeros((40, 40, 4), np.uint8))
    atom = lm.paint("axial", 2, [(10, 10), (10, 20), (20, 20)], 3, 1)
    assert atom is not None and lm.undo_steps == 1
    painted = lm.labels.copy()
    assert painted[:, :, 2].sum() > 0 and painted[:, :, [0, 1, 3]].sum() == 0
    lm.undo()
    assert lm.labels.sum() == 0 and lm.can_redo
    lm.redo()
    np.testing.assert_array_equal(lm.labels, painted)
    assert lm.edited_axial_slices() == [2]


def test_click_that_changes_nothing_adds_no_step_and_new_edit_clears_redo():
    lm = LabelMap(np.full((20, 20, 2), 2, np.uint8))
    assert lm.paint("axial", 0, [(5, 5)], 2, 2) is None
    assert lm.undo_steps == 0
    lm.paint("axial", 0, [(5, 5)], 2, 1)
    lm.undo()
    assert lm.can_redo
    lm.paint("axial", 0, [(9, 9)], 2, 3)
    assert not lm.can_redo


def test_protect_paints_only_the_chosen_class():
    lab = np.zeros((30, 30, 1), np.uint8)
    lab[:15] = 2
    lab[15:] = 3
    lm = LabelMap(lab)
    lm.paint("axial", 0, [(15, 0), (15, 29)], 5, 1, protect=2)
    assert (lm.labels[15:] == 3).all(), "white matter left untouched"
    assert (lm.labels[10:15, :, 0] == 1).any()


def test_fill_and_coronal_plane():
    lab = np.zeros((20, 10, 20), np.uint8)
    lab[:, 5, 5:15] = 2
    lm = LabelMap(lab)
    lm.fill("coronal", 5, (3, 8), 3)  # seed inside the class-2 band of coronal slice y=5
    assert (lm.labels[:, 5, 5:15] == 3).all() and (lm.labels[:, 4] == 0).all()
    # corrected in the coronal plane: one coronal slice, not ten grazed axial slices (issue #13)
    assert lm.edited_slices(1) == [5] and lm.edited_axial_slices() == []
    lm.undo()
    assert (lm.labels[:, 5, 5:15] == 2).all()


def test_prediction_is_one_undoable_step_and_supersedes_edits():
    lm = LabelMap(np.zeros((16, 16, 4), np.uint8))
    lm.paint("axial", 1, [(8, 8)], 3, 2)
    assert lm.has_manual_edits
    pred = np.ones((16, 16, 4), np.uint8)
    lm.set_prediction(pred)
    assert (lm.labels == 1).all() and not lm.has_manual_edits
    np.testing.assert_array_equal(lm.predicted, pred)
    lm.undo()
    assert lm.labels[8, 8, 1] == 2 and lm.predicted is None
    lm.redo()
    assert (lm.labels == 1).all()


def test_history_memory_grows_with_painted_area_not_volume():
    small = LabelMap(np.zeros((32, 32, 8), np.uint8))
    big = LabelMap(np.zeros((256, 256, 64), np.uint8))
    for lm in (small, big):
        lm.paint("axial", 3, [(10, 10), (10, 20)], 3, 1)
    assert big.history_bytes == small.history_bytes < 2000


def test_history_is_capped_in_bytes_and_steps():
    lm = LabelMap(np.zeros((64, 64, 2), np.uint8), max_steps=5, max_bytes=10_000)
    for i in range(20):
        lm.paint("axial", 0, [(i * 3 % 60, 5), (i * 3 % 60, 60)], 2, 1 + i % 3)
    assert lm.undo_steps <= 5 and lm.history_bytes <= 10_000


def test_listeners_get_the_changed_box_only():
    lm = LabelMap(np.zeros((50, 50, 5), np.uint8))
    boxes = []
    lm.listeners.append(boxes.append)
    lm.paint("axial", 2, [(25, 25)], 3, 1)
    bx = boxes[-1]
    assert bx[2] == slice(2, 3)
    assert bx[0].stop - bx[0].start <= 7 and bx[1].stop - bx[1].start <= 7


def test_capsule_single_pixel_brush():
    box, m = capsule_mask((10, 10), (4, 4), (4, 4), 0.5)
    assert m.sum() == 1


def test_undoing_a_prediction_brings_back_the_record_of_edits():
    lm = LabelMap(np.zeros((16, 16, 8), np.uint8))
    lm.paint("axial", 5, [(8, 8)], 3, 2)
    lm.set_prediction(np.ones((16, 16, 8), np.uint8))
    assert lm.edited_axial_slices() == []
    lm.undo()
    assert lm.edited_axial_slices() == [5] and lm.edit_count == 1
    lm.undo()
    assert lm.edited_axial_slices() == [] and lm.edit_count == 0
    lm.redo()
    lm.redo()
    assert lm.edited_axial_slices() == [] and (lm.labels == 1).all()


def test_a_restore_is_a_new_baseline_that_one_undo_cannot_wipe():
    lm = LabelMap(np.zeros((8, 8, 4), np.uint8))
    lm.paint("axial", 0, [(1, 1)], 1, 3)  # history from before the restore is gone with it
    rec = np.zeros((8, 8, 4), np.uint8)
    rec[2:4, 2:4, 1] = 2
    lm.restore(rec, [1], 3)
    assert lm.edited_axial_slices() == [1] and lm.edit_count == 3 and not lm.is_clean
    assert lm.undo() is None and not lm.can_undo
    np.testing.assert_array_equal(lm.labels, rec)
    lm.paint("axial", 3, [(5, 5)], 1, 1)  # new edits go on top and undo back to the baseline
    lm.undo()
    np.testing.assert_array_equal(lm.labels, rec)


def test_the_newest_step_is_never_evicted_by_the_byte_cap():
    """A step bigger than the whole byte budget (a prediction over a large volume) stays undoable;
    older steps make room for it."""
    lm = LabelMap(np.zeros((40, 40, 10), np.uint8), max_bytes=2000)
    lm.paint("axial", 2, [(5, 5)], 2, 1)
    big = np.full((40, 40, 10), 3, np.uint8)
    lm.set_prediction(big)
    assert lm.undo_steps == 1 and lm.history_bytes > 2000
    lm.undo()
    assert lm.labels[5, 5, 2] == 1 and (lm.labels == 3).sum() == 0


def test_a_prediction_keeps_the_voxels_the_caller_marks_as_corrections():
    """The merge rule of a prediction that lands over corrections: corrected voxels stay, the
    rest takes the prediction, the slice still counts as edited, and one undo restores all."""
    lm = LabelMap(np.zeros((16, 16, 6), np.uint8))
    lm.set_prediction(np.full((16, 16, 6), 2, np.uint8))
    lm.paint("axial", 3, [(8, 8)], 2, 3)  # a correction: GM -> WM
    corrected = lm.corrected_mask()
    assert corrected.sum() > 0 and corrected[:, :, 3].sum() == corrected.sum()
    before = lm.labels.copy()
    lm.set_prediction(np.ones((16, 16, 6), np.uint8), keep=corrected)
    assert (lm.labels[corrected] == 3).all() and (lm.labels[~corrected] == 1).all()
    assert lm.edited_axial_slices() == [3]
    assert (lm.predicted == 1).all()  # the network's map is the new prediction...
    assert lm.corrected_mask().sum() == corrected.sum()  # ...so the corrections are still corrections
    lm.undo()
    np.testing.assert_array_equal(lm.labels, before)
    assert (lm.predicted == 2).all()


def test_a_prediction_step_stores_changed_voxels_not_whole_maps():
    """A second volume prediction that changes one slab costs that slab in history, not two
    copies of the volume's predicted map."""
    shape = (64, 64, 40)
    lm = LabelMap(np.zeros(shape, np.uint8), max_bytes=10**9)
    first = np.full(shape, 2, np.uint8)
    lm.set_prediction(first)
    second = first.copy()
    second[:, :, 10] = 3
    before = lm.history_bytes
    atom = lm.set_prediction(second)
    assert atom.nbytes < 64 * 64 * 8  # two slabs' worth at most, not 2 x 163,840 bytes
    assert lm.history_bytes - before == atom.nbytes
    lm.undo()
    assert (lm.predicted == 2).all() and (lm.labels == 2).all()
    lm.redo()
    assert (lm.predicted[:, :, 10] == 3).all()


def test_without_a_prediction_corrections_are_measured_against_the_labels_as_opened():
    opened = np.zeros((12, 12, 4), np.uint8)
    opened[2:10, 2:10] = 2
    lm = LabelMap(opened)
    assert not lm.corrected_mask().any()
    lm.paint("axial", 1, [(5, 5)], 1, 3)
    assert lm.corrected_mask().sum() == 1
    # a one-slice prediction elsewhere does not turn the opened labels into "corrections"
    lm.set_prediction(np.ones((12, 12, 4), np.uint8), slices=[3])
    assert lm.corrected_mask().sum() == 1 and (lm.labels[:, :, 0] == opened[:, :, 0]).all()


def test_threshold_painting_changes_only_allowed_pixels():
    """Painting limited to an intensity range: the brush and the fill change only pixels whose
    scan intensity is inside it."""
    scan = np.zeros((20, 20, 3), np.float32)
    scan[:, 10:, :] = 100  # right half bright
    allowed = (scan[:, :, 1] >= 50) & (scan[:, :, 1] <= 150)
    lm = LabelMap(np.zeros((20, 20, 3), np.uint8))
    lm.paint("axial", 1, [(10, 5), (10, 15)], 4, 2, allowed=allowed)
    painted = lm.labels[:, :, 1] == 2
    assert painted[:, 10:].any() and not painted[:, :10].any()
    lm.undo()
    assert lm.fill("axial", 1, (3, 3), 3, allowed=allowed) is None, "a seed outside the range fills nothing"
    lm.fill("axial", 1, (3, 13), 3, allowed=allowed)
    assert (lm.labels[:, 10:, 1] == 3).all() and (lm.labels[:, :10, 1] == 0).all()


def test_corrections_count_in_the_plane_they_were_made_in():
    lm = LabelMap(np.zeros((30, 30, 20), np.uint8))
    for k in (3, 6, 9):
        lm.paint("axial", k, [(10, 10)], 2, 2)
    lm.paint("coronal", 12, [(5, 2), (5, 10)], 2, 3)  # crosses 9+ axial slices
    assert lm.edit_count == 4 and lm.edited_axial_slices() == [3, 6, 9]
    assert lm.edited_slices(1) == [12] and lm.edited_pairs() == [(1, 12), (2, 3), (2, 6), (2, 9)]
    lm.mark_clean()
    lm.paint("axial", 15, [(25, 25)], 2, 1)
    assert lm.unsaved_edits == 1
    # a volume prediction that keeps the corrections keeps their record, plane by plane - also the
    # stroke on 15 that happens to agree with the new prediction: the user drew it (issue #19)
    lm.set_prediction(np.full(lm.shape, 1, np.uint8), keep=lm.corrected_mask())
    assert lm.edited_slices(1) == [12] and lm.edited_axial_slices() == [3, 6, 9, 15]
