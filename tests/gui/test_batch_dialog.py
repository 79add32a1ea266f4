"""File > Segment a cohort: the batch runs as its own process from the dialog, with progress, a
table and a report at the end; an existing batch folder is continued, not redone."""
import csv

import nibabel as nib
import numpy as np
from PyQt5 import QtCore


def _scan(path, seed):
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 48, 16)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 0.9) ** 2) + rng.normal(0, 0.02, x.shape)
    img = np.choose((r < 0.95).astype(int) + (r < 0.85) + (r < 0.6), [0, 60, 120, 200]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, np.diag([1.2, 1.2, 1.5, 1.0])), str(path))


def test_segment_a_cohort_from_the_window(window, tmp_path, tiny_model_dir, qtbot, dialogs):
    for i in range(2):
        _scan(tmp_path / "cohort" / f"s{i}.nii.gz", i)
    window.model_dir = lambda: tiny_model_dir
    window.actions["batch"].trigger()
    dlg = window.batch_dialog
    assert not dlg.start_button.isEnabled(), "nothing to do yet"
    dlg.add_inputs([str(tmp_path / "cohort")])
    dlg.output.setText(str(tmp_path / "out"))
    dlg._update()
    assert dlg.start_button.isEnabled()
    with qtbot.waitSignal(dlg.batchFinished, timeout=180000) as blocker:
        qtbot.mouseClick(dlg.start_button, QtCore.Qt.LeftButton)
    assert blocker.args[0] == 0, dlg.log.toPlainText()  # none failed (the phantoms are flagged for QC)
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert dlg.progress.value() == 2 and dlg.report_button.isEnabled()
    assert "Table:" in dlg.status.text()
    # starting again in the same folder continues it (asks first), doing no work twice
    dialogs.yes = True
    with qtbot.waitSignal(dlg.batchFinished, timeout=180000):
        qtbot.mouseClick(dlg.start_button, QtCore.Qt.LeftButton)
    assert "Continue it" in dialogs.questions[-1] and "0 scans processed now" in dlg.log.toPlainText()
    dlg.close()


def test_stop_keeps_whole_rows_and_continue_finishes(window, tmp_path, tiny_model_dir, qtbot, dialogs):
    for i in range(10):
        _scan(tmp_path / "cohort" / f"s{i}.nii.gz", i)
    window.model_dir = lambda: tiny_model_dir
    window.actions["batch"].trigger()
    dlg = window.batch_dialog
    window.actions["batch"].trigger()
    assert window.batch_dialog is dlg, "one batch dialog per window"
    dlg.add_inputs([str(tmp_path / "cohort")])
    dlg.output.setText(str(tmp_path / "out"))  # typed: Start enables itself
    assert dlg.start_button.isEnabled()
    qtbot.mouseClick(dlg.start_button, QtCore.Qt.LeftButton)
    qtbot.waitUntil(lambda: dlg.progress.value() >= 1, timeout=120000)
    with qtbot.waitSignal(dlg.batchFinished, timeout=120000) as blocker:
        qtbot.mouseClick(dlg.stop_button, QtCore.Qt.LeftButton)
    assert blocker.args[0] == 130 and "Stopped" in dlg.status.text()
    lines = (tmp_path / "out" / "volumes.csv").read_text().splitlines()
    assert 2 <= len(lines) <= 10, "stopped before the end, whole rows"
    assert not (tmp_path / "out" / ".stop-requested").exists()
    with qtbot.waitSignal(dlg.batchFinished, timeout=180000):
        qtbot.mouseClick(dlg.resume_button, QtCore.Qt.LeftButton)
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert len(rows) == 10 and len({r["scan"] for r in rows}) == 10
