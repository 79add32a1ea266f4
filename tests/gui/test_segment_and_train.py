"""Segmenting and fine-tuning from the GUI: jobs run on the engine thread, results come back
as signals, manual edits are protected, cancel leaves everything as it was."""
import json

import numpy as np
from PyQt5 import QtCore

from tests.gui.helpers import click, open_with_brush


def test_segment_volume_from_gui(enet_window, small_scan, qtbot):
    win = enet_window
    scan, _, _ = small_scan
    win.open_scan(scan)
    assert "ENet" in win.segment_panel.reason.text() and "chosen by the user" in win.segment_panel.reason.text()
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000) as blocker:
        win.actions["segment"].trigger()
        qtbot.waitUntil(lambda: win.actions["cancel"].isEnabled() or win.labelmap is not None, timeout=30000)
    res = blocker.args[0]
    assert win.labelmap.labels.shape == win.scan.shape and win.labelmap.labels.dtype == np.uint8
    np.testing.assert_array_equal(win.labelmap.labels, res.labels)
    assert win.labelmap.undo_steps == 1, "a prediction is one undoable step"
    assert "Segmented the volume" in win.statusBar().currentMessage()
    # uncertainty: a toggleable heat overlay and the least-certain slices to correct first
    win.actions["toggle_uncertainty"].trigger()
    ax = win.views["axial"]
    assert ax.heat.isVisible() and ax.heat.image is not None
    lst = win.segment_panel.uncertain_list
    assert lst.count() > 0
    k = lst.item(0).data(QtCore.Qt.UserRole)
    lst.itemClicked.emit(lst.item(0))
    assert ax.index == k


def test_model_preloads_when_a_scan_opens(enet_window, small_scan, qtbot, tiny_model_dir):
    """Opening a scan loads the model in the background without making the app busy, so the
    first Segment click finds it loaded."""
    win = enet_window
    win.prefs.preload_model = True
    scan, _, _ = small_scan
    win.open_scan(scan)
    assert not win.engine.is_busy and win.actions["segment"].isEnabled()
    loaded = lambda: any(str(tiny_model_dir) == key[0] for key in win.engine.state.segmenters)  # noqa: E731
    qtbot.waitUntil(loaded, timeout=30000)
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000):
        win.actions["segment"].trigger()
    assert win.labelmap is not None and len(win.engine.state.segmenters) == 1, "the preloaded model was used"


def test_segment_current_slice_only(enet_window, small_scan, qtbot):
    win = enet_window
    scan, _, _ = small_scan
    win.open_scan(scan)
    k = win.views["axial"].index
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000):
        win.actions["segment_slice"].trigger()
    touched = np.where(win.labelmap.labels.any(axis=(0, 1)))[0]
    assert list(touched) == [k], "that slice, and only that slice, was segmented"
    # a skull-stripped scan: every voxel of the brain in that slice got a tissue label (FSL_SEG)
    brain = win.scan.data[:, :, k] > 0
    assert brain.any() and np.array_equal(win.labelmap.labels[:, :, k] > 0, brain)
    assert "Segmented the slice" in win.statusBar().currentMessage()


def test_finetune_from_panel_creates_version_then_rollback(enet_window, small_scan, qtbot, tiny_model_dir, dialogs):
    dialogs.yes = True  # if the tiny random model scores lower than its parent: activate anyway
    win = enet_window
    open_with_brush(win, small_scan)
    panel = win.training_panel
    assert not panel.start_button.isEnabled(), "nothing corrected yet"
    ax = win.views["axial"]
    for k in (6, 9, 12):
        ax.set_slice(k)
        click(qtbot, ax, 20, 20)
    assert panel.start_button.isEnabled() and "3 slices to learn from (3 axial)" in panel.status.text()
    panel.epochs.setValue(2)
    panel.batch.setValue(2)
    panel.steps_per_epoch = 2
    with qtbot.waitSignal(panel.trainingFinished, timeout=120000) as blocker:
        panel.start_button.click()
    res = blocker.args[0]
    meta = json.loads((res.version_dir / "model.json").read_text())
    assert meta["parent"] == "tiny-test" and len(meta["after"]["confusion_matrix"]) == 4
    assert sorted(meta["train_slices"] + meta["val_slices"]) == [6, 9, 12]
    assert win.model_dir() == res.version_dir, "the new version is active"
    assert panel.cm_view.matrix is not None and panel.cm_view.matrix.shape == (4, 4)
    assert panel.dice_table.item(2, 2).text() != ""
    assert len(panel.loss_curve.getData()[0]) >= 1 and any("[active]" in panel.versions.item(i).text()
                                                           for i in range(panel.versions.count()))
    panel.rollback_button.click()
    assert win.model_dir() == tiny_model_dir


def test_cancel_finetune_keeps_previous_version(enet_window, small_scan, qtbot, tiny_model_dir):
    win = enet_window
    open_with_brush(win, small_scan)
    ax = win.views["axial"]
    for k in (5, 8):
        ax.set_slice(k)
        click(qtbot, ax, 20, 20)
    panel = win.training_panel
    panel.epochs.setValue(200)
    panel.steps_per_epoch = 50
    with qtbot.waitSignal(win.engine.cancelled, timeout=120000):
        panel.start_button.click()
        qtbot.waitUntil(lambda: panel.job_id is not None and win.engine.is_busy, timeout=10000)
        qtbot.wait(300)
        panel.cancel_button.click()
    assert "no version was written" in panel.status.text()
    assert win.model_dir() == tiny_model_dir
    versions = [v for v in win.model_store.versions("enet") if not v.shipped]
    assert versions == []


def test_segmentation_of_a_closed_scan_is_not_applied_to_the_next(enet_window, small_scan, qtbot, tmp_path):
    import nibabel as nib

    win = enet_window
    scan, _, _ = small_scan
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(str(scan)).dataobj)[..., 0].astype(np.float32),
                             np.diag([-1.0, 1.0, 1.2, 1.0])), str(other))
    win.open_scan(scan)
    win.actions["segment"].trigger()
    win.open_scan(other)  # same grid: a stale result would fit
    qtbot.waitUntil(lambda: not win.engine.is_busy, timeout=60000)
    qtbot.wait(50)
    assert win.labelmap is None, "the first scan's segmentation must not land on the second"


def test_navigate_click_moves_every_linked_view(window, small_scan, qtbot):
    scan, _, _ = small_scan
    window.open_scan(scan)
    window.set_cursor((7, 9, 4))
    assert [window.views[v].index for v in ("sagittal", "coronal", "axial")] == [7, 9, 4]


def test_a_fine_tune_is_activated_without_asking_only_on_enough_evidence(enet_window, small_scan, qtbot,
                                                                         tiny_model_dir, dialogs, tmp_path):
    """Issue #20: a fine-tune was auto-activated on the evidence of one held-back slice. Now: with
    fewer than 5 held-back slices, or a gain whose confidence interval reaches "worse", the user is
    asked (No keeps the current model, the version stays in the list; Yes activates it); a clear
    gain on enough slices is activated at once."""
    import shutil
    from types import SimpleNamespace

    win = enet_window
    win.open_scan(small_scan[0])
    panel = win.training_panel
    name, d = win.model_store.new_version_dir("enet")
    shutil.copytree(tiny_model_dir, d, dirs_exist_ok=True)
    few = SimpleNamespace(version_dir=d, before={"mean_tissue_dice": 0.80, "dice": {}, "per_slice": [0.80]},
                          after={"mean_tissue_dice": 0.95, "dice": {}, "per_slice": [0.95]}, val_slices=[3],
                          seconds=12.0, train_slices=[1, 2])
    panel._job_arch = "enet"
    dialogs.yes = False
    panel.on_finished(few)
    assert dialogs.questions and "only 1 held-back slice to judge it by" in dialogs.questions[-1]
    assert win.model_dir() == tiny_model_dir and "not activated" in panel.status.text()
    mixed = SimpleNamespace(**{**vars(few), "val_slices": list(range(6)),
                               "before": {"dice": {}, "per_slice": [0.8, 0.8, 0.8, 0.8, 0.8, 0.8]},
                               "after": {"dice": {}, "per_slice": [0.9, 0.7, 0.85, 0.75, 0.82, 0.79]}})
    n = len(dialogs.questions)
    panel.on_finished(mixed)
    assert len(dialogs.questions) == n + 1 and "may be worse than its parent" in dialogs.questions[-1]
    assert win.model_dir() == tiny_model_dir
    dialogs.yes = True
    panel.on_finished(mixed)
    assert win.model_dir() == d and "Segment again" in panel.status.text()
    win.model_store.rollback("enet")
    clear = SimpleNamespace(**{**vars(mixed), "after": {"dice": {}, "per_slice": [0.85, 0.84, 0.86, 0.83, 0.85, 0.86]}})
    n = len(dialogs.questions)
    panel.on_finished(clear)
    assert len(dialogs.questions) == n, "a clear gain on 6 slices is activated without a question"
    assert win.model_dir() == d
