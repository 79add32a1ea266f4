"""Accuracy of the shipped weights on proxies that can fail, side by side with ANTs Atropos, and the
end-to-end speed of `brainseg segment` against Atropos in the same run.

    .venv/bin/python -m bench.proxy_eval [--atropos .venv-ants/bin/python] [--no-append] [--smoke]

What the data is, exactly (no second labelled real brain installs offline, and the team keeps one
back on purpose):
- REPORT proxies: synthetic subjects built from the ICBM152 template by `engine.train.synth` with seeds
  that neither training (its pool) nor checkpoint selection (tools/train_shipped.py VAL_SEEDS)
  ever used: the template's anatomy under an unseen 3-D deformation and unseen atrophy (opened
  sulci, thinner cortex, wider ventricles), with the template's own intensities. Their labels
  have FSL_SEG semantics (tissue_model.tissue_em on the template, deformed with it). They share
  the template's anatomy with the training data: they can fail on geometry, contrast and atrophy,
  not on an individual's anatomy. They are proxies, not held-out brains.
- Each proxy in four forms, as the tracker's table on a real brain: in OASIS layout (LAS 1 mm,
  Analyze), made MPRAGE-like (bias field, gamma, slice blur, Rician noise), stored sagittally
  (NIfTI, axis order P-I-R, correct affine), resampled to 0.8 mm (compared on the 1 mm label grid
  by nearest neighbour). The 0.8 mm copy comes twice: skull-stripped at 0.8 mm (the 1 mm brain
  mask looked up by nearest neighbour: what a 0.8 mm acquisition stripped at its own resolution
  looks like) and as linear interpolation leaves it, with a dim halo of partial voxels around the
  brain that is not in the 1 mm labels; with FSL_SEG semantics every nonzero voxel is tissue, so
  the halo counts against CSF.
- The training brain itself (the demo scan) for reference only: every voxel of it was trained on.

--smoke (tests/bench): ENet, one proxy (of the demo scan and labels in place of template_tissue()'s
fit: the same template) and the demo, both cropped to 16 axial slices, every method on the first form
and the default one on the others, one timing run of one command; Atropos only where its venv is.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import add_smoke_flag, brain_slab, crop_affine, report, start_smoke

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

REPORT_SEEDS = (777_001, 777_002, 777_003)
LAS_AFFINE = np.array([[-1.0, 0, 0, 87.0], [0, 1.0, 0, -103.0], [0, 0, 1.0, -87.0], [0, 0, 0, 1]])


def pir_copy(img: np.ndarray, affine: np.ndarray = LAS_AFFINE) -> tuple[np.ndarray, np.ndarray]:
    """A LAS volume (with its affine) stored sagittally: array axes Posterior, Inferior, Right;
    exact affine."""
    nx, ny, nz = img.shape
    pir = np.ascontiguousarray(img.transpose(1, 2, 0)[::-1, ::-1, ::-1])
    m = np.zeros((4, 4))  # pir index (i, j, k) -> las index (x, y, z)
    m[0, 2], m[0, 3] = -1, nx - 1
    m[1, 0], m[1, 3] = -1, ny - 1
    m[2, 1], m[2, 3] = -1, nz - 1
    m[3, 3] = 1
    return pir, affine @ m


def from_pir(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask[::-1, ::-1, ::-1].transpose(2, 0, 1))


def resampled_copy(img: np.ndarray, zoom: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm LAS volume on a `zoom` mm grid over the same field of view (linear)."""
    from engine.io.conform import _positions, resample_axis

    out = img.astype(np.float32)
    shape = [int(round(n / zoom)) for n in img.shape]
    for ax in range(3):
        out = resample_axis(out, ax, _positions(shape[ax], img.shape[ax], 1 / zoom))
    c = [(n - 1) / 2 - zoom * (m - 1) / 2 for n, m in zip(img.shape, shape)]
    m = np.diag([zoom, zoom, zoom, 1.0])
    m[:3, 3] = c
    return np.where(out > 1e-3 * out.max(), out, 0).astype(np.float32), LAS_AFFINE @ m


def to_1mm(mask: np.ndarray, shape1: tuple, zoom: float = 0.8) -> np.ndarray:
    """Nearest-neighbour look-up of a `zoom` mm mask at the 1 mm grid's voxel centres."""
    idx = [np.clip(np.rint((np.arange(n) - (n - 1) / 2) / zoom + (m - 1) / 2).astype(int), 0, m - 1)
           for n, m in zip(shape1, mask.shape)]
    return mask[np.ix_(*idx)]


def run_atropos(python: str, img: np.ndarray, affine: np.ndarray, tmp: Path) -> tuple[np.ndarray, float]:
    src, out = tmp / "atropos_in.nii.gz", tmp / "atropos_out.nii.gz"
    nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(src))
    t = time.time()
    subprocess.run([python, str(ROOT / "tools" / "atropos_peer.py"), str(src), "-o", str(out)], check=True,
                   capture_output=True)
    return np.asanyarray(nib.load(str(out)).dataobj).astype(np.uint8), time.time() - t


def template_source(smoke: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(normalised template T1, its labels, CSF mean) that the proxies are built from. --smoke:
    template_tissue() without its 6 s fit - the demo is the same template with the same labels - cut
    to a slab of axial slices."""
    from train_shipped import template_tissue

    if not smoke:
        return template_tissue()
    from engine.core.paths import DEMO_LABELS, DEMO_SCAN
    from engine.infer.preprocess import normalisation_scale
    from engine.io.volume import read_volume

    t1, labels = read_volume(DEMO_SCAN).data, read_volume(DEMO_LABELS).data
    sl = brain_slab(labels)
    t1, labels = np.ascontiguousarray(t1[:, :, sl]), np.ascontiguousarray(labels[:, :, sl])
    t1 = (t1 / normalisation_scale(t1)).astype(np.float32)
    return t1, labels, float(t1[labels == 1].mean())


def fmt(d: dict) -> str:
    return "/".join(f"{d[k]:.3f}" for k in ("csf", "gm", "wm"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atropos", default=str(ROOT / ".venv-ants" / "bin" / "python"),
                    help="python of a virtual environment with antspyx ('' to skip Atropos)")
    ap.add_argument("--models", default="unet,enet")
    ap.add_argument("--proxies", type=int, default=len(REPORT_SEEDS))
    ap.add_argument("--timing-runs", type=int, default=5, help="alternating rounds of the end-to-end timing")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="skip the accuracy part")
    ap.add_argument("--json", help="also write the raw figures here")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    scratch = None
    if args.smoke:
        scratch = start_smoke("proxy_eval")
        args.models, args.proxies, args.timing_runs = "enet", 1, 1
    from engine.core.mx_env import configure_threads

    # the timed commands get the caller's environment, not this process's thread settings: a user's
    # shell has no OMP_NUM_THREADS, and with one `brainseg segment` keeps to one process
    user_env = dict(os.environ)
    configure_threads()
    from train_shipped import perturb, proxy_subject

    from engine.bench import cpu_info
    from engine.core.metrics import dice_scores
    from engine.core.paths import DEMO_LABELS, DEMO_SCAN
    from engine.infer.inference import SegmentConfig, Segmenter, secondary_folder
    from engine.io.volume import read_volume
    from engine.nets.weights import read_model_dir, shipped_model_dir

    atropos = args.atropos if args.atropos and Path(args.atropos).exists() else None
    t1, labels, csf_mean = template_source(args.smoke)
    proxies = []
    for s in REPORT_SEEDS[:args.proxies]:
        img, lab = proxy_subject(t1, labels, csf_mean, s)
        proxies.append((s, img, lab))
    archs = [a for a in args.models.split(",") if a]
    segs = {a: Segmenter(shipped_model_dir(a)) for a in archs}
    versions = {a: read_model_dir(shipped_model_dir(a)).version for a in archs}
    methods = [(a, planes, {}) for a in archs for planes in (("axial", "coronal", "sagittal"), ("axial",))]
    methods += [(a, ("axial", "coronal", "sagittal"), {"refine": False}) for a in archs]
    methods += [(a, ("axial", "coronal", "sagittal"), {"secondary_stride": 2}) for a in archs]
    methods += [("enet", ("axial", "coronal", "sagittal"), {"flip": True})] if "enet" in archs else []

    def label(arch, planes, kw):
        extra = "".join(f" {k}={v}" for k, v in kw.items())
        return f"{arch} {'+'.join(p[0].upper() for p in planes)}{extra}"
    results: dict = {}

    def add(key, lab, pred):
        d = dice_scores(lab, pred)
        results.setdefault(key, []).append({k: d[k] for k in ("csf", "gm", "wm")})

    tmp = scratch or Path(tempfile.mkdtemp(prefix="proxy_eval_"))
    for s, img0, lab in ([] if args.timing_only else proxies):
        img = (img0 * 200.0).astype(np.float32)  # a scanner-like range (normalisation must not care)
        forms = {
            "OASIS layout (LAS 1 mm)": (img, LAS_AFFINE, lambda m: m),
            "MPRAGE-like": ((perturb(img0, seed=s) * 200.0).astype(np.float32), LAS_AFFINE, lambda m: m),
        }
        pir, pir_aff = pir_copy(img)
        forms["stored sagittally (PIR NIfTI)"] = (pir, pir_aff, from_pir)
        r08, aff08 = resampled_copy(img)
        mask08 = to_1mm(lab, r08.shape, zoom=1 / 0.8) > 0  # the brain mask at 0.8 mm (nearest neighbour)
        forms["resampled to 0.8 mm, masked at 0.8 mm"] = (np.where(mask08, r08, 0).astype(np.float32), aff08,
                                                          lambda m, shape=img.shape: to_1mm(m, shape))
        forms["resampled to 0.8 mm, unmasked halo"] = (r08, aff08, lambda m, shape=img.shape: to_1mm(m, shape))
        for form, (x, aff, back) in forms.items():
            for arch, planes, kw in methods:
                if kw and form not in ("OASIS layout (LAS 1 mm)", "MPRAGE-like"):
                    continue
                if args.smoke and form != "OASIS layout (LAS 1 mm)" and (arch, planes, kw) != methods[0]:
                    continue
                res = segs[arch].segment(x, SegmentConfig(planes=planes, **kw), affine=aff)
                add((form, label(arch, planes, kw)), lab, back(res.labels))
            if atropos and form in ("OASIS layout (LAS 1 mm)", "MPRAGE-like"):
                pred, _ = run_atropos(atropos, x, aff, tmp)
                add((form, "Atropos"), lab, back(pred))
            print(f"proxy {s} {form}: done", file=sys.stderr)

    demo = read_volume(DEMO_SCAN)
    demo_lab = read_volume(DEMO_LABELS).data
    if args.smoke:
        sl = brain_slab(demo_lab)
        demo = dataclasses.replace(demo, data=np.ascontiguousarray(demo.data[:, :, sl]),
                                   affine=crop_affine(demo.affine, sl.start))
        demo_lab = np.ascontiguousarray(demo_lab[:, :, sl])
    for arch, planes, kw in ([] if args.timing_only else methods[:1] if args.smoke else methods):
        res = segs[arch].segment(demo.data, SegmentConfig(planes=planes, **kw), affine=demo.affine)
        add(("training brain (demo scan; trained on)", label(arch, planes, kw)), demo_lab, res.labels)
    if atropos and not args.timing_only:
        pred, _ = run_atropos(atropos, demo.data, demo.affine, tmp)
        add(("training brain (demo scan; trained on)", "Atropos"), demo_lab, pred)

    # ---- speed side by side, one run, one scan: the clean proxy as a NIfTI file
    timing = {}
    scan = tmp / "proxy_clean.nii.gz"
    nib.save(nib.Nifti1Image((proxies[0][1] * 200.0).astype(np.float32), LAS_AFFINE), str(scan))
    cmds = {}
    for arch in archs:
        for planes in ("axial,coronal,sagittal",) + (() if args.smoke else ("axial",)):
            cmds[f"brainseg segment {arch} {planes}"] = [sys.executable, "-m", "engine.cli", "segment", str(scan),
                                                         "-o", str(tmp / "m.nii.gz"), "--model", arch,
                                                         "--planes", planes]
        if not args.smoke:  # the default shares its batches with a helper process: one process beside it
            cmds[f"brainseg segment {arch} axial,coronal,sagittal --processes 1"] = [
                sys.executable, "-m", "engine.cli", "segment", str(scan), "-o", str(tmp / "m.nii.gz"), "--model", arch,
                "--planes", "axial,coronal,sagittal", "--processes", "1"]
        if arch == "enet" and not args.smoke and secondary_folder(shipped_model_dir("enet")):
            from bench.secondary_eval import model_pair

            own = model_pair(shipped_model_dir("enet"), None, tmp / "enet-pair")[1]  # without it
            cmds["brainseg segment enet axial,coronal,sagittal, own network in every plane"] = [
                sys.executable, "-m", "engine.cli", "segment", str(scan), "-o", str(tmp / "m.nii.gz"),
                "--weights", str(own), "--planes", "axial,coronal,sagittal"]
        if arch == "unet" and not args.smoke:  # U-Net runs INT8 by default (its record offers it): FP32 beside it
            cmds["brainseg segment unet axial,coronal,sagittal --precision fp32"] = [
                sys.executable, "-m", "engine.cli", "segment", str(scan), "-o", str(tmp / "m.nii.gz"), "--model", "unet",
                "--planes", "axial,coronal,sagittal", "--precision", "fp32"]
    if atropos:
        cmds["Atropos (antspyx)"] = [atropos, str(ROOT / "tools" / "atropos_peer.py"), str(scan), "-o",
                                     str(tmp / "a.nii.gz")]
    for _ in range(args.timing_runs):
        for name, cmd in cmds.items():
            t = time.time()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=user_env)
            timing.setdefault(name, []).append(time.time() - t)

    # ---- report
    cpu = cpu_info(measure_clock=False).get("cpu", "?")
    lines = [f"## Proxies that can fail, and Atropos side by side ({time.strftime('%Y-%m-%d %H:%M')}, {cpu}, "
             f"2 cores; bench/proxy_eval.py)", "",
             f"Models: {', '.join(f'{a} = {versions[a]}' for a in archs)}. A = axial pass only; A+C+S = the "
             "three planes fused; intensity refinement on unless refine=False; flip=True adds left-right "
             "flip test-time augmentation; secondary_stride=2 runs every other coronal and sagittal slice and "
             "interpolates between them. Dice CSF/GM/WM, mean over "
             f"{len(proxies)} REPORT proxies (seeds {list(REPORT_SEEDS[:args.proxies])}): synthetic subjects of the "
             "ICBM152 template under deformations and atrophy never used in training or checkpoint selection. "
             "They share the template's anatomy: proxies, not held-out brains. The last block is the training "
             "brain itself (every voxel trained on), for reference only.", "",
             "| data | method | Dice CSF / GM / WM (mean) | worst proxy |", "|---|---|---|---|"]
    for (form, method), ds in results.items():
        mean = {k: float(np.mean([d[k] for d in ds])) for k in ("csf", "gm", "wm")}
        worst = min(ds, key=lambda d: d["csf"] + d["gm"] + d["wm"])
        lines.append(f"| {form} | {method} | {fmt(mean)} | {fmt(worst) if len(ds) > 1 else ''} |")
    lines += ["", "End to end on one scan (a REPORT proxy as .nii.gz, 176x208x176), each command a fresh process "
              f"(start, load, segment, write), {args.timing_runs} alternating rounds, in one run of this script; "
              "speed-ups are ratios of medians:", "", "| command | median s (min - max) | speed-up over Atropos |",
              "|---|---|---|"]
    at = float(np.median(timing["Atropos (antspyx)"])) if atropos else None
    for name, ts in timing.items():
        ratio = f"{at / float(np.median(ts)):.2f}x" if at else ""
        lines.append(f"| {name} | {np.median(ts):.2f} ({min(ts):.2f} - {max(ts):.2f}) | {ratio} |")
    text = "\n".join(lines) + "\n"
    report(text, append=not args.no_append)
    if args.json:
        Path(args.json).write_text(json.dumps({"dice": {f"{k[0]} | {k[1]}": v for k, v in results.items()},
                                               "timing": timing}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
