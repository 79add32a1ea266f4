"""Shared by the benchmark scripts: where results go, and the tiny `--smoke` setting.

Every script under bench/ takes `--smoke` (tests/bench/test_bench_smoke.py runs each one so): the
script's own code path end to end, on tiny data (the demo scan cropped to a few axial slices, a
synthetic phantom head instead of wheel data), one repeat, scratch output in a temporary folder;
nothing is appended to docs/BENCHMARKS.md and nothing is written into resources/. Its figures mean
nothing: it only proves that the benchmark still runs.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# where report() appends; tests/bench points it elsewhere to see that a smoke run never appends
BENCHMARKS_MD = Path(os.environ.get("BRAINSEG_BENCHMARKS_MD") or ROOT / "docs" / "BENCHMARKS.md")
SMOKE = False  # set by start_smoke(): report() then never appends
SMOKE_SLICES = 16  # axial slices of the demo scan kept in a smoke run


def report(text: str, append: bool = True) -> None:
    """Print a result section and append it to docs/BENCHMARKS.md (never in a smoke run)."""
    print(text)
    if append and not SMOKE:
        with open(BENCHMARKS_MD, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)


def add_smoke_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--smoke", action="store_true",
                    help="tiny end-to-end run for the test suite: small data, one repeat, scratch output in a "
                         "temporary folder, nothing appended to docs/BENCHMARKS.md or written into resources/")


def start_smoke(name: str) -> Path:
    """Enter smoke mode: report() stops appending; returns a fresh scratch folder - under
    $BRAINSEG_BENCH_SCRATCH when set (the tests pass their tmp_path; kept), else a temporary one
    removed at exit. BRAINSEG_HOME (settings, model versions) goes there too unless already set."""
    global SMOKE
    SMOKE = True
    base = os.environ.get("BRAINSEG_BENCH_SCRATCH")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"brainseg-smoke-{name}-", dir=base or None))
    if not base:
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ.setdefault("BRAINSEG_HOME", str(tmp / "home"))
    print(f"smoke run of bench/{name}.py: tiny data, figures meaningless; scratch in {tmp}", flush=True)
    return tmp


def brain_slab(labels: np.ndarray, n: int = SMOKE_SLICES) -> slice:
    """n axial slices (array axis 2 of the LAS demo grid) around the middle of the labelled brain."""
    ks = np.where(np.asarray(labels).any(axis=(0, 1)))[0]
    mid = (int(ks[0]) + int(ks[-1])) // 2 if len(ks) else labels.shape[2] // 2
    k0 = int(np.clip(mid - n // 2, 0, max(labels.shape[2] - n, 0)))
    return slice(k0, min(k0 + n, labels.shape[2]))


def crop_affine(affine: np.ndarray, k0: int) -> np.ndarray:
    """The affine of a volume cropped to start at slice k0 of array axis 2."""
    a = np.array(affine, dtype=np.float64)
    a[:3, 3] = a[:3, 3] + a[:3, 2] * k0
    return a


def demo_slab(n: int = SMOKE_SLICES):
    """(scan, labels, affine) of the demo scan cropped to n axial slices through the brain."""
    from engine.core.paths import DEMO_LABELS, DEMO_SCAN
    from engine.io.volume import read_volume

    v = read_volume(DEMO_SCAN)
    lab = read_volume(DEMO_LABELS).data
    sl = brain_slab(lab, n)
    return (np.ascontiguousarray(v.data[:, :, sl]), np.ascontiguousarray(lab[:, :, sl]),
            crop_affine(v.affine, sl.start))


def write_demo_slab(folder: Path, n: int = SMOKE_SLICES) -> tuple[Path, Path]:
    """The cropped demo scan and its labels as NIfTI files in folder: (scan, labels)."""
    import nibabel as nib

    scan, lab, aff = demo_slab(n)
    folder.mkdir(parents=True, exist_ok=True)
    scan_path, lab_path = folder / "demo_slab.nii.gz", folder / "demo_slab_labels.nii.gz"
    nib.save(nib.Nifti1Image(scan.astype(np.float32), aff), str(scan_path))
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff), str(lab_path))
    return scan_path, lab_path


def phantom_head(shape=(128, 128, 128), mm: float = 2.0, seed: int = 0, centre=(0.0, -15.0, -10.0)):
    """A synthetic T1-like head with a known intracranial mask, in place of the wheel heads
    (tools/strip_data.py) in smoke runs: an ellipsoid brain (white matter inside grey matter, a
    dark CSF rim - all inside the mask) in a skull (dark inner table, bright marrow, dark outer
    table) and a scalp, with a little texture and noise; RAS world axes, `mm` voxels.
    Returns (image float32, mask bool, affine)."""
    rng = np.random.default_rng(seed)
    aff = np.diag([mm, mm, mm, 1.0])
    aff[:3, 3] = np.array(centre) - mm * (np.array(shape) - 1) / 2
    grids = np.meshgrid(*[np.arange(n) * mm + aff[i, 3] - c for i, (n, c) in enumerate(zip(shape, centre))],
                        indexing="ij")
    semi = np.array([66.0, 82.0, 58.0])  # the intracranial ellipsoid's half-axes (mm): ~1,300 mL
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, semi)))  # 1 at the mask's edge
    depth = (1 - r) * semi.min()  # ~mm inside the edge (negative outside)
    img = np.zeros(shape, np.float32)
    for lo, hi, val in ((-16, -12, 0.7),  # scalp
                        (-12, -10, 0.05),  # outer table
                        (-10, -5, 1.1),  # marrow: brighter than the brain
                        (-5, -2, 0.05),  # inner table
                        (-2, 0, 0.15),  # dura
                        (0, 3, 0.25),  # CSF rim (intracranial)
                        (3, 10, 0.65),  # grey matter
                        (10, 1e9, 1.0)):  # white matter
        img[(depth >= lo) & (depth < hi)] = val
    mask = depth >= 0
    img = img * (1 + 0.05 * rng.standard_normal(shape).astype(np.float32))
    img = np.abs(img + 0.02 * rng.standard_normal(shape).astype(np.float32)) * (img > 0)
    return (100.0 * img).astype(np.float32), mask, aff
