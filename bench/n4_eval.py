"""Does N4 bias correction before the networks help on raw heads? (issue #18, item 3)

    python -m bench.n4_eval --ants-python /path/to/venv/bin/python [--no-append] [--models enet,unet]
    python -m bench.n4_eval --smoke        (a tiny phantom head, no N4: checks that the script runs)

The RAW-like copy of pydeface's mean head (a VALIDATION PROXY: a population average, never Colin27)
is made twice from the same resampling and the same noise: with the +-20 % bias field that
bench/strip_eval.py uses, and without it. `brainseg segment` (brain extraction + tissue, whole
processes) runs on the biased copy, on the biased copy after antspyx's `n4_bias_field_correction`
(ANTs' N4, the field's standard, from a peer venv: it needs numpy 2), and on the unbiased copy.
What is measured: how far the bias moves the labels (Dice of biased vs unbiased labels, per class,
and the intracranial mask), how much of that N4 gives back, and what N4 costs in seconds. The
unbiased copy is the reference: this measures the bias's effect, not accuracy against a truth.
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

N4_SCRIPT = """
import sys, time, ants
img = ants.image_read(sys.argv[1])
t = time.perf_counter()
out = ants.n4_bias_field_correction(img, shrink_factor=4)
print(time.perf_counter() - t)
ants.image_write(out, sys.argv[2])
"""


def dice(a, b):
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def raw_like_pair(img, affine, seed=7):
    """bench/strip_eval.py's RAW-like copy (its grid and bias field, MPRAGE-like noise), with and
    without the bias field; same resampling, same noise."""
    from bench.strip_eval import RAW_SHAPE, bias_field, raw_grid

    rng = np.random.default_rng(seed)
    shape = RAW_SHAPE
    new, m = raw_grid(img.shape, affine)
    clean = ndi.affine_transform(img, m[:3, :3], m[:3, 3], output_shape=shape, order=1)
    s = 0.03 * float(np.percentile(clean[clean > 0], 90))
    n1, n2 = rng.normal(0, s, shape), rng.normal(0, s, shape)
    out = {}
    for name, field in (("biased", bias_field(shape)), ("unbiased", 1.0)):
        v = clean * field
        v = np.sqrt((v + n1) ** 2 + n2 ** 2)
        out[name] = np.clip(np.round(v), 0, 32000).astype(np.int16)
    return out, new


def phantom_head():
    """A small synthetic head (smoke mode): an asymmetric ellipsoid brain, CSF, a bright skull shell
    and scalp, 2 mm voxels."""
    shape = (80, 96, 80)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(((x - 0.05) / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    img = np.zeros(shape, np.float32)
    img[r < 1.15] = 300  # scalp
    img[r < 1.05] = 80  # skull
    img[r < 0.95] = 60  # CSF
    img[r < 0.9] = 120  # GM
    img[r < 0.6] = 200  # WM
    return img, np.diag([2.0, 2.0, 2.0, 1.0])


def segment(path: Path, out: Path, model: str, extra: tuple = ()) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine.cli", "segment", str(path), "-o", str(out), "--model", model,
                        *extra], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"segment {path} failed: {p.stderr[-600:]}")
    return np.asarray(nib.load(str(out)).dataobj), time.perf_counter() - t


def compare(a: np.ndarray, ref: np.ndarray) -> dict:
    return {"csf": round(dice(a == 1, ref == 1), 4), "gm": round(dice(a == 2, ref == 2), 4),
            "wm": round(dice(a == 3, ref == 3), 4), "intracranial": round(dice(a > 0, ref > 0), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ants-python", help="a python with antspyx (N4)")
    ap.add_argument("--models", default="enet,unet")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny phantom head, one model, no N4, nothing appended")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="brainseg-n4-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        img, aff = phantom_head()
        copies, new = {"biased": img * np.linspace(0.8, 1.2, img.shape[0])[:, None, None], "unbiased": img}, aff
        models = ["enet"]
    else:
        from strip_data import _wheel_file

        head = nib.load(_wheel_file("pydeface", "data/mean_reg2mean.nii.gz"))
        a = np.asanyarray(head.dataobj).astype(np.float32)
        copies, new = raw_like_pair(a[..., 0] if a.ndim == 4 else a, head.affine)
        models = args.models.split(",")
    files = {}
    for name, arr in copies.items():
        files[name] = out / f"pydeface-rawlike-{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, new), str(files[name]))
    n4_seconds = None
    if args.ants_python and not args.smoke:
        files["biased+N4"] = out / "pydeface-rawlike-biased-n4.nii.gz"
        p = subprocess.run([args.ants_python, "-c", N4_SCRIPT, str(files["biased"]), str(files["biased+N4"])],
                           capture_output=True, text=True, check=True)
        n4_seconds = float(p.stdout.split()[-1])
    results = {"n4_seconds": n4_seconds, "models": {}}
    for model in models:
        labels, secs = {}, {}
        for name, f in files.items():
            labels[name], secs[name] = segment(f, out / f"seg-{model}-{name.replace('+', '-')}.nii.gz", model,
                                               ("--planes", "axial") if args.smoke else ())
        ref = labels["unbiased"]
        results["models"][model] = {name: {"vs_unbiased": compare(lab, ref), "segment_seconds": round(secs[name], 1)}
                                    for name, lab in labels.items() if name != "unbiased"}
        print(model, json.dumps(results["models"][model]), flush=True)
    print(json.dumps(results, indent=1))
    if not args.no_append and not args.smoke:
        from bench.common import report

        lines = [f"### N4 before the networks? ({time.strftime('%Y-%m-%d %H:%M')}; bench/n4_eval.py)", "",
                 "pydeface's head (VALIDATION PROXY), RAW-like, with and without the +-20 % bias field (same "
                 "noise). Dice of `brainseg segment`'s labels against those of the unbiased copy: how far the bias "
                 f"moves them, and how much antspyx N4 gives back. N4 itself took {n4_seconds:.1f} s.", "",
                 "| model | input | CSF | GM | WM | intracranial mask | segment s |", "|---|---|---|---|---|---|---|"]
        for model, rows in results["models"].items():
            for name, r in rows.items():
                v = r["vs_unbiased"]
                lines.append(f"| {model} | {name} | {v['csf']:.3f} | {v['gm']:.3f} | {v['wm']:.3f} | "
                             f"{v['intracranial']:.3f} | {r['segment_seconds']:.1f} |")
        report("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
