"""Batch throughput and report rendering (issue #14's figures).

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.batch_bench [--scans 20] [--model enet] [--no-append] [--smoke]

1. A cohort of N scans (the demo brain, each copy with its own noise and intensity scale, as
   NIfTI) end to end with `brainseg batch` in a fresh process: read, segment, write the mask,
   the row and the thumbnails, report at the end; start-up (MXNet import, model load) included.
   Against: segmenting the same scans in one warm process (model loaded and one scan run first,
   not timed; read + segment only). Target: batch throughput >= 0.9x.
2. report.html for 400 rows (the real thumbnails repeated) opened in headless Chromium: time from
   navigation start to the load event, read from the page (target < 2 s).

--smoke (tests/bench): 2 scans of the demo cropped to 16 axial slices, one round, a 10-row report,
all in a temporary folder; Chromium only if it is there.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import SMOKE_SLICES, add_smoke_flag, brain_slab, crop_affine, report, start_smoke

WORK = Path("/tmp/brainseg-batch-bench")


def make_cohort(n: int, slices: int | None = None) -> list[Path]:
    """n noisy, rescaled copies of the demo scan (with `slices`: cropped to that many axial slices)."""
    import nibabel as nib

    from engine.core.paths import DEMO_LABELS, DEMO_SCAN
    from engine.io.volume import read_volume

    v = read_volume(DEMO_SCAN)
    if slices:
        sl = brain_slab(read_volume(DEMO_LABELS).data, slices)
        v = dataclasses.replace(v, data=np.ascontiguousarray(v.data[:, :, sl]), affine=crop_affine(v.affine, sl.start))
    out = WORK / "scans"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        d = v.data * rng.uniform(0.8, 1.25)
        d = np.where(v.data > 0, d + rng.normal(0, 4, d.shape), 0).astype(np.float32)
        f = out / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(d, v.affine), str(f))
        files.append(f)
    return files


def warm_single_process(files: list[Path], model: str) -> float:
    from engine.core.mx_env import configure_threads

    configure_threads()
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.io.volume import read_volume
    from engine.store.versions import resolve_model

    model_dir, _, _ = resolve_model(model, None)
    seg = Segmenter(model_dir)
    v = read_volume(files[0])
    seg.segment(v.data, SegmentConfig(uncertainty=True), affine=v.affine)  # warm-up, not timed
    t0 = time.perf_counter()
    for f in files:
        v = read_volume(f)
        seg.segment(v.data, SegmentConfig(uncertainty=True), affine=v.affine)
    return time.perf_counter() - t0


def batch_end_to_end(model: str, check: bool = False) -> float:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / "brainseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "engine.cli"]  # not installed: the module
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["batch", str(WORK / "scans"), "-o", str(out), "--model", model], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if check else subprocess.DEVNULL, text=True)
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"brainseg batch failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt


def report_render_ms(rows_wanted: int = 400) -> tuple[float, int]:
    import csv

    from engine.report import write_report

    src = WORK / "out"
    rows = list(csv.DictReader(open(src / "volumes.csv")))
    big = WORK / f"report{rows_wanted}"
    shutil.rmtree(big, ignore_errors=True)
    (big / "thumbs").mkdir(parents=True)
    many = []
    for i in range(rows_wanted):
        r = dict(rows[i % len(rows)])
        r["scan"] = f"{r['scan']}_{i:03d}"
        shutil.copy(src / "thumbs" / f"{rows[i % len(rows)]['scan']}.png", big / "thumbs" / f"{r['scan']}.png")
        many.append(r)
    page = write_report(big, many)
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chrome is None:
        return float("nan"), page.stat().st_size
    times = []
    for _ in range(3):
        dom = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                              "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        marker = 'data-load-ms="'
        if marker in dom:
            times.append(float(dom.split(marker, 1)[1].split('"', 1)[0]))
    return (float(np.median(times)) if times else float("nan")), page.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--model", default="enet")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    global WORK
    rows_wanted = 400
    if args.smoke:
        WORK = start_smoke("batch_bench")
        args.scans, args.rounds, rows_wanted = 2, 1, 10
    make_cohort(args.scans, SMOKE_SLICES if args.smoke else None)
    # this machine's speed drifts by a third between minutes: alternate the two arms, twice, and
    # compare medians (the warm arm in a fresh child process each time, as the batch)
    batch_runs, warm_runs = [], []
    for _ in range(args.rounds):
        batch_runs.append(batch_end_to_end(args.model, check=args.smoke))
        warm_runs.append(float(subprocess.run(
            [sys.executable, "-c", "import sys; from bench.batch_bench import warm_single_process as w; "
             "from pathlib import Path; print(w(sorted(Path(sys.argv[1]).glob('*.nii.gz')), sys.argv[2]))",
             str(WORK / "scans"), args.model], capture_output=True, text=True, check=True).stdout.split()[-1]))
    batch_s, warm_s = float(np.median(batch_runs)), float(np.median(warm_runs))
    ms, size = report_render_ms(rows_wanted)
    ratio = warm_s / batch_s
    text = (f"### Batch - {time.strftime('%Y-%m-%d %H:%M')} - {args.model}, {os.cpu_count()} cores\n\n"
            f"{args.scans} scans (the demo brain with its own noise and intensity scale each, 176x208x176 NIfTI):\n\n"
            f"| measure | value | target |\n|---|---:|---|\n"
            f"| `brainseg batch` end to end, fresh process (start-up, read, segment, mask, row, thumbnails, "
            f"report) | {batch_s:.1f} s ({batch_s / args.scans:.2f} s/scan) | |\n"
            f"| the same scans segmented in one warm process (read + segment) | {warm_s:.1f} s "
            f"({warm_s / args.scans:.2f} s/scan) | |\n"
            f"| the rounds, alternating (batch / warm) | "
            + ", ".join(f"{b:.1f} / {w:.1f} s" for b, w in zip(batch_runs, warm_runs)) + " | medians above |\n"
            f"| batch throughput / warm throughput | {ratio:.2f}x | >= 0.9x |\n"
            f"| report.html with {rows_wanted} rows and thumbnails ({size / 1e6:.1f} MB), headless Chromium, navigation "
            f"start to load event (median of 3) | {ms:.0f} ms | < 2000 ms |\n")
    report(text, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
