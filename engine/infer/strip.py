"""Brain extraction: an intracranial mask for a T1 head with its skull on, from a small 2.5-D network.

What the mask means (one definition for every head we train on; see tools/strip_data.py): the
intracranial space that FSL_SEG labels - brain, the CSF around it and in the sulci, the ventricles,
the cerebellum, down to the brainstem at the level of the foramen magnum. Skull, marrow, scalp,
eyes, neck and the dura's outer side are outside.

How (after SynthStrip, Hoopes et al. NeuroImage 2022 - the idea, not the code): the network was
trained on heads with random contrasts, deformations, noise, bias and resolution, so it looks for
the shape of a head rather than one scanner's intensities. On 2 cores a 3-D network at 1 mm does
not train in a session, so this one is 2.5-D at 2 mm:

1. the scan is resampled (trilinear) onto a 128^3 grid of 2 mm voxels whose axes are the scan's
   own axes brought to the nearest of R, A, S, centred on the head's foreground box - any axis
   order, flip and voxel size give the same input, and a small tilt stays in the image (the
   network was trained with rotations) instead of changing the grid;
2. each slice of each of the three planes goes through the network with its two neighbours as
   extra channels (3 x 128 slices of 128 x 128, empty slices skipped), and the three planes'
   brain probabilities are averaged (FastSurfer's view aggregation); the same again on the grid
   mirrored left-right, mirrored back and averaged in (test-time flip: +0.002-0.004 mask Dice on
   each proxy head, docs/BENCHMARKS.md; a model.json may turn it off with "flip": false);
3. the probability is resampled back onto the scan's own grid, thresholded (at the model.json's
   "threshold", 0.5 without one; the shipped model's 0.6 and how it was chosen are in its record),
   the largest connected piece kept and its holes filled.

The scan's grid and affine are never changed. `StripResult` says how sure the network was: the
fraction of the mask's shell with probabilities between 0.2 and 0.8, the mask's volume, and
whether the brain touches the field of view's edge (a cut brain); `unsure_reasons` turns those into
words for the GUI, the CLI and the batch QC column.

numpy/scipy here; MXNet only inside `BrainExtractor`, which is loaded lazily - a skull-stripped
scan never loads it (engine.infer.qc decides first).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

STRIP_MM = 2.0
STRIP_GRID = 128
CONTEXT = 1  # neighbouring slices on each side fed as channels (2.5-D)
CHANNELS = 2 * CONTEXT + 1
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # work grid (near R, A, S): axis fixed by each plane
# plausible adult intracranial volumes (mL); outside them the mask is flagged unsure
ICV_RANGE_ML = (900.0, 2300.0)
# a mask whose boundary shell is this uncertain (fraction of shell voxels with 0.2 < p < 0.8).
# bench/strip_unsure.py with strip-shipped-2 (docs/BENCHMARKS.md): 0.34-0.45 on the proxy heads as
# they are, RAW-like or defaced; 0.51 with the top 30 mm of the brain cut off (caught by the bare
# outline below instead), 0.78 with an inverted (T2-like) contrast, 0.93 on noise. (strip-shipped-1:
# 0.43-0.57 on the heads, 0.77 cut, 0.86 inverted, 0.89 noise.)
UNSURE_SHELL_FRACTION = 0.70
# a brain touching the field of view's edge on more than this many voxels is cut
CUT_EDGE_VOXELS = 200
# a brain whose outline lies within BARE_MM of the air (no skull or scalp around it) on more than
# BARE_FRACTION of its boundary voxels is cut inside the array or was stripped already.
# bench/strip_unsure.py with strip-shipped-2 at 6 mm: 0.000 on the three whole proxy heads, 0.167
# defaced, 0.207 with the top 30 mm of the brain cut off (which the shell test no longer caught:
# 0.51), 0.109 inverted contrast; at 4 mm the cut case read 0.000, at 8 mm 0.238
BARE_MM = 6.0
BARE_FRACTION = 0.05
# head (not air) on the normalised 2 mm work grid (volume / intensity_scale)
WORK_FOREGROUND = 0.05
# the brain probability above which a voxel is inside (a model may record its own in model.json)
THRESHOLD = 0.5
# test-time flip: the work grid's left-right axis (the grid's axes are near R, A, S); a model.json
# may say "flip": false
FLIP_AXIS = 0


def flip_enabled(meta: dict) -> bool:
    """Whether a model runs with the test-time flip: on unless its model.json says "flip": false
    (the app's BrainExtractor and the packages' spec both ask here)."""
    return bool(meta.get("flip", True))


def head_foreground(volume: np.ndarray) -> np.ndarray:
    """Head (not air) voxels: above 8% of the 99.5th percentile of the nonzero voxels (sampled
    every second voxel along each axis)."""
    v = np.asarray(volume, dtype=np.float32)
    sample = v[::2, ::2, ::2]
    nz = sample[sample > 0]
    if nz.size == 0:
        return np.zeros(v.shape, bool)
    hi = float(np.percentile(nz, 99.5))
    return v > 0.08 * hi


def intensity_scale(values: np.ndarray) -> float:
    """The 98th percentile of head voxels: the network's input is volume / scale, clipped to 0..2."""
    vals = values[values > 0]
    if vals.size == 0:
        return 1.0
    if vals.size > 1_000_000:
        vals = vals[:: vals.size // 1_000_000 + 1]
    p = float(np.percentile(vals, 98))
    return p if p > 0 else 1.0


@dataclass
class StripGrid:
    """The 2 mm work grid of one scan (its axes near R, A, S): `affine` maps work voxels to world (mm)."""

    affine: np.ndarray
    shape: tuple[int, int, int] = (STRIP_GRID,) * 3

    @classmethod
    def for_scan(cls, volume: np.ndarray, affine: np.ndarray) -> "StripGrid":
        """The grid for one scan: its axes are the scan's own voxel axes, permuted and flipped to the
        nearest of R, A, S, at 2 mm, centred on the head's foreground box.

        The grid follows the scan's axes, not the world's: a head stored with a 10-degree pitch and
        a correct affine, and the same array saved as Analyze (which cannot store the pitch), give the
        same work grid and so the same mask (issue #18's orientation figure: on the world-aligned grid
        the two masks differed at the edge and the labels agreed only 0.87-0.97). The network was
        trained with rotations up to 25 degrees, so a pitched head is what it expects."""
        import nibabel as nib

        fg = head_foreground(volume[::2, ::2, ::2])
        if fg.any():
            idx = np.argwhere(fg) * 2
            centre_vox = (idx.min(0) + idx.max(0)) / 2.0
        else:
            centre_vox = (np.array(volume.shape) - 1) / 2.0
        zooms = np.round(np.sqrt((affine[:3, :3] ** 2).sum(0)), 5)  # (float noise of rotated affines)
        ornt = nib.orientations.io_orientation(affine)  # scan axis i -> world axis ornt[i, 0], sign
        step = np.zeros((3, 3))  # work voxel -> scan voxel
        for i, (world_axis, sign) in enumerate(ornt):
            step[i, int(world_axis)] = sign * STRIP_MM / zooms[i]
        to_scan = np.eye(4)
        to_scan[:3, :3] = step
        to_scan[:3, 3] = centre_vox - step @ np.full(3, (STRIP_GRID - 1) / 2.0)
        return cls(affine @ to_scan)

    def from_scan(self, volume: np.ndarray, affine: np.ndarray, order: int = 1) -> np.ndarray:
        """The scan resampled onto this grid (outside the scan: 0). Anti-aliased first when the
        scan's voxels are much finer than 2 mm."""
        v = np.asarray(volume, dtype=np.float32)
        zooms = np.round(np.sqrt((affine[:3, :3] ** 2).sum(0)), 5)
        sigma = [max(0.0, 0.4 * (STRIP_MM / z - 1.0)) for z in zooms]
        if max(sigma) > 0.2:
            v = ndi.gaussian_filter(v, sigma)
        m = np.linalg.inv(affine) @ self.affine
        return ndi.affine_transform(v, m[:3, :3], m[:3, 3], output_shape=self.shape, order=order,
                                    mode="constant", cval=0.0).astype(np.float32)

    def to_scan(self, work: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
        """A work-grid array (e.g. the probability) resampled onto the scan's grid (trilinear)."""
        m = np.linalg.inv(self.affine) @ affine
        return ndi.affine_transform(np.asarray(work, np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(shape),
                                    order=1, mode="constant", cval=0.0)


def plane_batches(work: np.ndarray, axis: int, fg: np.ndarray | None = None):
    """(indices, slices (N, CHANNELS, 128, 128)) of one plane: each slice with its neighbours as
    channels (edge slices repeat). Slices without head voxels are left out."""
    n = work.shape[axis]
    moved = np.moveaxis(work, axis, 0)
    keep = np.arange(n) if fg is None else np.where(np.moveaxis(fg, axis, 0).reshape(n, -1).any(1))[0]
    out = np.empty((len(keep), CHANNELS) + moved.shape[1:], np.float32)
    for j, k in enumerate(keep):
        for c in range(CHANNELS):
            out[j, c] = moved[int(np.clip(k + c - CONTEXT, 0, n - 1))]
    return keep, out


def largest_piece(m: np.ndarray) -> np.ndarray:
    """The largest connected piece of a binary mask (the mask itself when it has one piece)."""
    lab, n = ndi.label(m)
    if n <= 1:
        return m
    sizes = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def clean_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Threshold, keep the largest connected piece, fill its 3-D holes."""
    return ndi.binary_fill_holes(largest_piece(prob > threshold))


def fill_enclosed(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The probability with every hole of the brain (on the work grid) raised to 1: holes enclosed
    in 3-D, and in any slice of the three planes (a ventricle or a dark sulcus the network doubted
    is still inside the skull; in 3-D it can leak out through a thin gap)."""
    m = largest_piece(prob > threshold)
    filled = ndi.binary_fill_holes(m)
    for axis in range(3):
        moved = np.moveaxis(filled, axis, 0)
        for k in range(moved.shape[0]):
            if moved[k].any():
                moved[k] = ndi.binary_fill_holes(moved[k])
    return np.where(filled & ~m, np.float32(1.0), prob).astype(np.float32)


@dataclass
class StripResult:
    mask: np.ndarray  # bool, the scan's own grid
    probability: np.ndarray  # float32 0..1 on the 2 mm work grid, as the networks gave it (before filling)
    volume_ml: float
    shell_uncertain: float  # fraction of the mask's boundary shell with 0.2 < p < 0.8
    edge_voxels: int  # mask voxels on the field of view's faces (scan grid)
    seconds: float
    unsure_reasons: list[str] = field(default_factory=list)
    bare_fraction: float = 0.0  # of the mask's boundary, the part with no head around it (bare_fraction())

    @property
    def unsure(self) -> bool:
        return bool(self.unsure_reasons)

    def summary(self) -> str:
        s = f"brain extracted: {self.volume_ml:,.0f} mL intracranial"
        if self.unsure:
            s += "; UNSURE: " + "; ".join(self.unsure_reasons)
        return s


def bare_fraction(prob: np.ndarray, work: np.ndarray, threshold: float = THRESHOLD) -> float:
    """The fraction of the brain mask's boundary (2 mm work grid) lying within BARE_MM of air: the
    outside of the head, holes filled. In a whole head skull and scalp keep the brain 8 mm or more
    from the air everywhere; where the field of view or a defacing cut through the head, or the scan
    was stripped already, the brain meets the air directly."""
    pm = prob > threshold
    if not pm.any():
        return 0.0
    head = ndi.binary_fill_holes(ndi.binary_closing(work > WORK_FOREGROUND, iterations=2)) | pm
    near_air = ndi.distance_transform_edt(head) * STRIP_MM < BARE_MM
    boundary = pm & ~ndi.binary_erosion(pm)
    return float((boundary & near_air).sum()) / max(int(boundary.sum()), 1)


def assess(mask: np.ndarray, prob: np.ndarray, voxel_ml: float,
           bare: float = 0.0) -> tuple[float, float, int, list[str]]:
    """(volume mL, shell uncertainty, edge voxels, reasons to be unsure); `bare`: bare_fraction()."""
    vol = float(mask.sum()) * voxel_ml
    # the shell sits at p = 0.5 whatever the model's threshold: it measures the band of doubt
    # (0.2-0.8) around the network's own boundary, and UNSURE_SHELL_FRACTION was calibrated there
    pm = prob > 0.5
    shell = ndi.binary_dilation(pm, iterations=2) & ~ndi.binary_erosion(pm, iterations=2)
    unsure_frac = float(((prob > 0.2) & (prob < 0.8) & shell).sum()) / max(int(shell.sum()), 1)
    edge = int(sum(int(np.take(mask, i, axis=a).sum()) for a in range(3) for i in (0, -1)))
    reasons = []
    if not (ICV_RANGE_ML[0] <= vol <= ICV_RANGE_ML[1]):
        reasons.append(f"intracranial volume {vol:,.0f} mL is outside {ICV_RANGE_ML[0]:,.0f}-"
                       f"{ICV_RANGE_ML[1]:,.0f} mL")
    if unsure_frac > UNSURE_SHELL_FRACTION:
        reasons.append(f"the boundary is uncertain ({unsure_frac:.0%} of it; a defaced scan, another "
                       "contrast than T1 or heavy artefacts?)")
    if edge > CUT_EDGE_VOXELS:
        reasons.append("the brain reaches the edge of the field of view (cut off?)")
    elif bare > BARE_FRACTION:
        reasons.append(f"{bare:.0%} of the brain's outline has no skull or scalp around it (the field of view "
                       "or a defacing cuts the head, or the scan was already skull-stripped?)")
    return vol, unsure_frac, edge, reasons


class BrainExtractor:
    """The shipped brain-extraction network, loaded once. Not thread-safe: use from one thread."""

    def __init__(self, model_dir: str | Path | None = None, ctx=None, batch_size: int = 16):
        from engine.core.mx_env import get_mx
        from engine.infer.inference import default_context, fused_network, load_network
        from engine.nets.weights import shipped_model_dir

        self.mx = get_mx()
        self.model_dir = Path(model_dir) if model_dir else shipped_model_dir("strip")
        self.ctx = ctx or default_context()
        # oneDNN's fusion, cached like the tissue networks' graphs: 37 -> 33 ms per batch of 16 here,
        # and the network ready in a fraction of the build (logits within 2e-5, 2026-12-04)
        fused = fused_network(self.model_dir, self.ctx, in_channels=CHANNELS)
        if fused is not None:
            self.net, self.info = fused
        else:
            self.net, self.info = load_network(self.model_dir, self.ctx)
            self.net.hybridize(static_alloc=True, static_shape=True)
        self.batch_size = batch_size
        self.threshold = float(self.info.meta.get("threshold", THRESHOLD))
        self.flip = flip_enabled(self.info.meta)

    @classmethod
    def from_network(cls, net, batch_size: int = 16, flip: bool = False):
        self = cls.__new__(cls)
        from engine.core.mx_env import get_mx

        self.mx = get_mx()
        self.ctx = self.mx.cpu()
        self.net, self.info, self.model_dir = net, None, None
        self.batch_size = batch_size
        self.threshold = THRESHOLD
        self.flip = flip  # training's validation runs without (tools/train_strip.py)
        return self

    @property
    def version(self) -> str:
        return (self.info.meta.get("version") if self.info else None) or "strip"

    def work_probability(self, work: np.ndarray, planes=tuple(PLANES), progress=None, cancel=None,
                         flip: bool = False) -> np.ndarray:
        """Brain probability on a normalised work-grid volume, averaged over `planes`; with `flip`,
        averaged with that of the grid mirrored along FLIP_AXIS (mirrored back)."""
        if not flip:
            return self._planes_probability(work, planes, progress, cancel)
        half = (lambda f: progress(0.5 * f)) if progress else None
        rest = (lambda f: progress(0.5 + 0.5 * f)) if progress else None
        mirrored = np.flip(work, FLIP_AXIS).copy()
        a = self._planes_probability(work, planes, half, cancel)
        b = np.flip(self._planes_probability(mirrored, planes, rest, cancel), FLIP_AXIS)
        return 0.5 * (a + b)  # float32, as both are

    def _planes_probability(self, work, planes, progress, cancel) -> np.ndarray:
        fg = work > WORK_FOREGROUND
        acc = np.zeros(work.shape, np.float32)
        for i, plane in enumerate(planes):
            axis = PLANES[plane]
            keep, batch = plane_batches(work, axis, fg)
            probs = np.zeros((work.shape[axis],) + tuple(np.delete(work.shape, axis)), np.float32)
            for s in range(0, len(keep), self.batch_size):
                if cancel is not None and cancel.cancelled:
                    from engine.core.cancel import Cancelled

                    raise Cancelled()
                x = self.mx.nd.array(batch[s:s + self.batch_size], ctx=self.ctx)
                p = self.mx.nd.softmax(self.net(x), axis=1)[:, 1].asnumpy()
                probs[keep[s:s + self.batch_size]] = p
                if progress:
                    progress((i + (s + len(p)) / max(len(keep), 1)) / len(planes))
            acc += np.moveaxis(probs, 0, axis)
        return acc / len(planes)

    def extract(self, volume: np.ndarray, affine: np.ndarray, progress=None, cancel=None,
                planes=tuple(PLANES)) -> StripResult:
        t0 = time.time()
        volume = np.asarray(volume, dtype=np.float32)
        grid = StripGrid.for_scan(volume, affine)
        work = grid.from_scan(volume, affine)
        work = np.clip(work / intensity_scale(work), 0.0, 2.0)
        prob = self.work_probability(work, planes, progress, cancel, flip=self.flip)  # as the network said
        native = grid.to_scan(fill_enclosed(prob, self.threshold), volume.shape, affine)
        mask = clean_mask(native, self.threshold)
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        bare = bare_fraction(prob, work, self.threshold)
        vol, unsure_frac, edge, reasons = assess(mask, prob, voxel_ml, bare)
        res = StripResult(mask, prob, vol, unsure_frac, edge, time.time() - t0, reasons, bare)
        log.info("%s (%.1f s)", res.summary(), res.seconds)
        return res
