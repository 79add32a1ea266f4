"""Mask export beyond NIfTI/Analyze (those are engine.io.volume.save_labels): PNG slices."""
from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from engine.core.atomic import atomic_write


def export_png_slices(labels: np.ndarray, out_dir: str | os.PathLike, prefix: str = "slice",
                      axis: int = 2) -> list[Path]:
    """One 8-bit PNG per slice along array `axis` (the scan's axial axis: 2 for OASIS files;
    Conform.native_axis("axial") otherwise), pixel values = class values 0-3, as the seed tutorial
    wrote them with imageio. Files: <prefix>_000.png ... Written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lab = np.asarray(labels, dtype=np.uint8)
    width = max(3, len(str(lab.shape[axis] - 1)))
    files = []
    for k in range(lab.shape[axis]):
        path = out / f"{prefix}_{k:0{width}d}.png"
        atomic_write(path, lambda tmp, a=np.take(lab, k, axis=axis): imageio.imwrite(tmp, a, format="png"))
        files.append(path)
    return files


# ----------------------------------------------------------------------------- images people look at
def grey_window(scan: np.ndarray) -> tuple[float, float]:
    """Display window of a scan, the app's auto window/level: the 0.5-99.5 percentiles of its
    nonzero voxels (every other voxel per axis), or its range when nothing is above zero."""
    sample = scan[::2, ::2, ::2]
    nz = sample[sample > 0]
    lo, hi = (float(v) for v in (np.percentile(nz, (0.5, 99.5)) if nz.size else (scan.min(), scan.max())))
    return lo, hi if hi > lo else lo + 1


def _square_pixels(img: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Resample (nearest) so a pixel is as tall as it is wide in mm: a 1x1x3 mm scan's coronal
    slice is not squashed."""
    base = min(row_mm, col_mm)
    nr, nc = img.shape[:2]
    rr = max(1, int(round(nr * row_mm / base)))
    cc = max(1, int(round(nc * col_mm / base)))
    if (rr, cc) == (nr, nc):
        return img
    ri = np.minimum((np.arange(rr) * nr / rr).astype(int), nr - 1)
    ci = np.minimum((np.arange(cc) * nc / cc).astype(int), nc - 1)
    return img[ri][:, ci]


def render_slice(labels: np.ndarray, affine: np.ndarray, plane: str, index: int, scan: np.ndarray | None = None,
                 opacity: float = 0.5, window: tuple[float, float] | None = None) -> np.ndarray:
    """One slice as the app shows it: RGB uint8, radiological orientation (patient's right on the
    image's left, anterior/superior up), square pixels, class colours from resources/colors.json;
    over the scan in grey when `scan` is given (background stays scan), else on black."""
    from engine.core.classes import tissue_classes
    from engine.io.orientation import ViewGeometry

    g = ViewGeometry.for_view(plane, affine, labels.shape)
    if not 0 <= index < g.n_slices:
        raise ValueError(f"{plane} slice {index} is outside 0-{g.n_slices - 1}")
    lut = np.zeros((256, 3), np.float32)
    for tc in tissue_classes():
        lut[tc.value] = tc.rgb
    lab = np.asarray(g.display(labels, index), dtype=np.uint8)
    colour = lut[lab]
    if scan is not None:
        lo, hi = window or grey_window(scan)
        grey = np.clip((np.asarray(g.display(scan, index), np.float32) - lo) / (hi - lo), 0, 1) * 255
        rgb = np.repeat(grey[..., None], 3, axis=2)
        on = lab > 0
        rgb[on] = (1 - opacity) * rgb[on] + opacity * colour[on]
    else:
        rgb = colour
    return _square_pixels(np.clip(rgb, 0, 255).astype(np.uint8), g.row_spacing, g.col_spacing)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.text((3, 2), text, fill=(255, 255, 80))
    return np.asarray(im)


def _letters(img: np.ndarray, edges: dict) -> np.ndarray:
    """The anatomical letter of each edge (R/L, A/P, S/I) at the middle of that edge, as the app's
    views show them, so a montage read on its own says which side is which."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    h, w = img.shape[:2]
    for edge, (x, y) in {"left": (2, h // 2 - 5), "right": (w - 9, h // 2 - 5), "top": (w // 2 - 3, 2),
                         "bottom": (w // 2 - 3, h - 13)}.items():
        d.text((x, y), edges[edge], fill=(120, 220, 255))
    return np.asarray(im)


LEGEND_MIN_WIDTH = 560  # pixels: the class names and the note fit on one line


def _legend(width: int, opacity: float, over_scan: bool, plane: str) -> np.ndarray:
    """A strip under a montage: each class's colour and name, and how it was drawn."""
    from PIL import Image, ImageDraw

    from engine.core.classes import tissue_classes

    im = Image.new("RGB", (width, 22), (0, 0, 0))
    d = ImageDraw.Draw(im)
    x = 4
    for tc in tissue_classes()[1:]:
        d.rectangle([x, 5, x + 12, 17], fill=tuple(int(v) for v in tc.rgb))
        d.text((x + 16, 5), tc.name, fill=(230, 230, 230))
        x += 22 + 7 * len(tc.name)
    note = f"{plane}, radiological (R on the left)" + (f", labels {opacity:.0%} over the scan" if over_scan else "")
    d.text((x + 6, 5), note, fill=(170, 170, 170))
    return np.asarray(im)


def montage_slices(labels: np.ndarray, plane_axis: int, panels: int) -> list[int]:
    """Evenly spaced slices among those that hold labels (at most `panels`), leaving out the
    first and last slivers (under a tenth of the largest slice's labelled area)."""
    other = tuple(a for a in range(3) if a != plane_axis)
    area = (np.asarray(labels) > 0).sum(axis=other)
    held = np.where(area >= max(1, 0.1 * area.max()))[0]
    if not held.size:
        held = np.arange(labels.shape[plane_axis])
    if held.size <= panels:
        return [int(k) for k in held]
    return [int(held[int(round(i))]) for i in np.linspace(0, held.size - 1, panels)]


def export_png(labels: np.ndarray, affine: np.ndarray, out_dir: str | os.PathLike, plane: str = "axial",
               scan: np.ndarray | None = None, montage: bool = False, panels: int = 24, opacity: float = 0.5,
               prefix: str | None = None, window: tuple[float, float] | None = None) -> list[Path]:
    """Colour PNGs of a mask, optionally over its scan, in the on-screen orientation: one file per
    slice of `plane` (named with 1-based slice numbers, as the app's view titles), or with
    `montage` one grid image of up to `panels` evenly spaced slices that hold labels, each marked
    with its slice number and the anatomical letter of each edge, over a legend of the classes.
    Written atomically; returns the files."""
    from engine.io.orientation import ViewGeometry

    if plane not in ("axial", "coronal", "sagittal"):
        raise ValueError(f"plane must be axial, coronal or sagittal, not {plane!r}")
    lab = np.asarray(labels, dtype=np.uint8)
    if scan is not None and np.shape(scan) != lab.shape:
        raise ValueError(f"the scan is {'x'.join(map(str, np.shape(scan)))} but the mask is "
                         f"{'x'.join(map(str, lab.shape))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = ViewGeometry.for_view(plane, affine, lab.shape)
    if scan is not None and window is None:
        window = grey_window(scan)
    prefix = prefix or plane
    n = g.n_slices
    width = max(3, len(str(n)))
    files = []
    if not montage:
        for k in range(n):
            img = render_slice(lab, affine, plane, k, scan, opacity, window)
            path = out / f"{prefix}_{k + 1:0{width}d}.png"
            atomic_write(path, lambda tmp, a=img: imageio.imwrite(tmp, a, format="png"))
            files.append(path)
        return files
    ks = montage_slices(lab, g.axis, panels)
    tiles = [_label(_letters(render_slice(lab, affine, plane, k, scan, opacity, window), g.edges), f"{plane} {k + 1}")
             for k in ks]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    th, tw = tiles[0].shape[:2]
    grid = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
    if grid.shape[1] < LEGEND_MIN_WIDTH:  # the legend stays readable under a narrow montage
        grid = np.concatenate([grid, np.zeros((grid.shape[0], LEGEND_MIN_WIDTH - grid.shape[1], 3), np.uint8)], axis=1)
    grid = np.concatenate([grid, _legend(grid.shape[1], opacity, scan is not None, plane)], axis=0)
    path = out / f"{prefix}_montage.png"
    atomic_write(path, lambda tmp: imageio.imwrite(tmp, grid, format="png"))
    return [path]
