"""File > Segment a cohort: the batch runs as its own process from the dialog, with progress, a
table and a report at the end; an existing batch folder is continued, not redone."""
import csv

from PyQt5 import QtCore

from tests.phantoms import write_scan


def _batch_dialog(window, tmp_path, tiny_model_dir, n_scans):
    """n small scans in tmp_path/cohort and the window's batch dialog, with the tiny model."""
    for i in range(n_scans):
        write_scan(tmp_path / "cohort" / f"s{i}.nii.gz", i)
    window.model_dir = lambda: tiny_model_dir
    window.actions["batch"].trigger()
    return window.batch_dialog


def test_segment_a_cohort_from_the_window(window, tmp_path, tiny_model_dir, qtbot, dialogs):
    dlg = _batch_dialog(window, tmp_path, tiny_model_dir, 2)
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
    dlg = _batch_dialog(window, tmp_path, tiny_model_dir, 10)
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


def test_open_report_says_where_it_is_when_no_browser_opens(qtbot, tmp_path, dialogs, monkeypatch):
    """Issue #20: "Open report" did nothing visible without a browser."""
    from PyQt5 import QtGui, QtWidgets

    from brainseg_gui.dialogs.batch_dialog import BatchDialog

    dlg = BatchDialog(lambda: tmp_path)
    qtbot.addWidget(dlg)
    dlg.output.setText(str(tmp_path / "out"))
    dlg.open_report()
    assert dialogs.errors and "no report yet" in dialogs.errors[-1]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("<html></html>")
    monkeypatch.setattr(QtGui.QDesktopServices, "openUrl", staticmethod(lambda url: False))
    dlg.open_report()
    assert dialogs.infos and str(tmp_path / "out" / "report.html") in dialogs.infos[-1]
    assert QtWidgets.QApplication.clipboard().text() == str((tmp_path / "out" / "report.html").resolve())
