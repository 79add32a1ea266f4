"""Brain extraction in the window: a head scan (skull on) is segmented inside an extracted mask,
the mask's outline is shown, brush corrections of the labels carry into the next segmentation,
and the mask can be saved. The tissue network is the tiny real ENet; the extractor returns the
phantom's known mask (the real extractor is tested in tests/engine/test_strip.py)."""
import nibabel as nib
import numpy as np
import pytest

from engine.infer import scan as scan_mod
from tests.engine.test_strip import las, phantom_head


class KnownExtractor:
    """Stands in for the network (engine tests run the real one): it returns the phantom's own
    intracranial mask through the real StripResult/assess path, so what the GUI does with a mask is
    tested on a mask that does not depend on random weights."""

    version = "known-mask"

    def __init__(self, mask):
        self.mask = mask
        self.calls = 0

    def extract(self, volume, affine, progress=None, cancel=None, planes=None):
        from engine.infer.strip import StripResult, assess

        self.calls += 1
        if progress:
            progress(1.0)
        prob = self.mask.astype(np.float32)
        vol, unsure, edge, reasons = assess(self.mask, prob, float(abs(np.linalg.det(affine[:3, :3]))) / 1000)
        return StripResult(self.mask.copy(), prob, vol, unsure, edge, 0.01, reasons)


@pytest.fixture
def tiny_extractor(monkeypatch):
    _, ic = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    loaded = []

    def get(model_dir=None):
        if not loaded:
            loaded.append(KnownExtractor(ic))
        return loaded[0]

    monkeypatch.setattr(scan_mod, "get_extractor", get)
    return loaded


@pytest.fixture
def head_scan(tmp_path):
    head, ic = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(head, las((3, 3, 3), head.shape)), str(path))
    return path


def test_head_scan_is_segmented_inside_its_brain_mask(enet_window, head_scan, tiny_extractor, qtbot, dialogs,
                                                     tmp_path):
    win = enet_window
    assert win.open_scan(head_scan)
    assert "skull on: Segment extracts the brain first" in win.statusBar().currentMessage()
    win.statusBar().clearMessage()  # gone from the bar (a timeout), still readable as its tooltip
    assert "skull on: Segment extracts the brain first" in win.statusBar().toolTip()
    assert not win.actions["save_brain_mask"].isEnabled()
    with qtbot.waitSignal(win.segmentationFinished, timeout=120000):
        win.actions["segment"].trigger()
    assert tiny_extractor, "the extractor ran for a scan with its skull on"
    mask = win.session.brain_mask
    assert mask is not None and mask.shape == win.scan.shape and mask.any()
    labels = win.labelmap.labels
    assert not labels[~mask].any() and (labels[mask] > 0).all()  # FSL_SEG inside, nothing outside
    assert tiny_extractor[0].calls == 1
    assert "brain extracted first" in win.statusBar().currentMessage()
    # the outline is drawn in magenta on the views, and can be hidden
    ax = win.views["axial"]
    ax.set_slice(int(np.argmax(mask.sum(axis=(0, 1)))))
    assert ax.mask_item.isVisible() and ax.mask_item.image is not None
    from brainseg_gui.views.slice_view import BRAIN_OUTLINE_RGBA

    assert (ax.mask_item.image == BRAIN_OUTLINE_RGBA).all(axis=-1).any()
    win.actions["toggle_brain_outline"].trigger()
    assert not ax.mask_item.isVisible()
    # the user erases a slab of the brain: the next segmentation keeps it out (the mask follows the labels)
    k = int(np.argmax(mask.sum(axis=(0, 1))))
    win.labelmap.paint(2, k, [(0.0, 0.0), (59.0, 69.0), (0.0, 69.0), (59.0, 0.0)], radius=80, value=0)  # eraser
    assert not win.labelmap.labels[:, :, k].any(), "the eraser cleared the slice"
    assert win.session.brain_mask_in_labels
    assert not win.session.current_brain_mask()[:, :, k].any()
    dialogs.choice = "replace"
    with qtbot.waitSignal(win.segmentationFinished, timeout=120000):
        win.actions["segment"].trigger()
    assert not win.labelmap.labels[:, :, k].any()
    # the mask can be saved, with the scan's geometry; never over the scan
    dialogs.save_path = str(tmp_path / "brainmask.nii.gz")
    win.actions["save_brain_mask"].trigger()
    saved = nib.load(str(tmp_path / "brainmask.nii.gz"))
    assert np.allclose(saved.affine, nib.load(str(head_scan)).affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj) > 0, win.session.current_brain_mask())
    dialogs.save_path = str(head_scan)
    win.actions["save_brain_mask"].trigger()
    assert dialogs.errors and "is the scan itself" in dialogs.errors[-1]


def test_extract_brain_action_and_a_stripped_scan(enet_window, head_scan, tiny_extractor, small_scan, qtbot):
    win = enet_window
    assert win.open_scan(head_scan)
    win.actions["extract_brain"].trigger()
    qtbot.waitUntil(lambda: win.session.brain_mask is not None, timeout=120000)
    assert "Brain extracted" in win.statusBar().currentMessage()
    assert win.actions["save_brain_mask"].isEnabled() and win.labelmap is None  # labels untouched
    # a skull-stripped scan: no extraction, no mask, the extractor not even asked for
    tiny_extractor.clear()
    scan, _, _ = small_scan
    assert win.open_scan(scan)
    assert win.session.brain_mask is None and not win.actions["save_brain_mask"].isEnabled()
    with qtbot.waitSignal(win.segmentationFinished, timeout=120000):
        win.actions["segment"].trigger()
    assert not tiny_extractor and win.session.brain_mask is None


def test_the_brain_outline_follows_brush_eraser_and_undo(enet_window, head_scan, tiny_extractor, qtbot):
    """Once the labels hold the mask, the magenta outline drawn is the outline of what Save brain mask
    writes (the labels' nonzero voxels): it moves with each eraser and brush stroke, and back on
    undo. (It used to stay where extraction drew it while the saved mask changed.)"""
    from brainseg_gui.views.slice_view import outline_of

    win = enet_window
    assert win.open_scan(head_scan)
    with qtbot.waitSignal(win.segmentationFinished, timeout=120000):
        win.actions["segment"].trigger()
    mask = win.session.brain_mask
    k = int(np.argmax(mask.sum(axis=(0, 1))))
    ax = win.views["axial"]
    ax.set_slice(k)

    def drawn():
        return ax.mask_item.image[..., 3] > 0

    def expected():
        return outline_of(ax.geometry_.display(win.session.current_brain_mask(), k).astype(np.uint8)) > 0

    extracted = drawn().copy()
    assert extracted.any() and (extracted == expected()).all()
    # erase a band through the right side of the brain (array x 6-14 of 60): the outline moves in
    win.labelmap.paint(2, k, [(10.0, 0.0), (10.0, 69.0)], radius=4, value=0)
    erased = drawn().copy()
    assert (erased == expected()).all() and (erased != extracted).sum() > 20
    # paint grey matter beyond the brain's front (array y 60-69, outside the phantom's mask): it grows
    outside = ~mask[:, :, k]
    win.labelmap.paint(2, k, [(25.0, 66.0), (35.0, 66.0)], radius=3, value=2)
    assert (win.labelmap.labels[:, :, k][outside] == 2).any()
    grown = drawn().copy()
    assert (grown == expected()).all() and (grown != erased).sum() > 5
    # undo, stroke by stroke: back to the extraction's outline; each undo says what it took back
    win.actions["undo"].trigger()
    assert (drawn() == erased).all()
    assert win.statusBar().currentMessage().startswith("Undone: stroke, ")
    assert f"axial slice {k + 1}" in win.statusBar().currentMessage()
    win.actions["undo"].trigger()
    assert (drawn() == extracted).all()
    assert win.statusBar().currentMessage().startswith("Undone: erase, ")
    win.actions["redo"].trigger()
    assert (drawn() == erased).all() and win.statusBar().currentMessage().startswith("Redone: erase, ")
