"""Synthetic training subjects: the mask tightening that teaches the networks that not every brain
ends in a rim of CSF (issue #21). numpy/scipy only."""
from __future__ import annotations

import numpy as np

from engine.train.synth import SubjectConfig, make_subject, pial_hull, tighten_mask

SHAPE = (64, 72, 60)
CENTRE = np.array([30.0, 38.0, 28.0])  # off-centre: an axis swap or flip shows


def phantom_labels(with_sulcus: bool = False):
    """Ellipsoidal brain: WM core, GM shell, a 4-voxel CSF rim, and a 1-voxel sulcus (CSF) cut through
    the GM shell on one side only."""
    idx = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(sum(((idx[i] - CENTRE[i]) / s) ** 2 for i, s in enumerate((1.0, 1.2, 0.95))))
    lab = np.zeros(SHAPE, np.uint8)
    lab[r <= 24] = 1
    lab[r <= 20] = 2
    lab[r <= 14] = 3
    sulcus = (np.abs(idx[0] - (CENTRE[0] + 6)) < 0.5) & (idx[1] > CENTRE[1]) & (lab == 2) & (r > 15.5)
    lab[sulcus] = 1
    return (lab, sulcus & (r < 19)) if with_sulcus else lab  # its mouth at the convex surface may stay open


def test_pial_hull_bridges_sulci_and_leaves_the_outer_rim_out():
    lab, sulcus = phantom_labels(with_sulcus=True)
    hull = pial_hull(lab, radius=3.0)
    assert sulcus.sum() > 100
    assert hull[lab >= 2].all(), "every grey- and white-matter voxel is inside the envelope"
    assert hull[sulcus].all(), "a 1-voxel sulcus is bridged"
    rim = lab == 1
    rim_outside = rim & ~sulcus
    assert hull[rim_outside].mean() < 0.1, "the CSF rim beyond the pial surface is not in the envelope"


def test_tighten_mask_removes_the_rim_keeps_tissue_and_stays_inside():
    lab = phantom_labels()
    csf0 = int((lab == 1).sum())
    tight = tighten_mask(lab, np.random.default_rng(0), SubjectConfig(tight_margin_mm=(0.0, 0.0)))
    assert not (tight & (lab == 0)).any(), "never grows past the label map's own mask"
    assert tight[lab >= 2].all(), "no grey or white matter is lost"
    kept = np.where(tight, lab, 0)
    assert (kept == 1).sum() < 0.5 * csf0, "most of the outer CSF rim is gone"
    # a wide margin gives the original (loose) mask back
    loose = tighten_mask(lab, np.random.default_rng(0), SubjectConfig(tight_margin_mm=(8.0, 8.0)))
    assert (loose == (lab > 0)).all()
    # the margin orders the masks
    mid = tighten_mask(lab, np.random.default_rng(0), SubjectConfig(tight_margin_mm=(2.0, 2.0)))
    assert tight.sum() < mid.sum() < loose.sum()


def test_make_subject_with_tightening_clears_image_and_labels_outside():
    lab = phantom_labels()
    t1 = np.array([0.0, 0.25, 0.6, 0.9], np.float32)[lab]
    cfg0 = SubjectConfig(p_tight=0.0, p_atrophy=0.0, p_synthetic=0.0, p_thick=0.0, coarse_mm=(0, 0),
                         fine_mm=(0, 0), rotate_deg=0.0, scale=(1.0, 1.0), anisotropy=0.0)
    cfg1 = SubjectConfig(**{**cfg0.__dict__, "p_tight": 1.0, "tight_margin_mm": (0.0, 0.5)})
    img0, lab0 = make_subject(t1, lab, np.random.default_rng(5), cfg0)
    img1, lab1 = make_subject(t1, lab, np.random.default_rng(5), cfg1)
    assert (lab0 > 0).sum() == (lab > 0).sum()
    assert (lab1 == 1).sum() < 0.6 * (lab0 == 1).sum()
    assert ((lab1 >= 2) == (lab0 >= 2)).all()
    assert (img1[lab1 == 0] == 0).all() and (img1[lab1 > 0] > 0).all()
