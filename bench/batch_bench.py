"""Batch throughput and report rendering (issue #14's figures).

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.batch_bench [--scans 20] [--model enet] [--no-append]

1. A cohort of N scans (the demo brain, each copy with its own noise and intensity scale, as
   NIfTI) end to end with `brainseg batch` in a fresh process: read, segment, write the mask,
   the row and the thumbnails, report at the end; start-up (MXNet import, model load) included.
   Against: segmenting the same scans in one warm process (model loaded and one scan run first,
   not timed; read + segment only). Target: batch throughput >= 0.9x.
2. report.html for 400 rows (the real thumbnails repeated) opened in headless Chromium: time from
   navigation start to the load event, read from the page (target < 2 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import report

WORK = Path("/tmp/brainseg-batch-bench")


def make_cohort(n: int) -> list[Path]:
    import nibabel as nib

    from engine.core.paths import DEMO_SCAN
    from engine.io.volume import read_volume

    v = read_volume(DEMO_SCAN)
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


def batch_end_to_end(model: str) -> float:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "brainseg"), "batch", str(WORK / "scans"), "-o", str(out),
                    "--model", model], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def report_render_ms(rows_wanted: int = 400) -> tuple[float, int]:
    import csv

    from engine.report import write_report

    src = WORK / "out"
    rows = list(csv.DictReader(open(src / "volumes.csv")))
    big = WORK / "report400"
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
    args = ap.parse_args(argv)
    make_cohort(args.scans)
    # this machine's speed drifts by a third between minutes: alternate the two arms, twice, and
    # compare medians (the warm arm in a fresh child process each time, as the batch)
    batch_runs, warm_runs = [], []
    for _ in range(args.rounds):
        batch_runs.append(batch_end_to_end(args.model))
        warm_runs.append(float(subprocess.run(
            [sys.executable, "-c", "import sys; from bench.batch_bench import warm_single_process as w; "
             "from pathlib import Path; print(w(sorted(Path(sys.argv[1]).glob('*.nii.gz')), sys.argv[2]))",
             str(WORK / "scans"), args.model], capture_output=True, text=True, check=True).stdout.split()[-1]))
    batch_s, warm_s = float(np.median(batch_runs)), float(np.median(warm_runs))
    ms, size = report_render_ms()
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
            f"| report.html with 400 rows and thumbnails ({size / 1e6:.1f} MB), headless Chromium, navigation "
            f"start to load event (median of 3) | {ms:.0f} ms | < 2000 ms |\n")
    report(text, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
