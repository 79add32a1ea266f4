#!/usr/bin/env python3
"""Segment a brain MRI scan with a BrainSeg inference package, without BrainSeg installed.

    python segment_package.py PACKAGE_DIR SCAN -o OUT.nii.gz [--strip auto|on|off] [--mask-out BRAIN.nii.gz]
                              [--batch-size 8]

Needs numpy and nibabel, plus onnxruntime for an ONNX package or mxnet for an MXNet one; scipy is
optional (see brain extraction). Every file of the package is first checked against the SHA-256
sums in MANIFEST.json. Then, as package.json records:

Brain extraction, when the package carries the extractor (strip.onnx or strip-symbol.json) and
--strip auto finds the skull on (and the scan not already skull-stripped), or --strip on: the scan
is resampled (trilinear) onto a 128^3 grid of 2 mm voxels around the head, divided by the 98th
percentile of its positive voxels and clipped to [0, 2]; every slice of the three planes goes
through the extractor with its two neighbours as channels (again mirrored left-right when
package.json's "strip" has "flip"), the planes' brain probabilities are averaged, brought back to
the scan's grid and thresholded at the model's "threshold"; the largest connected piece is kept and
its holes filled (with scipy; without it, not: said on stderr); outside the mask the scan is 0 and the rest
is segmented as a skull-stripped scan.

Segmentation: the scan is brought to the network's grid (LAS axes, 1 mm: reoriented, and resampled when
its voxels differ from 1 mm); the volume is divided by the 99th percentile of its foreground voxels
(foreground: above 5% of the 99.5th percentile of positive voxels) and clipped to [0, 3]; for each
anatomical plane (axial, coronal, sagittal), slices without foreground are skipped and the others
run in batches of consecutive slices, each cropped to its foreground's in-plane box (plus a
margin) and padded centred to a multiple the network accepts; the planes' softmax probabilities are
averaged, brought back to the scan's grid, weighted by package.json "calibration" (if any), and the label
is their argmax (in a skull-stripped scan, every nonzero voxel gets a tissue label, as FSL FAST's).
The mask is written with the scan's affine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np


class PackageError(Exception):
    """The package is incomplete, altered or not understood."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_package(pkg: Path) -> dict:
    """Check every file listed in MANIFEST.json, then return package.json."""
    try:
        manifest = json.loads((pkg / "MANIFEST.json").read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise PackageError(f"{pkg}: no readable MANIFEST.json ({exc})") from exc
    for rel, digest in sorted(files.items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise PackageError(f"MANIFEST.json lists a path outside the package: {rel}")
        path = pkg / rel
        if not path.is_file():
            raise PackageError(f"{rel}: listed in MANIFEST.json but missing from {pkg}")
        if sha256(path) != digest:
            raise PackageError(f"{rel}: checksum mismatch (MANIFEST.json says {digest[:12]}...): "
                               "the package was altered or is corrupt")
    if "package.json" not in files:
        raise PackageError("MANIFEST.json does not cover package.json")
    return json.loads((pkg / "package.json").read_text(encoding="utf-8"))


def read_scan(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PackageError(f"{path}: a 3-D volume is needed, got shape {data.shape}")
    return np.ascontiguousarray(data, dtype=np.float32), img.affine


def foreground_mask(vol: np.ndarray, rule: dict) -> np.ndarray:
    positive = vol[vol > 0]
    if positive.size == 0:
        return np.zeros(vol.shape, dtype=bool)
    return vol > rule["fraction"] * float(np.percentile(positive, rule["percentile"]))


def normalisation_scale(vol: np.ndarray, fg: np.ndarray, rule: dict) -> float:
    if not fg.any():
        return 1.0
    vals = vol[fg]
    if fg.sum() > rule["subsample_above"]:
        vals = vals[::rule["subsample_stride"]]
    p = float(np.percentile(vals, rule["percentile"]))
    return p if p > 0 else 1.0


def crop_box(fg: np.ndarray, multiple: int, margin: int) -> tuple[slice, slice]:
    """In-plane box holding every slice's foreground plus margin, widened to a multiple."""
    any_xy = fg.any(axis=2)
    if not any_xy.any():
        return slice(0, fg.shape[0]), slice(0, fg.shape[1])
    box = []
    for axis, n in ((1, fg.shape[0]), (0, fg.shape[1])):
        idx = np.where(any_xy.any(axis=axis))[0]
        lo, hi = max(0, idx[0] - margin), min(n, idx[-1] + 1 + margin)
        size = -(-(hi - lo) // multiple) * multiple
        if size >= n:
            lo, hi = 0, n
        else:
            lo = max(0, min(lo - (size - (hi - lo)) // 2, n - size))
            hi = lo + size
        box.append(slice(lo, hi))
    return box[0], box[1]


def load_network(pkg: Path, spec: dict, part: str = "network"):
    """A function (N, C, H, W) float32 -> logits (N, classes, H, W): part "network" is the tissue
    network (C = 1), "strip" the brain extractor (C = 3)."""
    net = spec[part] if part == "network" else spec[part]["network"]
    if spec["backend"] == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(pkg / net["files"]["onnx"]), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    if spec["backend"] == "mxnet":
        import mxnet as mx

        with warnings.catch_warnings():  # "Cannot decide type for ... data": harmless
            warnings.simplefilter("ignore", UserWarning)
            block = mx.gluon.SymbolBlock.imports(str(pkg / net["files"]["symbol"]), [net["input"]],
                                                 str(pkg / net["files"]["params"]), ctx=mx.cpu())
        return lambda x: block(mx.nd.array(x)).asnumpy()
    raise PackageError(f"unknown backend {spec['backend']!r} in package.json")


# ----------------------------------------------------------------------------- geometry
# The network's grid (package.json "geometry"): LAS axes, 1 mm voxels. A scan is reoriented to its
# closest LAS orientation and, when a voxel side differs from 1 mm by more than the tolerance,
# resampled linearly (centre-aligned, Gaussian anti-aliasing when shrinking by more than 1.3x);
# class probabilities come back the inverse way and only then become labels. This repeats
# engine/io/conform.py in numpy + nibabel; the package tests check the two agree.
def gaussian_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    r = int(4.0 * sigma + 0.5)
    if sigma <= 0 or r < 1:
        return a
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    n = a.shape[axis]
    idx = np.arange(-r, n + r)
    idx = np.where(idx < 0, -idx - 1, idx)
    idx = np.where(idx >= n, 2 * n - idx - 1, idx)
    padded = np.take(a, np.clip(idx, 0, n - 1), axis=axis)
    out = np.zeros(a.shape, dtype=np.float32)
    for j, wj in enumerate(w):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(j, j + n)
        out += np.float32(wj) * padded[tuple(sl)]
    return out


def positions(n_out: int, n_in: int, zoom: float) -> np.ndarray:
    return (np.arange(n_out, dtype=np.float64) - (n_out - 1) / 2) / zoom + (n_in - 1) / 2


def resample_axis(a: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    n = a.shape[axis]
    p = np.clip(pos, 0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    w = (p - i0).astype(np.float32).reshape(shape)
    out = (np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w).astype(np.float32)
    outside = (pos < -0.5) | (pos > n - 0.5)
    if outside.any():
        idx = [slice(None)] * a.ndim
        idx[axis] = np.where(outside)[0]
        out[tuple(idx)] = 0.0
    return out


class Geometry:
    def __init__(self, shape, affine, geo: dict):
        import nibabel as nib
        from nibabel import orientations as ornt

        self.ornt = ornt
        self.src = nib.io_orientation(affine)
        self.target = ornt.axcodes2ornt(tuple(geo["axes"]))
        self.tr = ornt.ornt_transform(self.src, self.target)
        self.zoom = float(geo["voxel_mm"])
        native = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        self.zooms, self.rshape = [0.0] * 3, [0] * 3
        for i in range(3):
            self.zooms[int(self.tr[i, 0])] = float(native[i])
            self.rshape[int(self.tr[i, 0])] = int(shape[i])
        self.resampled = any(abs(z / self.zoom - 1) > geo["tolerance"] for z in self.zooms)
        self.wshape = [max(1, int(round(n * z / self.zoom))) if self.resampled else n
                       for n, z in zip(self.rshape, self.zooms)]

    def to_work(self, vol: np.ndarray) -> np.ndarray:
        a = self.ornt.apply_orientation(vol.astype(np.float32), self.tr)
        if self.resampled:
            for ax, z in enumerate(self.zooms):
                if z < self.zoom / 1.3:
                    a = gaussian_axis(a, 0.5 * np.sqrt((self.zoom / z) ** 2 - 1), ax)
            for ax in range(3):
                a = resample_axis(a, ax, positions(self.wshape[ax], self.rshape[ax], self.zooms[ax] / self.zoom))
        return np.ascontiguousarray(a, dtype=np.float32)

    def probs_to_native(self, probs: np.ndarray) -> np.ndarray:
        p = probs
        if self.resampled:
            for ax in range(3):  # clamped at the edges: never empty probabilities
                pos = positions(self.rshape[ax], self.wshape[ax], self.zoom / self.zooms[ax])
                p = resample_axis(p, ax + 1, np.clip(pos, 0, self.wshape[ax] - 1))
        inv = self.ornt.ornt_transform(self.target, self.src)
        return np.stack([self.ornt.apply_orientation(c, inv) for c in p])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- brain extraction
# package.json "strip_decision" and "strip": engine/infer/scan.py, qc.py and strip.py in numpy. The
# app's scipy.ndimage calls are used when scipy is installed; without it the resampling is done in
# numpy (the same trilinear rule) and the mask is not cleaned (said on stderr).
def voxel_ml(affine) -> float:
    return abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def skull_stripped(vol: np.ndarray, affine, rule: dict) -> bool:
    nonzero = vol[::2, ::2, ::2] != 0
    return bool(1.0 - nonzero.mean() > rule["zero_fraction"]
                and nonzero.sum() * 8 * voxel_ml(affine) <= rule["max_ml"])


def skull_present(vol: np.ndarray, affine, rule: dict) -> bool:
    import nibabel as nib

    fg = foreground_mask(vol, rule["foreground"])
    if not fg.any():
        return False
    axis = {int(w): i for i, (w, _) in enumerate(nib.io_orientation(affine))}  # world axis -> array axis
    edges = [np.take(fg, k, axis=axis[w]).mean() for w in (0, 1) for k in (0, -1)]  # L/R, A/P faces
    return bool(fg.sum() * voxel_ml(affine) > rule["max_ml"]
                or sum(e > rule["edge_fraction"] for e in edges) >= rule["min_edges"])


def strip_decision(vol: np.ndarray, affine, spec: dict, mode: str) -> tuple[bool, str]:
    """(extract?, why), as the app's --strip."""
    has = bool(spec.get("strip"))
    if mode == "off":
        return False, "brain extraction off"
    if mode == "on":
        if not has:
            raise PackageError("--strip on: this package carries no brain extractor (exported with --no-strip?)")
        return True, "brain extraction on"
    rules = spec.get("strip_decision")
    if not rules or skull_stripped(vol, affine, spec["tissue_inside_mask"]):
        return False, "already skull-stripped: left as it is" if rules else "no brain extractor: segmented as it is"
    if not skull_present(vol, affine, rules["skull_present"]):
        return False, "no skull found: segmented as it is"
    if not has:
        return False, ("skull found, but this package carries no brain extractor (exported with --no-strip, or "
                       "where none was installed): segmented as it is, skull included")
    return True, "skull found: brain extracted"


def scipy_ndimage():
    try:
        from scipy import ndimage
    except ImportError:
        return None
    return ndimage


def affine_resample(a: np.ndarray, m: np.ndarray, shape, ndi) -> np.ndarray:
    """out[o] = `a` at voxel m @ (o, 1), trilinear; 0 outside a's first and last voxel centres
    (scipy.ndimage.affine_transform, order 1, mode constant)."""
    a, mat, off = np.asarray(a, np.float32), m[:3, :3], m[:3, 3]
    if ndi is not None:
        return ndi.affine_transform(a, mat, off, output_shape=tuple(shape), order=1, mode="constant",
                                    cval=0.0).astype(np.float32)
    out, n = np.zeros(tuple(shape), np.float32), np.array(a.shape)[:, None] - 1
    jk = np.indices(shape[1:], dtype=np.float64).reshape(2, -1)
    for i in range(shape[0]):
        c = mat[:, :1] * i + mat[:, 1:] @ jk + off[:, None]
        ok = np.all((c >= 0) & (c <= n), axis=0)
        c = c[:, ok]
        i0 = np.floor(c).astype(np.intp)
        i1, w, val = np.minimum(i0 + 1, n), c - i0, np.zeros(c.shape[1])
        for corner in range(8):
            up = [(corner >> d) & 1 for d in range(3)]
            wt = np.prod([w[d] if up[d] else 1 - w[d] for d in range(3)], axis=0)
            val += wt * a[tuple(i1[d] if up[d] else i0[d] for d in range(3))]
        out[i][ok.reshape(shape[1:])] = val
    return out


def strip_grid(vol: np.ndarray, affine, grid: dict) -> np.ndarray:
    """The 2 mm work grid's affine, centred on the head's voxel box."""
    c, mm, size = grid["centre"], float(grid["voxel_mm"]), int(grid["size"])
    sub = vol[::c["step"], ::c["step"], ::c["step"]]
    sample = sub[::2, ::2, ::2]
    nz = sample[sample > 0]
    fg = sub > c["fraction"] * float(np.percentile(nz, c["percentile"])) if nz.size else np.zeros(1, bool)
    if fg.any():
        idx = np.argwhere(fg) * c["step"]
        centre = (idx.min(0) + idx.max(0)) / 2.0
    else:
        centre = (np.array(vol.shape) - 1) / 2.0
    aff = np.diag([mm, mm, mm, 1.0])
    aff[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - mm * (size - 1) / 2.0
    return aff


def fill_enclosed(prob: np.ndarray, threshold: float, ndi) -> np.ndarray:
    """Holes of the brain on the work grid (3-D, then every slice of each axis) get probability 1."""
    m = prob > threshold
    lab, count = ndi.label(m)
    if count > 1:
        m = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    filled = ndi.binary_fill_holes(m)
    for axis in range(3):
        moved = np.moveaxis(filled, axis, 0)
        for k in range(moved.shape[0]):
            if moved[k].any():
                moved[k] = ndi.binary_fill_holes(moved[k])
    return np.where(filled & ~m, np.float32(1.0), prob).astype(np.float32)


def extract_brain(vol: np.ndarray, affine, s: dict, run) -> np.ndarray:
    """The intracranial mask (bool, the scan's grid) of package.json "strip"'s rules."""
    ndi, g, it, sl = scipy_ndimage(), s["grid"], s["intensity"], s["slices"]
    affine = np.asarray(affine, np.float64)
    grid = strip_grid(vol, affine, g)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = [max(0.0, g["anti_alias"]["factor"] * (g["voxel_mm"] / z - 1.0)) for z in zooms]
    v = vol
    if max(sigma) > g["anti_alias"]["min_sigma"]:
        if ndi is not None:
            v = ndi.gaussian_filter(v, sigma)
        else:
            for ax, sg in enumerate(sigma):
                v = gaussian_axis(v, sg, ax)
    work = affine_resample(v, np.linalg.inv(affine) @ grid, (int(g["size"]),) * 3, ndi)
    vals = work[work > 0]
    if vals.size > it["subsample_above"]:
        vals = vals[::vals.size // it["subsample_above"] + 1]
    scale = float(np.percentile(vals, it["percentile"])) if vals.size else 1.0
    work = np.clip(work / (scale if scale > 0 else 1.0), *it["clip"])
    def planes_probability(work, label=""):
        fg, acc, ctx = work > sl["foreground"], np.zeros(work.shape, np.float32), int(sl["context"])
        for plane, axis in sl["plane_axis"].items():
            moved = np.moveaxis(work, axis, 0)
            n = moved.shape[0]
            keep = np.where(np.moveaxis(fg, axis, 0).reshape(n, -1).any(1))[0]
            probs = np.zeros(moved.shape, np.float32)
            for start in range(0, len(keep), int(sl["batch_slices"])):
                ks = keep[start:start + int(sl["batch_slices"])]
                x = np.stack([moved[np.clip(ks + c, 0, n - 1)] for c in range(-ctx, ctx + 1)], axis=1)
                probs[ks] = softmax(run(np.ascontiguousarray(x, np.float32)))[:, 1]
                print(f"\rbrain extraction{label}, {plane}: {start + len(ks)}/{len(keep)} slices", end="",
                      file=sys.stderr, flush=True)
            print(file=sys.stderr)
            acc += np.moveaxis(probs, 0, axis)
        return acc / len(sl["plane_axis"])

    prob = planes_probability(work)
    if s.get("flip"):  # test-time flip: the grid mirrored along one axis, mirrored back, averaged
        ax = int(s["flip"]["axis"])
        prob = 0.5 * (prob + np.flip(planes_probability(np.flip(work, ax).copy(), " (mirrored)"), ax))
    if ndi is not None and s.get("fill_enclosed"):
        prob = fill_enclosed(prob, s["threshold"], ndi)
    mask = affine_resample(prob, np.linalg.inv(grid) @ affine, vol.shape, ndi) > s["threshold"]
    if ndi is None:
        print("segment_package: scipy is not installed: the brain mask is not cleaned (largest piece, "
              "holes filled) as the app does; install scipy for the app's mask", file=sys.stderr)
        return mask
    lab, count = ndi.label(mask)
    if count > 1:
        mask = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return ndi.binary_fill_holes(mask)


def masked_scan(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Outside the mask 0, inside > 0 (engine.infer.scan.masked_scan): a skull-stripped scan."""
    inside = np.maximum(vol, 0)
    floor = np.float32(1e-3 * max(float(inside[mask].max()) if mask.any() else 1.0, 1e-6))
    return np.where(mask, np.maximum(inside, floor), np.float32(0)).astype(np.float32)


def segment(vol: np.ndarray, affine: np.ndarray, spec: dict, run, batch_size: int | None = None,
            masked: bool = False) -> np.ndarray:
    """`masked`: the scan was masked with the brain mask: its nonzero voxels are the brain
    (FSL_SEG semantics whatever the skull-stripped rule says of its size), as the app does."""
    pre = spec["preprocess"]
    geo = Geometry(vol.shape, affine, spec["geometry"])
    work = geo.to_work(vol)
    fg = foreground_mask(work, pre["foreground"])
    scale = normalisation_scale(work, fg, pre["normalise"])
    lo, hi = pre["normalise"]["clip"]
    multiple, crop = int(pre["pad"]["multiple"]), pre["crop"]
    rule = spec["tissue_inside_mask"]
    stripped = rule["enabled"] and (masked or skull_stripped(vol, affine, rule))
    region = work > 0 if stripped else fg
    planes = spec["planes"]
    probs = np.zeros((len(spec.get("classes", [])) or 4,) + work.shape, dtype=np.float32)
    batch_size = max(1, batch_size or int(crop.get("batch_slices", 8)))
    stride = max(1, int(spec.get("secondary_stride", 1)))
    for i, plane in enumerate(planes):
        ax = spec["geometry"]["plane_axis"][plane]
        order = [a for a in range(3) if a != ax] + [ax]
        w, f = np.transpose(work, order), np.transpose(region, order)
        acc = np.transpose(probs, [0] + [a + 1 for a in order])
        todo = [k for k in range(w.shape[2]) if f[:, :, k].any()]
        sparse = i > 0 and stride > 1 and bool(todo)
        if sparse:  # every stride-th slice, the ones between interpolated along the normal
            todo = sorted(set(todo[::stride]) | {todo[-1]})
            total_acc, acc = acc, np.zeros(acc.shape, np.float32)
        for start in range(0, len(todo), batch_size):
            ks = todo[start:start + batch_size]
            bx, by = slice(0, w.shape[0]), slice(0, w.shape[1])
            if crop["to_foreground"]:
                bx, by = crop_box(f[:, :, ks], multiple, int(crop["margin"]))
            x = np.clip(np.moveaxis(w[bx, by][:, :, ks], 2, 0) / scale, lo, hi).astype(np.float32)
            h, wd = x.shape[1:]
            ph, pw = -(-h // multiple) * multiple, -(-wd // multiple) * multiple
            oy, ox = (ph - h) // 2, (pw - wd) // 2
            padded = np.full((len(ks), 1, ph, pw), pre["pad"]["value"], dtype=np.float32)
            padded[:, 0, oy:oy + h, ox:ox + wd] = x
            prob = softmax(run(padded))[:, :, oy:oy + h, ox:ox + wd]
            acc[:, bx, by, ks] += np.moveaxis(prob, 0, 3)
            print(f"\r{plane}: {start + len(ks)}/{len(todo)} slices", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        if sparse:
            for k0, k1 in zip(todo[:-1], todo[1:]):
                for k in range(k0 + 1, k1):
                    t = (k - k0) / (k1 - k0)
                    acc[..., k] = (1 - t) * acc[..., k0] + t * acc[..., k1]
            total_acc += acc
    if len(planes) > 1:
        probs /= len(planes)
    probs[0][probs.sum(axis=0) <= 0] = 1.0  # voxels no network saw are background
    native = geo.probs_to_native(probs)
    native *= np.float32((spec.get("calibration") or {}).get("class_weights") or 1.0).reshape(-1, 1, 1, 1)
    if stripped:  # FSL_SEG semantics: every nonzero voxel is a tissue
        labels = (np.argmax(native[1:], axis=0) + 1).astype(np.uint8)
        labels[vol <= 0] = 0
        return labels
    return np.argmax(native, axis=0).astype(np.uint8)


def write_mask(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(labels, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Segment a scan with a BrainSeg inference package.")
    ap.add_argument("package", type=Path, help="the package folder (holds MANIFEST.json)")
    ap.add_argument("scan", type=Path, help="a 3-D scan readable by nibabel (.nii, .nii.gz, .hdr)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="mask file, .nii or .nii.gz")
    ap.add_argument("--batch-size", type=int, help="slices per batch (default: as recorded, 8)")
    ap.add_argument("--strip", choices=("auto", "on", "off"), default="auto",
                    help="brain extraction first: auto (when the scan has its skull on), on, off")
    ap.add_argument("--mask-out", type=Path, metavar="FILE", help="also write the brain mask used (0/1)")
    args = ap.parse_args(argv)
    try:
        for path in (args.output, args.mask_out or args.output):
            if not path.name.endswith((".nii", ".nii.gz")):
                raise PackageError(f"{path}: write the mask as .nii or .nii.gz")
        spec = load_package(args.package)
        vol, affine = read_scan(args.scan)
        stripped, reason = strip_decision(vol, affine, spec, args.strip)
        if args.mask_out and not stripped:
            raise PackageError(f"--mask-out: no brain mask was made ({reason})")
        brain = extract_brain(vol, affine, spec["strip"], load_network(args.package, spec, "strip")) \
            if stripped else None
        scan = masked_scan(vol, brain) if stripped else vol
        labels = segment(scan, affine, spec, load_network(args.package, spec), args.batch_size, masked=stripped)
        write_mask(args.output, labels, affine)
        if args.mask_out:
            write_mask(args.mask_out, brain.astype(np.uint8), affine)
    except (PackageError, OSError, ValueError) as exc:
        print(f"segment_package: error: {exc}", file=sys.stderr)
        return 2
    if stripped:
        print(f"stripped: {reason}: {brain.sum() * voxel_ml(affine):,.0f} mL intracranial")
    else:
        print(f"not stripped: {reason}")
    names = {c["value"]: c["name"] for c in spec.get("classes", [])}
    counts = np.bincount(labels.ravel(), minlength=len(names) or 1)
    print(", ".join(f"{names.get(i, i)}: {n}" for i, n in enumerate(counts)) + " voxels")
    print(f"wrote {args.output}" + (f" and the brain mask {args.mask_out}" if args.mask_out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
