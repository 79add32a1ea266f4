"""A classical three-tissue model of a T1 scan: a Gaussian mixture with a Markov random field.

This is how FSL FAST labels a brain (Zhang, Brady & Smith, IEEE TMI 2001) and so what OASIS-1's
`FSL_SEG` labels mean: every voxel inside the brain mask is CSF, grey or white matter, decided
by its own intensity and its neighbours', not by a population prior. CSF is everything inside the
mask that is neither grey nor white matter: sulcal CSF, ventricles and the dark rim around the brain.

`tissue_em` fits the model (EM on the intensities; a mean-field Potts prior over the 6-neighbours
in the E-step). It serves two purposes:

- `tools/make_training_data.py` derives the shipped networks' training labels from the template's
  own intensities with it (instead of the argmax of population priors, which teaches a blurry
  anatomy and a grey-matter ribbon thicker than the intensities say);
- `refine_with_intensities` (optional at inference) treats a network's class probabilities as a
  spatial prior and re-estimates the tissue intensities of the scan at hand.

numpy/scipy only; no MXNet.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

TISSUES = 3  # CSF, GM, WM: label values 1, 2, 3 in ascending T1 intensity


@dataclass
class TissueFit:
    labels: np.ndarray  # uint8, 0 outside the mask, 1 CSF, 2 GM, 3 WM
    posteriors: np.ndarray  # float32 (3, X, Y, Z), zero outside the mask
    means: np.ndarray  # (3,) intensity means, ascending
    sds: np.ndarray  # (3,)
    iterations: int


def _neighbour_sum(q: np.ndarray) -> np.ndarray:
    """Sum of each voxel's 6 face neighbours, per class: q (K, X, Y, Z)."""
    out = np.zeros_like(q)
    out[:, 1:] += q[:, :-1]
    out[:, :-1] += q[:, 1:]
    out[:, :, 1:] += q[:, :, :-1]
    out[:, :, :-1] += q[:, :, 1:]
    out[:, :, :, 1:] += q[:, :, :, :-1]
    out[:, :, :, :-1] += q[:, :, :, 1:]
    return out


def _kmeans_1d(x: np.ndarray, k: int = TISSUES, iters: int = 20) -> np.ndarray:
    centres = np.percentile(x, np.linspace(100 / (2 * k), 100 - 100 / (2 * k), k))
    for _ in range(iters):
        assign = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        new = np.array([x[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def tissue_em(image: np.ndarray, mask: np.ndarray, beta: float = 0.35, iterations: int = 12,
              prior: np.ndarray | None = None, prior_weight: float = 1.0) -> TissueFit:
    """Fit CSF/GM/WM Gaussians with a Potts MRF (mean field) inside `mask`.

    beta: MRF strength per neighbour agreeing (0 = a plain mixture). prior (3, X, Y, Z), if given,
    is a spatial prior (e.g. a network's probabilities) multiplied into the posterior, raised to
    prior_weight. Classes are sorted by mean intensity (T1: CSF < GM < WM)."""
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("empty mask")
    x = img[m]
    # Work in the bounding box of the mask: the background costs nothing then.
    idx = np.argwhere(m)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mb = m[box]
    logprior = None
    if prior is not None:
        logprior = (prior_weight * np.log(np.clip(prior[(slice(None),) + box][:, mb], 1e-4, 1.0))).astype(np.float32)
    if prior is not None:
        w = np.clip(prior[(slice(None),) + box][:, mb], 1e-6, None)
        w = w / w.sum(0, keepdims=True)
        mu = (w * x).sum(1) / w.sum(1)
        sd = np.sqrt((w * (x - mu[:, None]) ** 2).sum(1) / w.sum(1))
    else:
        mu = _kmeans_1d(x[:: max(1, x.size // 400_000)])
        sd = np.full(TISSUES, max(float(np.diff(mu).min()) / 2, 1e-3))
    pi = np.full(TISSUES, 1.0 / TISSUES)
    q = np.zeros((TISSUES,) + mb.shape, dtype=np.float32)
    post = None
    it = 0
    for it in range(1, iterations + 1):
        sd = np.maximum(sd, 1e-3 * max(float(x.max()), 1e-6))
        mu32, sd32 = mu.astype(np.float32)[:, None], sd.astype(np.float32)[:, None]
        ll = -0.5 * ((x[None] - mu32) / sd32) ** 2
        ll += (np.log(pi) - np.log(sd)).astype(np.float32)[:, None]
        if logprior is not None:
            ll += logprior
        if post is not None and beta > 0:
            ll += beta * _neighbour_sum(q)[:, mb]
        ll -= ll.max(0, keepdims=True)
        post = np.exp(ll, out=ll)
        post /= post.sum(0, keepdims=True)
        if beta > 0:
            q[:, mb] = post
        n = post.sum(1)
        mu_new = (post * x).sum(1) / np.maximum(n, 1e-6)
        sd = np.sqrt((post * (x - mu_new[:, None]) ** 2).sum(1) / np.maximum(n, 1e-6))
        if prior is None:  # with a prior, the prior already carries the class frequencies
            pi = np.maximum(n / n.sum(), 1e-4)
        converged = np.allclose(mu_new, mu, rtol=1e-4, atol=1e-6)
        mu = mu_new
        if converged and it > 3:
            break
    # without a prior the classes are named by intensity (T1: CSF < GM < WM); with one, the prior
    # names them (any contrast)
    order = np.argsort(mu) if prior is None else np.arange(TISSUES)
    q[:, mb] = post
    posteriors = np.zeros((TISSUES,) + m.shape, dtype=np.float32)
    posteriors[(slice(None),) + box] = q[order]
    labels = np.zeros(m.shape, dtype=np.uint8)
    labels[m] = np.argmax(posteriors[:, m], axis=0).astype(np.uint8) + 1
    log.info("tissue EM: %d iterations, means %s, sds %s", it, np.round(mu[order], 4), np.round(sd[order], 4))
    return TissueFit(labels, posteriors, mu[order], sd[order], it)


def partial_volume(image: np.ndarray, fit: TissueFit, mask: np.ndarray) -> np.ndarray:
    """Partial-volume fractions (3, X, Y, Z) from intensities: a voxel between two adjacent class
    means is a linear mix of them (FAST's mixel model, without its spatial prior); used to
    synthesise sharp images whose boundaries agree with the hard labels."""
    img = np.asarray(image, dtype=np.float32)
    mu = fit.means
    pv = np.zeros((TISSUES,) + img.shape, dtype=np.float32)
    t = np.clip(img, mu[0], mu[-1])
    for a in range(TISSUES - 1):
        lo, hi = mu[a], mu[a + 1]
        sel = (t >= lo) & (t <= hi)
        f = (t - lo) / max(hi - lo, 1e-6)
        pv[a][sel] = (1 - f)[sel]
        pv[a + 1][sel] = f[sel]
    pv *= np.asarray(mask, dtype=bool)[None]
    return pv


def _smooth_masked(values: np.ndarray, mask: np.ndarray, sigma, step: int = 4) -> np.ndarray:
    """Normalised Gaussian smoothing of `values` over `mask` (sigma in voxels, one or per axis),
    computed on a grid `step` times coarser and brought back linearly: a smooth field defined
    everywhere."""
    shape = values.shape
    pad = [(0, (-n) % step) for n in shape]
    v = np.pad(values * mask, pad)
    m = np.pad(mask.astype(np.float32), pad)
    small = tuple(n // step for n in v.shape)
    vs = v.reshape(small[0], step, small[1], step, small[2], step).sum((1, 3, 5))
    ms = m.reshape(small[0], step, small[1], step, small[2], step).sum((1, 3, 5))
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,)) / step
    vs = ndi.gaussian_filter(vs, sig)
    ms = ndi.gaussian_filter(ms, sig)
    field = vs / np.maximum(ms, 1e-6)
    full = ndi.zoom(field, [a / b for a, b in zip(v.shape, small)], order=1)
    return full[tuple(slice(0, n) for n in shape)].astype(np.float32)


def bias_corrected(image: np.ndarray, probs: np.ndarray, mask: np.ndarray, sigma=20.0) -> np.ndarray:
    """The image divided by a smooth multiplicative bias field, estimated (as FAST does, in one
    step) from the ratio of each voxel to the intensity its tissue probabilities predict. sigma in
    voxels, one value or one per axis."""
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool) & (img > 0)
    w = probs[:, m]
    x = img[m]
    mu = (w * x).sum(1) / np.maximum(w.sum(1), 1e-6)
    expected = (w * mu[:, None]).sum(0)
    ratio = np.zeros(img.shape, np.float32)
    ratio[m] = np.log(np.maximum(x, 1e-6) / np.maximum(expected, 1e-6))
    # only confident voxels steer the field: partial-volume voxels say little about the bias
    confident = np.zeros(img.shape, np.float32)
    confident[m] = (w.max(0) > 0.9)
    field = _smooth_masked(ratio, confident, sigma)
    return np.where(m, img * np.exp(-field), img).astype(np.float32)


def refine_with_intensities(image: np.ndarray, probs: np.ndarray, mask: np.ndarray, beta: float = 0.0,
                            iterations: int = 3, prior_weight: float = 1.0, bias_sigma: float | None = 20.0,
                            voxel_mm=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Re-estimate the scan's tissue intensities with a network's tissue probabilities as the prior
    (probs (3, X, Y, Z) = CSF, GM, WM, any scale); returns refined probabilities (3, X, Y, Z).
    With bias_sigma (mm; voxel_mm gives the voxel size per axis), a smooth bias field is divided
    out first (bias_corrected)."""
    p = np.asarray(probs, dtype=np.float32)
    p = p / np.maximum(p.sum(0, keepdims=True), 1e-6)
    sigma_vox = bias_sigma / np.asarray(voxel_mm, dtype=np.float64) if bias_sigma else None
    img = bias_corrected(image, p, mask, sigma_vox) if bias_sigma else image
    fit = tissue_em(img, mask, beta=beta, iterations=iterations, prior=p, prior_weight=prior_weight)
    return fit.posteriors
