"""Jobs never discard edits, autosave you can see, quitting while a job runs (issue #12).

Driven through the real window: mouse strokes on the views, the actions, the engine thread with
a real (tiny, untrained) MXNet ENet."""
import errno
import threading
import time

import numpy as np
from PyQt5 import QtCore

from tests.gui.helpers import _send, drag, open_with_brush, widget_pos


def test_segmenting_keeps_corrections_by_default_and_one_undo_restores(enet_window, small_scan, qtbot, dialogs):
    win = enet_window
    open_with_brush(win, small_scan)
    opened = win.labelmap.labels.copy()
    drag(qtbot, win.views["axial"], [(5, 5), (5, 30)])
    edited = win.labelmap.labels.copy()
    mine = opened != edited
    assert mine.sum() > 10
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000) as blocker:
        win.actions["segment"].trigger()
    assert dialogs.questions and "You corrected 1 slice" in dialogs.questions[-1]
    res = blocker.args[0]
    labels = win.labelmap.labels
    assert (labels[mine] == 1).all(), "every corrected voxel kept its correction"
    np.testing.assert_array_equal(labels[~mine], res.labels[~mine])
    assert "corrections on 1 slice were kept" in win.statusBar().currentMessage()
    assert win.labelmap.edited_axial_slices() == [win.views["axial"].index]
    win.actions["undo"].trigger()
    np.testing.assert_array_equal(win.labelmap.labels, edited)


def test_replacing_corrections_is_a_choice_and_cancel_does_nothing(enet_window, small_scan, qtbot, dialogs):
    win = enet_window
    open_with_brush(win, small_scan)
    drag(qtbot, win.views["axial"], [(5, 5), (5, 30)])
    edited = win.labelmap.labels.copy()
    dialogs.choice = "cancel"
    win.actions["segment"].trigger()
    assert not win.engine.is_busy and win.labelmap.undo_steps == 1
    dialogs.choice = "replace"
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000) as blocker:
        win.actions["segment"].trigger()
    np.testing.assert_array_equal(win.labelmap.labels, blocker.args[0].labels)
    assert win.labelmap.edited_axial_slices() == []
    win.actions["undo"].trigger()
    np.testing.assert_array_equal(win.labelmap.labels, edited)


def _slow_job_first(win, seconds):
    """Occupy the engine thread (as a model preload does) so that the next job waits in the queue."""
    started = threading.Event()

    def slow(state):
        started.set()
        time.sleep(seconds)

    win.engine.prefetch("slow preload", slow)
    assert started.wait(10)


def test_a_stroke_made_while_segmenting_survives_the_prediction(enet_window, small_scan, qtbot, dialogs):
    """The brush stays usable while the network runs; a prediction arriving in the middle of a
    stroke waits for the mouse to be released; the stroke is kept and is its own undo step."""
    win = enet_window
    open_with_brush(win, small_scan)
    opened = win.labelmap.labels.copy()
    _slow_job_first(win, 0.5)
    win.actions["segment"].trigger()
    assert win.engine.is_busy and win.actions["tool_brush"].isEnabled()
    assert not win.actions["open_labels"].isEnabled(), "opening labels now would lose them or the prediction"
    ax = win.views["axial"]
    vp = ax.gv.viewport()
    pts = [widget_pos(ax, 30, c) for c in (5, 15, 30)]
    _send(vp, QtCore.QEvent.MouseMove, pts[0], QtCore.Qt.NoButton, QtCore.Qt.NoButton)
    _send(vp, QtCore.QEvent.MouseButtonPress, pts[0], QtCore.Qt.LeftButton, QtCore.Qt.LeftButton)
    qtbot.wait(30)
    _send(vp, QtCore.QEvent.MouseMove, pts[1], QtCore.Qt.NoButton, QtCore.Qt.LeftButton)
    qtbot.waitUntil(lambda: not win.engine.is_busy, timeout=60000)  # the prediction arrived mid-stroke
    assert win.labelmap.in_stroke and win.labelmap.predicted is None, "it waits for the stroke"
    qtbot.wait(30)
    _send(vp, QtCore.QEvent.MouseMove, pts[2], QtCore.Qt.NoButton, QtCore.Qt.LeftButton)
    with qtbot.waitSignal(win.segmentationFinished, timeout=5000):
        _send(vp, QtCore.QEvent.MouseButtonRelease, pts[2], QtCore.Qt.LeftButton, QtCore.Qt.NoButton)
    k = ax.index
    row = win.labelmap.labels[:, :, k]
    assert win.labelmap.predicted is not None
    painted = win.labelmap.corrected_mask()
    assert painted[:, :, k].sum() > 10 and (row[painted[:, :, k]] == 1).all(), "the stroke survived"
    assert win.actions["open_labels"].isEnabled()
    win.actions["undo"].trigger()  # the prediction
    win.actions["undo"].trigger()  # the stroke
    np.testing.assert_array_equal(win.labelmap.labels, opened)


def test_cancel_reaches_a_segmentation_queued_behind_a_preload(enet_window, small_scan, qtbot):
    win = enet_window
    open_with_brush(win, small_scan)
    opened = win.labelmap.labels.copy()
    _slow_job_first(win, 0.5)
    win.actions["segment"].trigger()
    assert win.actions["cancel"].isEnabled()
    with qtbot.waitSignal(win.engine.cancelled, timeout=30000):
        win.actions["cancel"].trigger()
    qtbot.waitUntil(lambda: win.actions["segment"].isEnabled(), timeout=10000)  # not busy any more
    np.testing.assert_array_equal(win.labelmap.labels, opened)
    assert win.labelmap.predicted is None and not win.session.labels_job_running
    assert win.actions["open_labels"].isEnabled()


def test_autosave_failure_is_shown_retried_and_told_truthfully(window, small_scan, qtbot, monkeypatch):
    """Disk full on the recovery file: the status bar says so in red, the crash dialog does not
    claim the edits are autosaved, and the write is retried until it succeeds."""
    from brainseg_gui import app, session
    from engine.io import recovery

    win = window
    monkeypatch.setattr(session, "RETRY_MS", (150, 150))
    real = recovery.save_recovery
    calls = []

    def disk_full_twice(*a, **k):
        calls.append(1)
        if len(calls) <= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(recovery, "save_recovery", disk_full_twice)
    win.autosave_timer.setInterval(50)
    open_with_brush(win, small_scan)
    drag(qtbot, win.views["axial"], [(5, 5), (5, 30)])
    label = win.autosave_label
    qtbot.waitUntil(lambda: "Autosave failed" in label.text(), timeout=5000)
    assert "No space left on device" in label.text() and "c00000" in label.styleSheet()
    msg = app.crash_message(RuntimeError, RuntimeError("boom"), win)
    assert "NOT autosaved" in msg and "No space left" in msg
    qtbot.waitUntil(lambda: label.text().startswith("Autosaved"), timeout=5000)
    assert len(calls) == 3 and recovery.find_recovery(win.scan.path, win.scan.shape, key=win.session.scan_key) is not None
    assert "autosaved at" in app.crash_message(RuntimeError, RuntimeError("boom"), win)


def test_saving_labels_onto_the_scan_itself_is_refused(window, small_scan, dialogs):
    win = window
    scan, labels, _ = small_scan
    win.open_scan(scan)
    win.open_labels(labels)
    before = scan.read_bytes(), scan.with_suffix(".img").read_bytes()
    win.labelmap.paint("axial", 3, [(10, 10)], 2, 1)
    assert not win.save_labels_to(scan.with_suffix(".img"))
    assert dialogs.errors and "open scan's own file" in dialogs.errors[-1]
    assert (scan.read_bytes(), scan.with_suffix(".img").read_bytes()) == before
    assert win.session.dirty, "still unsaved"


def test_quitting_while_a_job_will_not_stop_waits_a_bounded_time_then_asks(window, small_scan, qtbot, dialogs,
                                                                          monkeypatch):
    from brainseg_gui import files

    win = window
    win.open_scan(small_scan[0])
    monkeypatch.setattr(files, "QUIT_WAIT_MS", 200)
    exits = []
    monkeypatch.setattr(win, "_exit_now", lambda: exits.append(1))
    stuck = threading.Event()
    win.engine.submit("segment", lambda state, progress, cancel: stuck.wait(20))  # ignores cancel
    qtbot.waitUntil(lambda: win.engine._current is not None, timeout=10000)
    dialogs.choice = "quit"
    win.close()
    assert exits == [1] and "has not stopped after" in dialogs.questions[-1]
    stuck.set()
    win.engine.wait(10000)


def test_a_corrupt_model_store_is_reported_in_the_window(qtbot, home, dialogs):
    """A corrupt active.json is backed up and said in the fine-tune panel and the status bar,
    never silently taken as 'shipped model, no history'."""
    from brainseg_gui.main_window import MainWindow
    from brainseg_gui.settings import Preferences

    store = home / "models"
    store.mkdir(parents=True)
    (store / "active.json").write_text('{"enet": "/x", trunc')
    win = MainWindow(prefs=Preferences(preload_model=False), start_engine=False)
    qtbot.addWidget(win)
    label = win.training_panel.problems_label
    assert not label.isHidden() and "unreadable" in label.text() and "active.json.corrupt-" in label.text()
    assert "Model store:" in win.statusBar().currentMessage()
    assert list(store.glob("active.json.corrupt-*"))
