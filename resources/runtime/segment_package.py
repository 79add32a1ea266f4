#!/usr/bin/env python3
"""Segment a brain MRI scan with a BrainSeg inference package, without BrainSeg installed.

    python segment_package.py PACKAGE_DIR SCAN -o OUT.nii.gz [--batch-size 8]

Needs numpy and nibabel, plus onnxruntime for an ONNX package or mxnet for an MXNet one. Every file
of the package is first checked against the SHA-256 sums in MANIFEST.json. Then, as package.json
records: axial slices are the third array axis; the volume is divided by the 99th percentile of its
foreground voxels (foreground: above 5% of the 99.5th percentile of positive voxels) and clipped to
[0, 3]; slices without foreground are background; the others run in batches of consecutive slices,
each cropped to its foreground's in-plane box (plus a margin), padded centred to a multiple the
network accepts; the label is the argmax of the network's logits. The mask is written with the
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


def segment(vol: np.ndarray, spec: dict, run, batch_size: int | None = None) -> np.ndarray:
    pre = spec["preprocess"]
    fg = foreground_mask(vol, pre["foreground"])
    scale = normalisation_scale(vol, fg, pre["normalise"])
    lo, hi = pre["normalise"]["clip"]
    multiple, crop = int(pre["pad"]["multiple"]), pre["crop"]
    bx, by = slice(0, vol.shape[0]), slice(0, vol.shape[1])
    if crop["to_foreground"] and crop["scope"] == "volume":
        bx, by = crop_box(fg, multiple, int(crop["margin"]))
    labels = np.zeros(vol.shape, dtype=np.uint8)  # slices without foreground stay background
    todo = [k for k in range(vol.shape[2]) if fg[:, :, k].any()]
    batch_size = max(1, batch_size or int(crop.get("batch_slices", 8)))
    for start in range(0, len(todo), batch_size):
        ks = todo[start:start + batch_size]
        if crop["to_foreground"] and crop["scope"] == "batch":
            bx, by = crop_box(fg[:, :, ks], multiple, int(crop["margin"]))
        x = np.clip(np.moveaxis(vol[bx, by][:, :, ks], 2, 0) / scale, lo, hi).astype(np.float32)
        h, w = x.shape[1:]
        ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        oy, ox = (ph - h) // 2, (pw - w) // 2
        padded = np.full((len(ks), 1, ph, pw), pre["pad"]["value"], dtype=np.float32)
        padded[:, 0, oy:oy + h, ox:ox + w] = x
        lab = np.argmax(run(padded), axis=1).astype(np.uint8)[:, oy:oy + h, ox:ox + w]
        labels[bx, by, ks] = np.moveaxis(lab, 0, 2)
        print(f"\r{start + len(ks)}/{len(todo)} slices", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return labels


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
        labels = segment(vol, spec, load_network(args.package, spec), args.batch_size)
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
