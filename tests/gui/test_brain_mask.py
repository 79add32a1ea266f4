"""Brain extraction in the window: a head scan (skull on) is segmented inside an extracted mask,
the mask's outline is shown, brush corrections of the labels carry into the next segmentation,
and the mask can be saved. A tiny untrained extractor (real MXNet) stands in for the shipped one."""
import nibabel as nib
import numpy as np
import pytest

from engine.infer import scan as scan_mod
from tests.engine.test_strip import las, phantom_head


@pytest.fixture
def tiny_extractor(monkeypatch, tmp_path_factory):
    from engine.core.mx_env import get_mx

    mx = get_mx()
    from engine.infer.strip import BrainExtractor
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    d = tmp_path_factory.mktemp("strip_gui")
    kw = {"classes": 2, "base": 4, "levels": 5}
    net = get_model("unet", **kw)
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 3, 32, 32)))
    write_model_dir(d, net, "unet", kw, version="tiny-strip")
    loaded = []

    def get(model_dir=None):
        if not loaded:
            loaded.append(BrainExtractor(d))
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
    assert not win.actions["save_brain_mask"].isEnabled()
    with qtbot.waitSignal(win.segmentationFinished, timeout=120000):
        win.actions["segment"].trigger()
    assert tiny_extractor, "the extractor ran for a scan with its skull on"
    mask = win.session.brain_mask
    assert mask is not None and mask.shape == win.scan.shape and mask.any()
    labels = win.labelmap.labels
    assert not labels[~mask].any() and (labels[mask] > 0).all()  # FSL_SEG inside, nothing outside
    assert "brain extracted first" in win.statusBar().currentMessage()
    # the outline is drawn in cyan on the views, and can be hidden
    ax = win.views["axial"]
    ax.set_slice(int(np.argmax(mask.sum(axis=(0, 1)))))
    assert ax.mask_item.isVisible() and ax.mask_item.image is not None
    assert (ax.mask_item.image[..., 2] == 255).any()
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
