"""Synthetic training subjects from one labelled brain (domain randomisation in 3-D).

The only labelled brain we may train on is the ICBM152 template: a population average, blurrier
than any individual. Following SynthSeg (Billot et al., Medical Image Analysis 2023) - the idea, not
the code - each synthetic subject is the template's label map (derived from its intensities by
`tissue_model.tissue_em`) under

- a random affine (rotation, per-axis scale) and a two-scale smooth elastic deformation;
- optional atrophy: sulci opened along the medial surface of the grey matter between two banks
  of white matter (where a blurry average closes them), the outer grey matter eroded and the
  ventricles widened, so the labels have the sharp, open sulci of an individual brain;
- an image that is either the template's own intensities warped the same way (CSF intensity
  painted where atrophy made CSF) or drawn from the labels with random per-class means and
  spreads (T1 order, occasionally another order), partial-volume blur, random slice thickness.

2-D intensity augmentation (bias field, gamma, noise, blur) is applied per slice afterwards by
`augment.augment_pair`. numpy/scipy only; no MXNet.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class SubjectConfig:
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.88, 1.12)
    anisotropy: float = 0.06
    coarse_mm: tuple[float, float] = (0.0, 4.0)  # displacement amplitude, coarse grid
    coarse_grid: int = 5
    fine_mm: tuple[float, float] = (0.0, 1.5)  # displacement amplitude, fine grid (sulcal shape)
    fine_grid: int = 14
    p_atrophy: float = 0.6
    sulcus_depth_mm: tuple[float, float] = (1.2, 3.0)  # GM further than this from WM may open up
    p_synthetic: float = 0.5  # image drawn from the labels instead of the template's intensities
    p_inverted: float = 0.05  # synthetic contrast with a non-T1 class order
    p_thick: float = 0.3  # simulate thick slices along a random axis
    thick_sigma: tuple[float, float] = (0.6, 1.6)
    # skull-stripping masks of other tools: from tight at the pial surface to the template's loose
    # intracranial mask (0 keeps the template's mask; see tighten_mask)
    p_tight: float = 0.0
    tight_margin_mm: tuple[float, float] = (0.0, 4.0)


def _smooth_field(shape, grid: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(-1, 1, size=(grid, grid, grid)).astype(np.float32)
    f = ndi.zoom(coarse, [s / grid for s in shape], order=3, prefilter=False)
    out = np.zeros(shape, dtype=np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, f.shape))
    out[sl] = f[sl]
    return out


def deformation(shape, rng: np.random.Generator, cfg: SubjectConfig, step: int = 4) -> np.ndarray:
    """Sampling coordinates (3, X, Y, Z): output voxel -> source voxel (1 mm voxels). The smooth map
    is built on a grid `step` times coarser and upsampled linearly (6x faster than at full size)."""
    shape = tuple(int(n) for n in shape)
    small = tuple(-(-n // step) + 1 for n in shape)
    c = (np.array(shape, dtype=np.float32) - 1) / 2
    # coarse grid points sit at full-size coordinates 0, f, 2f ... n-1 (zoom maps corner to corner)
    axes = [np.linspace(0, n - 1, m, dtype=np.float32) - cc for n, m, cc in zip(shape, small, c)]
    grids = np.meshgrid(*axes, indexing="ij")
    angles = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, size=3))
    rot = np.eye(3)
    for ax, a in enumerate(angles):
        i, j = [k for k in range(3) if k != ax]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        rot = rot @ r
    s = rng.uniform(*cfg.scale) * (1 + rng.uniform(-cfg.anisotropy, cfg.anisotropy, size=3))
    m = (rot / s[None, :]).astype(np.float32)  # inverse map: output -> source
    a1 = rng.uniform(*cfg.coarse_mm)
    a2 = rng.uniform(*cfg.fine_mm)
    coords = np.empty((3,) + shape, dtype=np.float32)
    for i in range(3):
        ci = m[i, 0] * grids[0] + m[i, 1] * grids[1] + m[i, 2] * grids[2] + c[i]
        if a1 > 0:
            ci += a1 * _smooth_field(small, cfg.coarse_grid, rng)
        if a2 > 0:
            ci += a2 * _smooth_field(small, cfg.fine_grid, rng)
        coords[i] = ndi.zoom(ci, [n / m_ for n, m_ in zip(shape, small)], order=1)[
            tuple(slice(0, n) for n in shape)]
    return coords


def open_sulci(labels: np.ndarray, rng: np.random.Generator, cfg: SubjectConfig) -> np.ndarray:
    """Atrophy on a label map (1 CSF, 2 GM, 3 WM): returns the new labels.

    Sulci: GM voxels on the ridge of the distance-to-WM map (equidistant from two WM banks) deeper
    than a random depth become CSF, then grow by a voxel where a smooth random field allows. The
    outer GM surface erodes a little and the ventricles (CSF far from the brain's edge) widen."""
    lab = labels.copy()
    brain = lab > 0
    gm = lab == 2
    d = ndi.distance_transform_edt(lab != 3).astype(np.float32)
    ridge = gm & (d >= ndi.maximum_filter(d, size=3) - 0.25) & (d > rng.uniform(*cfg.sulcus_depth_mm))
    allow = _smooth_field(lab.shape, 6, rng) > rng.uniform(-0.6, 0.2)
    new_csf = ridge & allow
    if rng.random() < 0.6:
        new_csf |= ndi.binary_dilation(new_csf) & gm & allow
    # erode the outer surface of the grey matter where the field allows
    edge = brain & ~ndi.binary_erosion(brain)
    outer = ndi.binary_dilation(edge, iterations=int(rng.integers(1, 3))) & gm & (_smooth_field(lab.shape, 5, rng) > 0.3)
    new_csf |= outer
    lab[new_csf] = 1
    if rng.random() < 0.5:  # ventricles: CSF deep inside the brain grows into the white matter
        depth = ndi.distance_transform_edt(brain)
        vent = (lab == 1) & (depth > 15)
        grow = ndi.binary_dilation(vent, iterations=int(rng.integers(1, 3))) & (lab == 3)
        lab[grow] = 1
    return lab


def pial_hull(labels: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """The brain's outer (pial) envelope: grey and white matter closed by a ball of `radius` voxels
    (bridging sulci) and filled. Distance transforms instead of binary morphology: same result for a
    ball, a fraction of the time at 1 mm."""
    tissue = labels >= 2
    if not tissue.any():
        return tissue
    pad = int(np.ceil(radius)) + 2
    t = np.pad(tissue, pad)
    grown = ndi.distance_transform_edt(~t) <= radius
    closed = ndi.distance_transform_edt(grown) > radius
    closed |= t
    return ndi.binary_fill_holes(closed[pad:-pad, pad:-pad, pad:-pad])


def tighten_mask(labels: np.ndarray, rng: np.random.Generator, cfg: SubjectConfig) -> np.ndarray:
    """The mask another skull-stripping tool might have left: the pial envelope grown by a margin
    that varies smoothly over the surface, within the label map's own (loose, intracranial) mask.

    The template's labels always end in a rim of CSF at the mask's edge, so a network trained on them
    alone learns "the outermost band is CSF" and calls grey matter CSF on a brain stripped tightly at
    its surface (U-Net's +28 % CSF on the team's real brain, issue #21). Returns the new mask."""
    radius = float(rng.uniform(2.0, 4.0))
    lo, hi = cfg.tight_margin_mm
    margin = rng.uniform(lo, hi) + 1.5 * _smooth_field(labels.shape, 4, rng)
    return margin_mask(labels, np.clip(margin, 0.0, None), radius)


def margin_mask(labels: np.ndarray, margin, radius: float = 3.0) -> np.ndarray:
    """The label map's mask cut back to its pial envelope (pial_hull) grown by `margin` voxels (a
    number, or one per voxel)."""
    return (ndi.distance_transform_edt(~pial_hull(labels, radius)) <= margin) & (labels > 0)


def synthetic_image(labels: np.ndarray, rng: np.random.Generator, cfg: SubjectConfig) -> np.ndarray:
    """An image drawn from a label map: per-class Gaussian intensities and partial-volume blur."""
    if rng.random() < cfg.p_inverted:
        mus = rng.uniform(0.1, 1.0, size=3)
    else:
        csf = rng.uniform(0.05, 0.45)
        gm = rng.uniform(csf + 0.12, min(csf + 0.5, 0.85))
        wm = rng.uniform(gm + 0.08, min(gm + 0.4, 1.0))
        mus = np.array([csf, gm, wm])
    sds = rng.uniform(0.01, 0.06, size=3)
    lut_mu = np.concatenate([[0.0], mus]).astype(np.float32)
    lut_sd = np.concatenate([[0.0], sds]).astype(np.float32)
    img = lut_mu[labels] + lut_sd[labels] * rng.standard_normal(labels.shape).astype(np.float32)
    img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.0))
    return np.where(labels > 0, np.clip(img, 0.005, None), 0).astype(np.float32)


def make_subject(t1: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 cfg: SubjectConfig | None = None, csf_mean: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject (image float32 normalised to its foreground's 99th percentile, labels uint8)
    from a normalised template image and its tissue labels."""
    from engine.infer.preprocess import normalisation_scale

    cfg = cfg or SubjectConfig()
    coords = deformation(t1.shape, rng, cfg)
    lab = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    atrophied = rng.random() < cfg.p_atrophy
    if atrophied:
        new = open_sulci(lab, rng, cfg)
        changed = new != lab
        lab = new
    if rng.random() < cfg.p_tight:
        lab = np.where(tighten_mask(lab, rng, cfg), lab, 0).astype(np.uint8)
    if rng.random() < cfg.p_synthetic:
        img = synthetic_image(lab, rng, cfg)
    else:
        img = ndi.map_coordinates(t1, coords, order=1, mode="constant", cval=0.0).astype(np.float32)
        if atrophied and changed.any():
            mu = csf_mean if csf_mean is not None else float(np.median(img[lab == 1]))
            painted = np.where(changed, mu * rng.uniform(0.8, 1.2), img)
            soft = ndi.gaussian_filter(changed.astype(np.float32), 0.5)
            img = (soft * ndi.gaussian_filter(painted, 0.5) + (1 - soft) * img).astype(np.float32)
        img = np.where(lab > 0, np.maximum(img, 0.005), 0).astype(np.float32)
    if rng.random() < cfg.p_thick:
        axis = int(rng.integers(0, 3))
        img = ndi.gaussian_filter1d(img, rng.uniform(*cfg.thick_sigma), axis=axis)
        img = np.where(lab > 0, np.maximum(img, 0.005), 0).astype(np.float32)
    scale = normalisation_scale(img)
    return (img / scale).astype(np.float32), lab
