"""Data augmentation for 2-D training slices (numpy/scipy only, no MXNet).

Spatial: rotation, anisotropic scaling, translation, left-right flip and a smooth elastic warp,
composed into one sampling grid (image bilinear, labels nearest). Intensity: a smooth
multiplicative bias field, gamma, blur or sharpening, contrast and brightness jitter, Gaussian or
Rician noise. Optionally a SynthSeg-style synthetic contrast drawn from tissue probability maps
(Billot et al. 2023), which teaches the network shape rather than one scanner's intensities.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class AugmentConfig:
    rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.88, 1.12)
    anisotropy: float = 0.05
    translate_px: float = 8.0
    flip_lr: bool = True
    elastic_alpha_px: float = 4.0  # max displacement of the elastic warp
    elastic_grid: int = 6  # control points per side of the coarse displacement grid
    p_elastic: float = 0.8
    bias_strength: float = 0.3  # bias field spans exp(+-strength)
    p_bias: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.8
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.2)
    p_sharpen: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.06)
    p_noise: float = 0.7
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.08
    p_synthetic: float = 0.0  # needs tissue probability maps; see synthesize_contrast


def _affine_grid(shape, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    theta = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    s = rng.uniform(*cfg.scale)
    sy = s * (1 + rng.uniform(-cfg.anisotropy, cfg.anisotropy))
    sx = s * (1 + rng.uniform(-cfg.anisotropy, cfg.anisotropy))
    ty, tx = rng.uniform(-cfg.translate_px, cfg.translate_px, size=2)
    c, sn = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy - ty, xx - cx - tx
    # inverse mapping: output pixel -> input coordinate
    src_y = (c * dy - sn * dx) / sy + cy
    src_x = (sn * dy + c * dx) / sx + cx
    if cfg.flip_lr and rng.random() < 0.5:
        src_y = (h - 1) - src_y  # axis 0 of an axial slice is x (left-right)
    if rng.random() < cfg.p_elastic and cfg.elastic_alpha_px > 0:
        g = cfg.elastic_grid
        for arr in (src_y, src_x):
            coarse = rng.uniform(-1, 1, size=(g, g)).astype(np.float32)
            field = ndi.zoom(coarse, (h / g, w / g), order=3)[:h, :w]
            field = np.pad(field, ((0, h - field.shape[0]), (0, w - field.shape[1])), mode="edge")
            arr += cfg.elastic_alpha_px * field
    return src_y, src_x


def smooth_field(shape, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1] (cubic upsampling of a coarse random grid)."""
    h, w = shape
    coarse = rng.uniform(-1, 1, size=(grid, grid)).astype(np.float32)
    f = ndi.zoom(coarse, (h / grid, w / grid), order=3)
    f = np.pad(f[:h, :w], ((0, max(0, h - f.shape[0])), (0, max(0, w - f.shape[1]))), mode="edge")
    return np.clip(f, -1, 1)


def synthesize_contrast(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T1-like image from soft tissue maps probs (3, H, W) = CSF, GM, WM with random class means.

    Ordering CSF < GM < WM is kept (T1 contrast) but gaps, texture and partial volume vary."""
    mu_csf = rng.uniform(0.05, 0.4)
    mu_gm = rng.uniform(mu_csf + 0.12, min(mu_csf + 0.5, 0.8))
    mu_wm = rng.uniform(mu_gm + 0.08, min(mu_gm + 0.4, 1.0))
    mus = np.array([mu_csf, mu_gm, mu_wm], dtype=np.float32)
    img = np.tensordot(mus, probs, axes=1)
    tex = rng.uniform(0.0, 0.04)
    img = img + tex * ndi.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 0.7)
    return np.clip(img, 0, None) * (probs.sum(0) > 0.05)


def augment_pair(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig | None = None, probs: np.ndarray | None = None,
                 extra: np.ndarray | None = None):
    """Augment one normalised slice (H, W) float32 and its labels (H, W) uint8.

    `probs` (3, H, W), if given, allows synthetic contrast. Returns (image, labels)."""
    cfg = cfg or AugmentConfig()
    image = image.astype(np.float32, copy=True)
    if probs is not None and rng.random() < cfg.p_synthetic:
        fg = image > 0
        synth = synthesize_contrast(probs, rng)
        ref = np.percentile(image[fg], 99) if fg.any() else 1.0
        image = synth * (ref / max(np.percentile(synth[synth > 0], 99), 1e-3) if (synth > 0).any() else 1)
    src_y, src_x = _affine_grid(image.shape, rng, cfg)
    coords = np.stack([src_y, src_x])
    image = ndi.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    labels = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    fg = image > 1e-3
    if rng.random() < cfg.p_bias:
        image *= np.exp(cfg.bias_strength * smooth_field(image.shape, rng, grid=rng.integers(3, 6)))
    if rng.random() < cfg.p_gamma:
        peak = max(float(image.max()), 1e-6)
        image = peak * (image / peak) ** rng.uniform(*cfg.gamma)
    r = rng.random()
    if r < cfg.p_blur:
        image = ndi.gaussian_filter(image, rng.uniform(*cfg.blur_sigma))
    elif r < cfg.p_blur + cfg.p_sharpen:
        blurred = ndi.gaussian_filter(image, rng.uniform(0.5, 1.0))
        image = image + rng.uniform(0.3, 1.0) * (image - blurred)
    image = image * rng.uniform(*cfg.contrast) + rng.uniform(-cfg.brightness, cfg.brightness) * fg
    if rng.random() < cfg.p_noise:
        sd = rng.uniform(*cfg.noise_std)
        if rng.random() < 0.5:
            image = image + sd * rng.standard_normal(image.shape).astype(np.float32)
        else:  # Rician, as magnitude MR images are
            n1 = sd * rng.standard_normal(image.shape).astype(np.float32)
            n2 = sd * rng.standard_normal(image.shape).astype(np.float32)
            image = np.sqrt((image + n1) ** 2 + n2**2)
    image = np.where(fg, image, 0.0) if rng.random() < 0.8 else image  # skull-stripped background
    return np.clip(image, 0, 3).astype(np.float32), labels
