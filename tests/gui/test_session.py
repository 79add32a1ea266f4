"""The document session alone, without a window: opening, the prediction merge rule, stale
results, labels refused while a prediction is on its way, and saving."""
import numpy as np
import pytest

from brainseg_gui.session import LabelsError, Session


@pytest.fixture
def session(qtbot, home):
    s = Session()
    yield s
    s.shutdown()


def test_open_reports_and_a_prediction_for_another_scan_is_dropped(session, small_scan):
    scan, labels, _ = small_scan
    report = session.open_scan(scan)
    assert report.volume.shape == (48, 56, 20) and "Opened small_t88_masked_gfc" in report.message
    assert "assumed LAS" in report.message  # Analyze stores no orientation
    ticket = session.begin_prediction(None, replace=False)
    session.open_scan(scan)  # the same file opened again is another document
    assert session.land_prediction(ticket, np.ones((48, 56, 20), np.uint8)) == "stale"
    assert session.labelmap is None


def test_labels_cannot_be_opened_while_a_prediction_is_on_its_way(session, small_scan):
    scan, labels, _ = small_scan
    session.open_scan(scan)
    ticket = session.begin_prediction([3], replace=False)
    with pytest.raises(LabelsError, match="segmentation is running"):
        session.open_labels(labels)
    session.abandon_prediction(ticket)
    session.open_labels(labels)
    assert session.labelmap is not None and session.labels_path == labels


def test_the_merge_rule_keeps_corrections_made_before_and_during_the_job(session, small_scan):
    scan, labels, ref = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    lm.paint("axial", 4, [(10, 10)], 2, 0)  # before the job
    ticket = session.begin_prediction(None, replace=True)  # the user chose to replace those...
    lm.paint("axial", 8, [(20, 20)], 2, 0)  # ...but this one was made while it ran
    pred = np.full(lm.shape, 3, np.uint8)
    assert session.land_prediction(ticket, pred) == "landed"
    assert lm.labels[10, 10, 4] == 3, "replaced, as chosen"
    assert lm.labels[20, 20, 8] == 0, "made during the job: kept"
    assert lm.edited_axial_slices() == [8]


def test_a_prediction_landing_mid_stroke_waits_for_the_stroke(session, small_scan):
    scan, labels, _ = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    ticket = session.begin_prediction(None, replace=False)
    lm.begin_stroke("axial", 5, 1)
    lm.stroke_to((10, 10), 2)
    assert session.land_prediction(ticket, np.full(lm.shape, 3, np.uint8)) == "deferred"
    assert lm.predicted is None and session.labels_job_running
    lm.stroke_to((10, 20), 2)
    lm.end_stroke()
    session.stroke_finished()
    assert lm.predicted is not None and not session.labels_job_running
    assert lm.labels[10, 15, 5] == 1 and lm.labels[30, 30, 10] == 3
    lm.undo()
    lm.undo()
    assert lm.labels[10, 15, 5] != 1 and not lm.can_undo


def test_save_refuses_the_scan_and_writes_elsewhere(session, small_scan, tmp_path):
    from engine.io.volume import VolumeWriteError, read_volume

    scan, labels, _ = small_scan
    session.open_scan(scan)
    lm = session.ensure_labelmap()
    lm.paint("axial", 3, [(10, 10)], 2, 2)
    with pytest.raises(VolumeWriteError, match="open scan's own file"):
        session.save_labels_to(scan)
    out = tmp_path / "mask.nii.gz"
    session.save_labels_to(out)
    assert not session.dirty and read_volume(out, kind="labels").data[10, 10, 3] == 2


def test_a_prediction_waits_for_a_preview_and_for_undo_ending_a_stroke(session, small_scan):
    """Review findings: a prediction arriving during a label operation's preview waits for it; one
    deferred during a stroke lands when Ctrl+Z ends the stroke; a newer job's ticket survives."""
    scan, labels, _ = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    ticket = session.begin_prediction(None, replace=False)
    session.set_preview(True)
    assert session.land_prediction(ticket, np.full(lm.shape, 3, np.uint8)) == "deferred"
    assert lm.predicted is None
    session.set_preview(False)
    assert lm.predicted is not None and not session.labels_job_running
    # deferred during a stroke, then the stroke ends through undo (no mouse release)
    t2 = session.begin_prediction(None, replace=False)
    lm.begin_stroke("axial", 5, 1)
    lm.stroke_to((10, 10), 2)
    assert session.land_prediction(t2, np.full(lm.shape, 2, np.uint8)) == "deferred"
    t3 = session.begin_prediction([4], replace=False)  # a newer job started meanwhile
    lm.undo()  # ends the stroke and undoes it
    session.flush_deferred()
    assert (lm.predicted == 2).all() and session.pending is t3, "the newer job's ticket stays"


def test_autosave_retries_after_a_stroke_and_ignores_an_old_maps_result(session, small_scan, qtbot):
    scan, labels, _ = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    lm.begin_stroke("axial", 5, 1)
    lm.stroke_to((10, 10), 2)
    session.autosave_timer.stop()
    session.autosave()  # fires mid-stroke
    assert session.autosave_timer.isActive(), "tried again later, not forgotten"
    lm.end_stroke()
    old_gen = session._generation
    session.open_labels(labels)  # another label map
    session._autosaveDone.emit(old_gen, 99, "/x", "")
    assert session.autosave_state != "saved", "a result for the old map is ignored"


def test_after_replacing_corrections_the_summary_says_none(session, small_scan):
    scan, labels, _ = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    lm.paint("axial", 4, [(24, 28)], 2, 1)
    assert session.edit_summary() == "1 edit on 1 axial slice"
    t = session.begin_prediction(None, replace=True)
    session.land_prediction(t, np.full(lm.shape, 3, np.uint8))
    assert session.edit_summary() == "no corrections"


def test_a_restore_keeps_what_the_labels_were_when_opened(session, small_scan, home):
    """Recovered edits to an opened label map (never segmented): a later prediction keeps only the
    edits, not every opened label (the recovery file holds the labels as opened)."""
    from engine.io import recovery

    scan, labels, _ = small_scan
    session.open_scan(scan)
    session.open_labels(labels)
    lm = session.labelmap
    lm.paint("axial", 4, [(24, 28)], 2, 1)
    edits = int((lm.labels != lm.baseline).sum())
    assert edits > 0
    recovery.save_recovery(scan, lm.labels, lm.edited_axial_slices(), 1, None, lm.edited_pairs(), lm.baseline)
    fresh = Session()  # the app after a crash
    report = fresh.open_scan(scan)
    fresh.restore_recovery(report.recovery)
    assert int(fresh.labelmap.corrected_mask().sum()) == edits, "the opened labels are not 'corrections'"
    fresh.shutdown()
