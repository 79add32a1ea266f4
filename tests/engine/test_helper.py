"""A second process sharing a whole-volume pass's batches (engine/infer/helper.py): the same
probabilities to the bit as one process, and nothing lost when it dies or cannot start."""
from __future__ import annotations

import logging
import time

import nibabel as nib
import numpy as np
import pytest

from engine.core.mx_env import get_mx
from tests.models import untrained_enet

mx = get_mx()

# 1 x 1.3 x 2.2 mm voxels, stored LPS (the x axis flipped): the work grid is resampled and reoriented
AFFINE = np.array([[-1.0, 0, 0, 30], [0, -1.3, 0, 60], [0, 0, 2.2, -10], [0, 0, 0, 1]])


def _phantom(shape=(64, 56, 22), seed=3):
    """An off-centre, lopsided head: three tissue shells and a bright spot on one side only."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = np.sqrt(((x - 0.1) / 0.8) ** 2 + ((y + 0.05) / 0.7) ** 2 + (z / 0.9) ** 2)
    lab = np.select([r < 0.45, r < 0.7, r < 0.85], [3, 2, 1], 0)
    vol = np.array([0, 50, 110, 170], np.float32)[lab] + rng.normal(0, 6, shape).astype(np.float32)
    vol[(x > 0.3) & (y > 0.2) & (lab > 0)] += 40
    return np.where(lab > 0, np.clip(vol, 1, None), 0).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An ENet with a secondary planes' network, so that the helper must run both."""
    root = tmp_path_factory.mktemp("helper_model")
    untrained_enet(root / "model", "helper-test", 21)
    untrained_enet(root / "model" / "secondary", "helper-sec", 22, width=32, repeats=1)
    return root / "model"


def _config(**kw):
    from engine.infer.inference import SegmentConfig

    # batches of 3 slices: a dozen jobs or more per plane, so both processes get some
    return SegmentConfig(batch_size=3, return_probabilities=True, **kw)


VARIANTS = {"default": {}, "flip": {"flip": True}, "every slice": {"secondary_stride": 1}}


@pytest.fixture(scope="module")
def alone(model_dir):
    """One process: the references. "every slice": the later planes add into the sum directly, where
    the order of the additions decides the last bits."""
    from engine.infer.inference import Segmenter

    seg = Segmenter(model_dir)
    return {k: seg.segment(_phantom(), _config(**kw), affine=AFFINE) for k, kw in VARIANTS.items()}


def _helped(model_dir):
    from engine.infer import helper as helpers
    from engine.infer.inference import Segmenter

    seg = Segmenter(model_dir)
    seg.helper = helpers.NetworkHelper(model_dir, "fp32", threads=1)
    seg.helper.wait_ready()  # (on this small scan the parent would otherwise be done before it loads)
    return seg


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_helper_gives_the_same_probabilities_to_the_bit(model_dir, alone, variant):
    seg = _helped(model_dir)
    try:
        res = seg.segment(_phantom(), _config(**VARIANTS[variant]), affine=AFFINE)
        assert 0 < seg.helper.batches, "the helper ran nothing"
        assert seg.helper.error is None
    finally:
        seg.helper.close()
    ref = alone[variant]
    assert "helper-sec" in res.model and "helper-sec" in ref.model  # the secondary network ran in both
    assert res.slices_run == ref.slices_run
    np.testing.assert_array_equal(res.probabilities, ref.probabilities)
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert len(np.unique(res.labels)) > 2  # a real segmentation, not all background


def test_flip_changes_the_probabilities(alone):
    """(So that the flip variant above tests something: the flag reaches both processes.)"""
    assert not np.array_equal(alone["flip"].probabilities, alone["default"].probabilities)


def test_results_that_arrive_late_are_added_in_order(model_dir, alone, monkeypatch):
    """The helper holds its 2nd batch for 2 s while the parent runs on through the later planes: the
    sums are still made in the batches' order, so the last bits are one process's."""
    from engine.infer.helper import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "slow:2:2")
    seg = _helped(model_dir)
    try:
        res = seg.segment(_phantom(), _config(secondary_stride=1), affine=AFFINE)
        assert seg.helper.batches >= 2
    finally:
        seg.helper.close()
    np.testing.assert_array_equal(res.probabilities, alone["every slice"].probabilities)


def test_a_helper_killed_mid_pass_loses_nothing(model_dir, alone, monkeypatch, caplog):
    """The helper SIGKILLs itself on receiving its 2nd batch: the parent computes that batch and the
    rest, says why in the log, and the result is unchanged."""
    from engine.infer.helper import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "kill:2")
    seg = _helped(model_dir)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.infer.helper"):
            res = seg.segment(_phantom(), _config(), affine=AFFINE)
        assert seg.helper.batches == 1
        assert "it died" in seg.helper.error and "-9" in seg.helper.error
        assert any("computes the rest alone" in r.getMessage() for r in caplog.records)
        np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)
        again = seg.segment(_phantom(), _config(), affine=AFFINE)  # a dead helper is not used again
        np.testing.assert_array_equal(again.labels, alone["default"].labels)
    finally:
        seg.helper.close()


def test_a_helper_silent_on_a_batch_is_killed_and_its_batch_computed_here(model_dir, alone, monkeypatch):
    from engine.infer.helper import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "slow:1:60")  # stuck on its first batch
    monkeypatch.setattr("engine.infer.inference.ANSWER_TIMEOUT_S", 1.0)
    seg = _helped(model_dir)
    try:
        t = time.time()
        res = seg.segment(_phantom(), _config(), affine=AFFINE)
        assert time.time() - t < 40  # did not wait out the helper's minute
        assert "no answer in 1 s" in seg.helper.error
    finally:
        seg.helper.close()
    np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)


def test_a_pass_does_not_wait_for_a_helper_that_is_still_starting(model_dir, alone, monkeypatch):
    from engine.infer import helper as helpers
    from engine.infer.helper import FAULT_ENV
    from engine.infer.inference import Segmenter

    monkeypatch.setenv(FAULT_ENV, "start:60")
    seg = Segmenter(model_dir)
    seg.helper = helpers.NetworkHelper(model_dir, "fp32", threads=1)
    try:
        t = time.time()
        res = seg.segment(_phantom(), _config(), affine=AFFINE)
        again = seg.segment(_phantom(), _config(flip=True), affine=AFFINE)  # a second pass: no crossed pipes
        assert seg.helper.batches == 0 and seg.helper.error is None
    finally:
        seg.helper.close()  # (killed: it has nothing in flight while it loads)
    assert time.time() - t < 40
    np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)
    np.testing.assert_array_equal(again.probabilities, alone["flip"].probabilities)


def test_a_helper_that_cannot_load_the_model_says_why(model_dir, alone, tmp_path):
    from engine.infer import helper as helpers
    from engine.infer.inference import Segmenter

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    seg = Segmenter(model_dir)
    seg.helper = helpers.NetworkHelper(broken, "fp32", threads=1)
    seg.helper.proc.wait(timeout=120)  # it tells why on its stdout and exits; the pass reads that
    try:
        res = seg.segment(_phantom(), _config(), affine=AFFINE)
    finally:
        seg.helper.close()
    assert seg.helper.batches == 0
    assert "did not start" in seg.helper.error and "model.json" in seg.helper.error
    np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)


def test_a_helper_failing_on_a_batch_says_why(model_dir, alone, monkeypatch):
    from engine.infer.helper import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "fail:2")
    seg = _helped(model_dir)
    try:
        res = seg.segment(_phantom(), _config(), affine=AFFINE)
    finally:
        seg.helper.close()
    assert seg.helper.batches == 1 and "MemoryError: injected for a test" in seg.helper.error
    np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)


def test_a_helper_that_exited_before_the_pass_is_not_used(model_dir, alone, caplog):
    seg = _helped(model_dir)
    seg.helper.proc.kill()
    seg.helper.proc.wait()
    try:
        with caplog.at_level(logging.WARNING, logger="engine.infer.helper"):
            res = seg.segment(_phantom(), _config(), affine=AFFINE)
    finally:
        seg.helper.close()
    assert seg.helper.batches == 0 and seg.helper.error.startswith("it exited")
    assert any("it exited" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)


def test_asking_for_a_secondary_network_that_is_not_there_is_an_error(tmp_path):
    from engine.infer.helper import SECONDARY
    from engine.infer.inference import Segmenter

    seg = Segmenter(untrained_enet(tmp_path / "plain", "plain-test", 23))
    with pytest.raises(ValueError, match="secondary"):
        seg.batch_probabilities(np.zeros((1, 16, 16), np.float32), SECONDARY)


def test_cancel_with_a_helper_stops_and_leaves_it_usable(model_dir, alone):
    from engine.core.cancel import Cancelled, CancelToken

    seg = _helped(model_dir)
    try:
        tok = CancelToken()
        seen = []

        def progress(done, total):
            seen.append(done)
            if done >= 6:
                tok.cancel()

        with pytest.raises(Cancelled):
            seg.segment(_phantom(), _config(), progress=progress, cancel=tok, affine=AFFINE)
        assert seen[-1] < seen[0] + 40  # stopped early, not at the end
        res = seg.segment(_phantom(), _config(), affine=AFFINE)  # the pipe is in step again
        assert seg.helper.error is None
        np.testing.assert_array_equal(res.probabilities, alone["default"].probabilities)
    finally:
        seg.helper.close()


def test_plan(monkeypatch):
    from engine.infer import helper as helpers

    monkeypatch.setattr("engine.core.hardware.gpu_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert helpers.plan("auto", cores=2) == (1, 1)
    assert helpers.plan("auto", cores=8) == (4, 4)
    assert helpers.plan("auto", cores=3) == (2, 1)
    assert helpers.plan("auto", cores=1) is None
    assert helpers.plan("1", cores=8) is None
    assert helpers.plan("2", cores=1) == (1, 1)  # asked for: given
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice of threads: one process
    assert helpers.plan("auto", cores=2) is None
    assert helpers.plan("2", cores=2) == (1, 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("engine.core.hardware.gpu_available", lambda: True)
    assert helpers.plan("auto", cores=2) is None
    with pytest.raises(ValueError):
        helpers.plan("3")


def test_cli_segment_with_two_processes_writes_the_same_mask(model_dir, tmp_path, monkeypatch, capsys):
    """`brainseg segment --processes 2` (relative paths, a second folder) against --processes 1."""
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(_phantom(), AFFINE), "in/scan.nii.gz")
    for n in ("1", "2"):
        assert main(["segment", "in/scan.nii.gz", "-o", f"out{n}.nii.gz", "--weights", str(model_dir),
                     "--processes", n, "--strip", "off", "-v"]) == 0
    err = capsys.readouterr().err
    assert "helper process computed" in err  # it was attached (how many batches it got before the parent was done varies)
    a, b = (np.asarray(nib.load(f"out{n}.nii.gz").dataobj) for n in ("1", "2"))
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) > 2


def test_cli_segment_of_a_few_slices_keeps_all_cores_in_one_process(model_dir, tmp_path, monkeypatch, capsys):
    from engine.cli import main

    def no_plan(*a, **k):
        raise AssertionError("a few slices must not plan a helper: that halves this process's threads")

    monkeypatch.setattr("engine.infer.helper.plan", no_plan)
    nib.save(nib.Nifti1Image(_phantom(), AFFINE), str(tmp_path / "scan.nii.gz"))
    assert main(["segment", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "--weights",
                 str(model_dir), "--slices", "10-11", "--processes", "2", "--strip", "off", "-v"]) == 0
    assert "helper process" not in capsys.readouterr().err


def test_cli_segment_of_a_raw_head_extracts_with_all_cores_and_no_helper(model_dir, tmp_path, capsys):
    """--strip on: the brain extractor runs first, in this process: it must not run on half the
    threads beside an idle helper (a raw head took 10.2 s instead of 8.5 s)."""
    from engine.cli import main

    nib.save(nib.Nifti1Image(_phantom(), AFFINE), str(tmp_path / "head.nii.gz"))
    assert main(["segment", str(tmp_path / "head.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "--weights",
                 str(model_dir), "--processes", "2", "--strip", "on", "-v"]) == 0
    err = capsys.readouterr().err
    assert "brain extraction first: one process" in err and "helper process computed" not in err
