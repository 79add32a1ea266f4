"""A model's calibration.class_weights (model.json): a prior shift of the fused class probabilities
before the argmax, on every path that turns probabilities into labels (issue #21, CSF volumes)."""
import json
import shutil

import numpy as np
import pytest

# non-square voxels (1 x 1.25 x 2 mm, LAS): the work grid is resampled, and the weight must be
# applied where it commutes with that resampling
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, 1.25, 0, -30.0], [0, 0, 2.0, -8.0], [0, 0, 0, 1]])


def _phantom():
    """An asymmetric skull-stripped blob with three intensity bands (CSF-, GM-, WM-like)."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(12), indexing="ij")
    r = np.sqrt(((x - 17) / 15.0) ** 2 + ((y - 23) / 18.0) ** 2 + ((z - 6) / 5.5) ** 2)
    vol = np.where(r < 1.0, np.where(r < 0.5, 420.0, np.where(r < 0.8, 300.0, 120.0)), 0.0)
    vol[22:34, 12:20, 2:9] *= 0.6  # a darker region on one side only
    vol = np.where(vol > 0, vol + rng.normal(0, 20, vol.shape), 0.0)
    return np.clip(vol, 0, None).astype(np.float32)


def _with_calibration(src, dst, weights):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta["calibration"] = {"class_weights": weights}
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def test_the_weights_shift_the_fused_labels_exactly_as_a_prior_and_the_probabilities_stay_probabilities(
        tiny_model_dir, tmp_path):
    from engine.infer.inference import SegmentConfig, Segmenter

    vol = _phantom()
    plain = Segmenter(tiny_model_dir).segment(vol, SegmentConfig(return_probabilities=True), affine=AFFINE)
    assert (plain.labels[vol > 0] > 0).all()
    w = (1.0, 2.5, 1.0, 0.7)
    cal = Segmenter(_with_calibration(tiny_model_dir, tmp_path / "cal", list(w))).segment(
        vol, SegmentConfig(return_probabilities=True, uncertainty=True), affine=AFFINE)
    p = plain.probabilities
    expected = (np.argmax(p[1:] * np.asarray(w[1:], np.float32)[:, None, None, None], axis=0) + 1).astype(np.uint8)
    expected[vol <= 0] = 0
    assert np.mean(cal.labels != expected) < 1e-4
    changed = cal.labels != plain.labels
    assert changed.mean() > 0.01, "the weights must change the labels"
    # more weight on CSF, less on WM: voxels only ever move to CSF or away from WM
    assert ((cal.labels[changed] == 1) | (plain.labels[changed] == 3)).all()
    assert (cal.labels == 1).sum() > (plain.labels == 1).sum()
    np.testing.assert_allclose(cal.probabilities.sum(axis=0), 1.0, atol=1e-4)
    # the labels alone (no probabilities asked for: the unnormalised sum over planes) agree
    alone = Segmenter(tmp_path / "cal").segment(vol, SegmentConfig(), affine=AFFINE)
    assert np.mean(alone.labels != cal.labels) < 1e-4


@pytest.mark.parametrize("weight, csf_everywhere", [(1e6, True), (1e-6, False)])
def test_one_slice_and_the_whole_scan_follow_the_calibration(gentle_model_dir, tmp_path, weight, csf_everywhere):
    from engine.infer.inference import SegmentConfig, Segmenter

    vol = _phantom()
    seg = Segmenter(_with_calibration(gentle_model_dir, tmp_path / "cal", [1.0, weight, 1.0, 1.0]))
    k = 6
    one = seg.segment(vol, SegmentConfig(slices=(k,), uncertainty=True), affine=AFFINE)
    whole = seg.segment(vol, SegmentConfig(), affine=AFFINE)
    for labels in (one.labels[:, :, k], whole.labels):
        brain = labels[labels > 0]
        assert brain.size > 0
        assert (brain == 1).all() if csf_everywhere else not (brain == 1).any()


@pytest.mark.parametrize("bad", [[1, -1, 1, 1], [1, 2, 3], "1,2,3,4", [1, float("nan"), 1, 1]])
def test_a_malformed_calibration_is_refused_naming_the_file(tiny_model_dir, tmp_path, bad):
    from engine.nets.weights import WeightsError, read_model_dir

    d = _with_calibration(tiny_model_dir, tmp_path / "bad", bad)
    with pytest.raises(WeightsError, match=r"model\.json.*class_weights"):
        read_model_dir(d)


def test_a_model_without_calibration_has_none(tiny_model_dir):
    from engine.nets.weights import read_model_dir

    assert read_model_dir(tiny_model_dir).class_weights is None
