#!/usr/bin/env python3
"""Segment a brain MRI scan with a BrainSeg inference package, without BrainSeg installed.

    python segment_package.py PACKAGE_DIR SCAN -o OUT.nii.gz [--batch-size 8]

Needs numpy and nibabel, plus onnxruntime for an ONNX package or mxnet for an MXNet one. Every file
of the package is first checked against the SHA-256 sums in MANIFEST.json. Then, as package.json
records: the scan is brought to the network's grid (LAS axes, 1 mm: reoriented, and resampled when
its voxels differ from 1 mm); the volume is divided by the 99th percentile of its foreground voxels
(foreground: above 5% of the 99.5th percentile of positive voxels) and clipped to [0, 3]; for each
anatomical plane (axial, coronal, sagittal), slices without foreground are skipped and the others
run in batches of consecutive slices, each cropped to its foreground's in-plane box (plus a
margin) and padded centred to a multiple the network accepts; the planes' softmax probabilities
are averaged, brought back to the scan's grid, and the label is their argmax (in a skull-stripped
scan, every nonzero voxel gets a tissue label, as FSL FAST's). The mask is written with the
scan's affine.
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


def load_network(pkg: Path, spec: dict):
    """A function (N, 1, H, W) float32 -> logits (N, classes, H, W)."""
    net = spec["network"]
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


def segment(vol: np.ndarray, affine: np.ndarray, spec: dict, run, batch_size: int | None = None) -> np.ndarray:
    pre = spec["preprocess"]
    geo = Geometry(vol.shape, affine, spec["geometry"])
    work = geo.to_work(vol)
    fg = foreground_mask(work, pre["foreground"])
    scale = normalisation_scale(work, fg, pre["normalise"])
    lo, hi = pre["normalise"]["clip"]
    multiple, crop = int(pre["pad"]["multiple"]), pre["crop"]
    rule = spec["tissue_inside_mask"]
    nonzero = vol[::2, ::2, ::2] != 0
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    stripped = rule["enabled"] and bool(1.0 - nonzero.mean() > rule["zero_fraction"]
                                        and nonzero.sum() * 8 * voxel_ml <= rule["max_ml"])
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
    args = ap.parse_args(argv)
    try:
        if not args.output.name.endswith((".nii", ".nii.gz")):
            raise PackageError(f"{args.output}: write the mask as .nii or .nii.gz")
        spec = load_package(args.package)
        vol, affine = read_scan(args.scan)
        labels = segment(vol, affine, spec, load_network(args.package, spec), args.batch_size)
        write_mask(args.output, labels, affine)
    except (PackageError, OSError, ValueError) as exc:
        print(f"segment_package: error: {exc}", file=sys.stderr)
        return 2
    names = {c["value"]: c["name"] for c in spec.get("classes", [])}
    counts = np.bincount(labels.ravel(), minlength=len(names) or 1)
    print(", ".join(f"{names.get(i, i)}: {n}" for i, n in enumerate(counts)) + " voxels")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
