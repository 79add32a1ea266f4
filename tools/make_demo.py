"""Build the bundled demo scan from the MNI ICBM152 2009a template that the nilearn wheel carries.

Writes, in OASIS-1 layout (Analyze 7.5, 176x208x176, 1 mm, big-endian):
  resources/demo/demo_t88_masked_gfc.hdr/.img       skull-stripped T1, int16, 0..255
  resources/demo/demo_t88_masked_gfc_fseg.hdr/.img  FSL_SEG-style labels, uint8 (0 bg, 1 CSF, 2 GM, 3 WM)
Labels: FSL_SEG semantics from the T1's own intensities (tissue_labels: Gaussian mixture + MRF).

    python tools/make_demo.py [--out resources/demo]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.io.volume import OASIS_SHAPE, save_labels  # noqa: E402

NOTICE = """The demo scan in this folder is derived from the MNI ICBM152 2009a nonlinear symmetric
template (T1 and grey/white-matter probability maps), as shipped in the nilearn Python package.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University.
Permission to use, copy, modify, and distribute this software and its documentation
for any purpose and without fee is hereby granted, provided that the above copyright
notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without
express or implied warranty. The authors are not responsible for any data loss, equipment
damage, property loss, or injury to subjects or patients resulting from the use or misuse
of this software package.

References: Fonov et al., NeuroImage 54(1), 2011; Fonov et al., NeuroImage 47, S102, 2009;
Collins et al., NeuroImage 1999.

BrainSeg's transformation: cropped around the brain to the OASIS-1 T88 grid (176x208x176, 1 mm),
T1 masked to the brain and scaled to 0..255 int16; labels with FSL_SEG semantics from the T1's own
intensities (3-class Gaussian mixture + MRF, as FSL FAST) over every voxel of the mask. See tools/make_demo.py.
"""


def load_template() -> dict[str, np.ndarray]:
    """The template's T1, GM, WM (float 0..1), brain mask and affine, cropped to the OASIS grid."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    arrays = {
        "t1": np.asanyarray(t1.dataobj).astype(np.float32),
        "gm": np.asanyarray(gm.dataobj).astype(np.float32),
        "wm": np.asanyarray(wm.dataobj).astype(np.float32),
        "mask": np.asanyarray(mask.dataobj) > 0,
    }
    for k in ("t1", "gm", "wm"):
        a = arrays[k]
        arrays[k] = a / max(float(a.max()), 1e-6)
    # Centre the OASIS grid on the brain's bounding box.
    idx = np.argwhere(arrays["mask"])
    centre = (idx.min(0) + idx.max(0)) // 2
    starts = [int(c - s // 2) for c, s in zip(centre, OASIS_SHAPE)]
    out = {}
    for k, a in arrays.items():
        pad = [(max(0, -s), max(0, s + n - d)) for s, n, d in zip(starts, OASIS_SHAPE, a.shape)]
        ap = np.pad(a, pad)
        sl = tuple(slice(s + p[0], s + p[0] + n) for s, p, n in zip(starts, pad, OASIS_SHAPE))
        out[k] = ap[sl]
    affine = t1.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array(starts) + affine[:3, 3]
    out["affine"] = affine
    return out


def template_labels(tpl: dict[str, np.ndarray]) -> np.ndarray:
    """The first sessions' labels: argmax of the population priors (CSF = 1 - GM - WM). Kept for
    comparison only; they teach a grey-matter ribbon thicker than the intensities say."""
    gm, wm, mask = tpl["gm"], tpl["wm"], tpl["mask"]
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    lab = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1
    lab[~mask] = 0
    return lab


def tissue_labels(t1: np.ndarray):
    """FSL_SEG-like labels of a skull-stripped T1 from its own intensities, as FAST makes them:
    every nonzero voxel is CSF, GM or WM by a 3-class Gaussian mixture with a Potts MRF
    (engine/labels/tissue_model.py, beta 0.35). Returns (labels uint8, TissueFit)."""
    from engine.labels.tissue_model import tissue_em

    fit = tissue_em(t1, t1 > 0, beta=0.35)
    return fit.labels, fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "resources" / "demo"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tpl = load_template()
    t1 = np.where(tpl["mask"], tpl["t1"], 0.0)
    labels, _ = tissue_labels(t1)
    t1 = np.round(255.0 * t1 / t1.max()).astype(">i2")
    # The OASIS Analyze headers carry no orientation: nibabel gives them its default Analyze affine
    # (x flipped, 1 mm). Write ours the same way so the demo opens exactly like an OASIS file.
    hdr = nib.AnalyzeHeader(endianness=">")
    hdr.set_data_dtype(">i2")
    hdr.set_data_shape(t1.shape + (1,))
    hdr.set_zooms((1.0, 1.0, 1.0, 1.0))
    affine = hdr.get_best_affine()
    # The template is RAS; Analyze's default affine is LAS (radiological). Flip x so the anatomy
    # keeps its true left/right under that affine.
    t1 = t1[::-1]
    labels = np.ascontiguousarray(labels[::-1])
    img = nib.AnalyzeImage(t1[..., None], affine, header=hdr)
    nib.save(img, str(out / "demo_t88_masked_gfc.hdr"))
    save_labels(out / "demo_t88_masked_gfc_fseg.hdr", labels, affine)
    (out / "ICBM152_NOTICE.txt").write_text(NOTICE, encoding="utf-8")
    counts = np.bincount(labels.ravel(), minlength=4)
    print(f"wrote {out}: shape {t1.shape}, label voxels bg/csf/gm/wm = {counts.tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
