"""The classical tissue model: FAST-like labels, bias correction and the refinement of network
probabilities by the scan's own intensities."""
import numpy as np
from scipy import ndimage as ndi

from engine.core.metrics import dice_scores
from engine.labels.tissue_model import bias_corrected, partial_volume, refine_with_intensities, tissue_em


def phantom(seed=0, shape=(48, 56, 40), noise=0.04):
    """Nested blobs: WM core, GM shell, CSF shell (with a thin 'sulcus' of CSF cut into the GM)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.9] = 1
    lab[r < 0.78] = 2
    lab[r < 0.5] = 3
    lab[(np.abs(g[0]) < 0.05) & (r > 0.55) & (r < 0.9)] = 1  # a sulcus
    img = np.array([0, 0.35, 0.65, 0.9], np.float32)[lab]
    img = ndi.gaussian_filter(img, 0.6) + noise * rng.standard_normal(shape).astype(np.float32)
    img = np.where(lab > 0, np.clip(img, 0.01, None), 0).astype(np.float32)
    return img, lab


def test_tissue_em_recovers_three_classes_in_intensity_order():
    img, lab = phantom()
    fit = tissue_em(img, img > 0)
    d = dice_scores(lab, fit.labels)
    assert min(d["csf"], d["gm"], d["wm"]) > 0.9, d
    assert fit.means[0] < fit.means[1] < fit.means[2]
    assert np.all((fit.labels > 0) == (img > 0))  # every voxel of the mask is a tissue
    pv = partial_volume(img, fit, img > 0)
    np.testing.assert_allclose(pv.sum(0)[img > 0], 1.0, atol=1e-5)


def test_mrf_cleans_noise():
    img, lab = phantom(noise=0.12)
    plain = dice_scores(lab, tissue_em(img, img > 0, beta=0.0).labels)
    mrf = dice_scores(lab, tissue_em(img, img > 0, beta=0.35).labels)
    assert mrf["gm"] > plain["gm"] + 0.02 and mrf["wm"] > plain["wm"]


def test_bias_field_is_divided_out():
    img, lab = phantom()
    x = np.linspace(-1, 1, img.shape[0])[:, None, None]
    biased = (img * np.exp(0.35 * x)).astype(np.float32)
    onehot = np.stack([(lab == c).astype(np.float32) for c in (1, 2, 3)])
    fixed = bias_corrected(biased, onehot, lab > 0, sigma=8.0)  # a small phantom: a narrower field
    wm = lab == 3
    left, right = wm & (x < -0.2), wm & (x > 0.2)
    before = biased[right].mean() / biased[left].mean()
    after = fixed[right].mean() / fixed[left].mean()
    assert before > 1.2 and abs(after - 1) < 0.08, (before, after)  # 25% -> under 8%


def test_refinement_sharpens_a_blurry_prior_under_a_bias_field():
    """A network-like prior that is too blurry (a GM ribbon thicker than the intensities say)
    becomes intensity-consistent, also under a bias field."""
    img, lab = phantom(seed=3)
    x = np.linspace(-1, 1, img.shape[0])[:, None, None]
    img = (img * np.exp(0.25 * x)).astype(np.float32)
    onehot = np.stack([(lab == c).astype(np.float32) for c in (1, 2, 3)])
    blurry = np.stack([ndi.gaussian_filter(c, 3.5) for c in onehot]) + 0.05
    blurry /= blurry.sum(0, keepdims=True)
    mask = img > 0
    prior_labels = np.where(mask, np.argmax(blurry, 0) + 1, 0).astype(np.uint8)
    refined = refine_with_intensities(img, blurry, mask, bias_sigma=8.0)
    ref_labels = np.where(mask, np.argmax(refined, 0) + 1, 0).astype(np.uint8)
    before, after = dice_scores(lab, prior_labels), dice_scores(lab, ref_labels)
    assert after["csf"] > before["csf"] + 0.03, (before, after)
    assert after["gm"] >= before["gm"] and after["wm"] >= before["wm"] - 0.01, (before, after)


def test_refinement_keeps_the_prior_class_names_under_inverted_contrast():
    img, lab = phantom(seed=5)
    inverted = np.where(lab > 0, 1.0 - img, 0).astype(np.float32)
    onehot = np.stack([(lab == c).astype(np.float32) for c in (1, 2, 3)])
    prior = np.stack([ndi.gaussian_filter(c, 1.5) for c in onehot]) + 0.05
    refined = refine_with_intensities(inverted, prior, lab > 0, bias_sigma=8.0)
    labels = np.where(lab > 0, np.argmax(refined, 0) + 1, 0).astype(np.uint8)
    d = dice_scores(lab, labels)
    assert min(d["csf"], d["gm"], d["wm"]) > 0.85, d
