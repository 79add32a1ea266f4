"""Details of the label map that a mutation run (mutmut over engine/labels/labelmap.py, issue #19)
showed no test would notice: the brush's geometry, flood fill's seed and guards, history
accounting, the constructor's prediction and provenance, cancelling a stroke, distinct codes."""
import numpy as np
import pytest

from engine.labels import labelmap as L
from engine.labels.labelmap import CLEANUP, NETWORK, OPENED, PREVIEW, STROKE, LabelMap, capsule_mask


def _brute(shape, p0, p1, r):
    """Pixels whose centre is within r - 0.5 of the segment p0-p1 (the brush's definition)."""
    ii, jj = np.mgrid[: shape[0], : shape[1]].astype(float)
    a, d = np.array(p0, float), np.subtract(p1, p0).astype(float)
    L2 = d @ d
    t = np.zeros(shape) if L2 == 0 else np.clip(((ii - a[0]) * d[0] + (jj - a[1]) * d[1]) / L2, 0, 1)
    return (ii - a[0] - t * d[0]) ** 2 + (jj - a[1] - t * d[1]) ** 2 <= (r - 0.5 + 1e-3) ** 2


@pytest.mark.parametrize("p0, p1, r", [((3, 4), (11, 17), 2.5), ((12, 2), (4, 9), 3), ((7, 7), (7, 7), 4),
                                       ((0, 18), (5, 3), 1.5), ((-3, 5), (4, 5), 2)])
def test_the_brush_paints_exactly_a_capsule(p0, p1, r):
    shape = (16, 20)
    hit = capsule_mask(shape, p0, p1, r)
    full = np.zeros(shape, bool)
    if hit is not None:
        (bi, bj), m = hit
        full[bi, bj] = m
    np.testing.assert_array_equal(full, _brute(shape, p0, p1, r))


def test_a_one_pixel_brush_and_a_brush_outside():
    (bi, bj), m = capsule_mask((10, 12), (4, 7), (4, 7), 0.5)
    (i, j), = np.argwhere(m)
    assert m.sum() == 1 and (bi.start + i, bj.start + j) == (4, 7)
    assert capsule_mask((10, 12), (30, 30), (40, 40), 2) is None


def test_fill_uses_the_seed_row_and_column_and_its_guards():
    lab = np.zeros((12, 9, 2), np.uint8)
    lab[:, 5:, 0] = 2  # right part is grey matter
    lm = LabelMap(lab)
    assert lm.fill("axial", 0, (2, 7), 3) is not None  # row 2, column 7: inside the grey part
    assert (lm.labels[:, 5:, 0] == 3).all() and (lm.labels[:, :5, 0] == 0).all()
    assert lm.edit_count == 1 and lm.origin[0, 6, 0] == STROKE[2]
    assert lm.fill("axial", 0, (12, 0), 1) is None and lm.fill("axial", 0, (0, 9), 1) is None  # off the slice
    assert lm.fill("axial", 0, (0, 0), 1, protect=3) is None, "protect: only a region of that class"
    assert lm.fill("axial", 0, (0, 7), 1, protect=3) is not None and (lm.labels[:, 5:, 0] == 1).all()
    lm.undo()
    lm.undo()
    assert lm.edit_count == 0 and (lm.labels == lab).all() and (lm.origin == OPENED).all()


def test_history_accounting_and_caps():
    lm = LabelMap(np.zeros((20, 20, 6), np.uint8), max_steps=3)
    for k in range(3):
        lm.paint("axial", k, [(5, 5), (9, 12)], 2, 1)
    assert lm.undo_steps == 3, "max_steps steps are kept"
    lm.paint("axial", 3, [(5, 5)], 2, 1)
    assert lm.undo_steps == 3
    total = sum(a.mask.nbytes + a.old.nbytes + a.new.nbytes + a.origin_old.nbytes + a.origin_new.nbytes
                for a in lm._undo)
    assert lm.history_bytes == total
    lm.undo()
    assert lm.history_bytes == total, "redo steps count too"
    small = LabelMap(np.zeros((20, 20, 6), np.uint8), max_bytes=1)
    small.paint("axial", 0, [(5, 5)], 3, 1)
    small.paint("axial", 1, [(5, 5)], 3, 1)
    assert small.undo_steps == 1, "over the byte cap the oldest step goes; the newest stays"
    lm.mark_clean()
    assert lm.unsaved_edits == 0 and lm.is_clean


def test_the_constructor_takes_a_prediction_and_provenance():
    lab = np.zeros((6, 6, 3), np.uint8)
    pred = np.full((6, 6, 3), 2, np.uint8)
    lm = LabelMap(pred.copy(), predicted=pred)
    assert lm.reference() is lm.predicted and (lm.origin == NETWORK).all() and not lm.opened_empty
    assert (LabelMap(lab).origin == OPENED).all() and LabelMap(lab).opened_empty
    with pytest.raises(ValueError, match="origin"):
        LabelMap(lab, origin=np.zeros((2, 2, 2), np.uint8))
    org = np.full(lab.shape, CLEANUP, np.uint8)
    assert (LabelMap(lab, origin=org).origin == CLEANUP).all()


def test_cancelling_a_stroke_restores_what_it_painted_and_is_never_clean():
    lab = np.zeros((10, 10, 2), np.uint8)
    lm = LabelMap(lab)
    seen = []
    lm.listeners.append(seen.append)
    lm.begin_stroke("axial", 1, 3)
    lm.stroke_to((4, 4), 2)
    assert (lm.labels != 0).any() and not lm.is_clean and seen
    lm.cancel_stroke()
    assert (lm.labels == 0).all() and lm.undo_steps == 0 and len(seen) == 2
    assert not lm.is_clean or lm.revision == 0  # the views were told; autosave may write again
    with pytest.raises(RuntimeError, match="outside a stroke"):
        lm.stroke_to((1, 1), 1)


def test_origin_codes_are_distinct_and_a_preview_is_not_a_clean_up():
    codes = [L.OPENED, L.NETWORK, *L.STROKE, L.INTERPOLATED, L.CLEANUP, L.PREVIEW]
    assert len(set(codes)) == len(codes) and set(L.ORIGIN_NAMES) == set(codes)
    lm = LabelMap(np.zeros((8, 8, 3), np.uint8))
    new = np.zeros((8, 8, 3), np.uint8)
    new[2:5, 2:5, 1] = 2
    lm.show_preview(new, "fill between")
    assert lm.count_origin(PREVIEW) == 9 and lm.count_origin(CLEANUP) == 0


def test_an_edit_after_a_save_is_never_taken_for_saved():
    """A revision counter that stops counting would make unsaved strokes look saved (no question on
    quit, no autosave)."""
    lm = LabelMap(np.zeros((10, 10, 3), np.uint8))
    lm.paint("axial", 0, [(3, 3)], 2, 1)
    lm.mark_clean()
    lm.paint("axial", 1, [(3, 3)], 2, 1)  # a stroke
    assert not lm.is_clean and lm.unsaved_edits == 1
    lm.mark_clean()
    assert lm.fill("axial", 2, (0, 0), 3) is not None and not lm.is_clean  # a fill
    lm.mark_clean()
    lm.begin_stroke("axial", 0, 2)
    lm.stroke_to((6, 6), 2)
    lm.cancel_stroke()
    lm.mark_clean()
    lm.undo()
    assert not lm.is_clean


def test_strokes_are_undo_steps_named_for_the_tool():
    lm = LabelMap(np.ones((10, 10, 3), np.uint8))
    atom = lm.paint("axial", 1, [(4, 4)], 2, 0)
    assert atom is not None and atom.kind == "erase" and lm.undo_steps == 1
    assert lm.paint("axial", 1, [(4, 4)], 2, 2).kind == "stroke"
    lm.undo()
    lm.undo()
    assert (lm.labels == 1).all()


def test_fill_stays_in_the_connected_region_of_a_non_square_slice():
    lab = np.zeros((14, 8, 1), np.uint8)
    lab[:, 2, 0] = 1  # a wall: the left strip and the right part are separate regions of class 0
    lm = LabelMap(lab)
    assert lm.fill("axial", 0, (11, 6), 3) is not None  # row 11 of 14, column 6 of 8
    assert (lm.labels[:, 3:, 0] == 3).all() and (lm.labels[:, :2, 0] == 0).all()
