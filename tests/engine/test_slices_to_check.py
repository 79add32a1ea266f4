"""The least-certain list (issue #19): ordered by the expected number of wrong voxels, spread over
the brain, each entry saying what its number means."""
import numpy as np

from engine.infer.inference import slices_to_check


def test_slices_are_ordered_by_expected_errors_and_spread_out():
    p = np.zeros((20, 20, 60), np.float32)
    p[5:15, 5:15, 5:55] = 0.02  # a brain that is mostly sure
    p[:, :, 50:58] = np.where(p[:, :, 50:58] > 0, 0.5, 0)  # the vertex: ten small, very unsure slices...
    p[2:18, 2:18, 20] = 0.3  # ...and one big slice with more expected errors in total
    p[2:18, 2:18, 35] = 0.25
    out = slices_to_check(p, count=5, axis=2)
    assert out[0].index == 20 and out[1].index == 35, [c.index for c in out]
    assert [c.expected_wrong for c in out] == sorted((c.expected_wrong for c in out), reverse=True)
    gaps = np.diff(sorted(c.index for c in out))
    assert gaps.min() >= 5, "at most one entry per few slices, not neighbours"  # extent 53 / 10
    top = out[0]
    assert top.brain_voxels == 256 and abs(top.expected_wrong - 0.3 * 256) < 1e-3 and abs(top.fraction - 0.3) < 1e-6
    assert slices_to_check(np.zeros((4, 4, 4)), 3) == []


def test_other_axes():
    p = np.zeros((30, 8, 8), np.float32)
    p[3, 2:6, 2:6] = 0.4
    p[20, 1:7, 1:7] = 0.4
    assert [c.index for c in slices_to_check(p, 2, axis=0)] == [20, 3]
